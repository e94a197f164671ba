"""The one schema of a params file (``params.yaml``, ``real/params.yaml``), generated.

Design: the config dataclasses stay the single source of every key, its default, its
type and its range. Ranges and choices are declared in their annotations
(``Annotated[int, Ge(1)]``, ``Literal["mlp", "linear"]``: plain typing and
``annotated_types``, so constructing a dataclass in library code is unaffected). This
module composes one dataclass for a whole params file from every section's config (plus
:class:`~pipeline.prepare.DatasetSpec`, :class:`~stages.common.ExperimentSpec` and the
top-level lambdas) and turns it into a JSON Schema with pydantic's ``TypeAdapter``;
every object in it refuses keys it does not know (``additionalProperties: false``).

The result is committed as ``stages/params.schema.json`` (beside the code), and every
stage's :func:`stages.common.load` validates the whole params file against that file
with ``jsonschema``. Why a committed file rather than validating with these classes at
run time: importing every section's config module into :mod:`stages.common` would put
all of them into every stage's import closure, so into its DVC deps (editing interpret's
config would rerun featurize), and pydantic would validate again what the file gate has
already checked. The JSON file only accepts or refuses, it never changes an output, so it
is no DVC dep; ``tests/test_params_schema.py`` fails when it differs from what this module
generates, and ``smoe params schema`` rewrites it. Editors that speak JSON Schema (the
YAML language server) can also check ``params.yaml`` against it as you type.
"""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from annotated_types import Ge, Len
from pydantic import TypeAdapter

from pipeline.adaptation import AdaptConfig
from pipeline.backbone import BackboneConfig
from pipeline.featurize import FeaturizeConfig
from pipeline.interpret import InterpretConfig
from pipeline.personalize import PersonalizeConfig
from pipeline.prepare import DatasetSpec
from pipeline.rewardbench import RewardBenchConfig
from pipeline.steer import SteerConfig
from pipeline.train import TrainConfig
from stages import common

SCHEMA_FILE = common.SCHEMA_FILE
# AdaptConfig.seed orders the pairs within an epoch; personalize sets it to each draw's seed.
PERSONALIZE_PER_DRAW = {"seed"}


def _field(f: Field) -> Any:
    if f.default is not MISSING:
        return field(default=f.default)
    if f.default_factory is not MISSING:
        return field(default_factory=f.default_factory)
    return field()


def merged(name: str, *classes: type, drop: set[str] = frozenset(),
           extra: list[tuple[str, Any, Any]] = ()) -> type:
    """One dataclass holding the fields (types with their annotations, and defaults) of
    ``classes`` minus ``drop``, after ``extra``: a params section read by several configs."""
    spec = list(extra)
    for cls in classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        spec += [(f.name, hints[f.name], _field(f)) for f in fields(cls)
                 if f.name not in drop and f.name not in {s[0] for s in spec}]
    return make_dataclass(name, spec)


BackboneParams = merged(
    "BackboneParams", BackboneConfig, drop={"model"},
    extra=[("source", Annotated[str, Len(1)] | None, field(default=None))])  # what `backbone` materializes
PersonalizeParams = merged("PersonalizeParams", PersonalizeConfig, AdaptConfig, drop=PERSONALIZE_PER_DRAW)

Lambda = Annotated[float, Ge(0)]


@dataclass
class ParamsFile:
    """A whole params file. Every section is optional here (a stage refuses a file that
    lacks the section it needs, naming it); what is there must be valid."""

    lambda_ls: Lambda = 0.0
    lambda_gb: Lambda = 0.0
    lambda_div: Lambda = 0.0
    backbone: BackboneParams = field(default_factory=dict)
    featurize: FeaturizeConfig = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=dict)
    experiments: dict[str, common.ExperimentSpec] = field(default_factory=dict)
    interpreted: list[str] = field(default_factory=list)  # the experiments interpret runs on (real/)
    interpret: InterpretConfig = field(default_factory=dict)
    steer: SteerConfig = field(default_factory=dict)
    personalize: PersonalizeParams = field(default_factory=dict)
    rewardbench: RewardBenchConfig = field(default_factory=dict)
    scratch_dir: str | None = None  # where stages put large intermediates (stages.common.scratch)


def _closed(node: Any) -> None:
    """Every object with named properties refuses other keys; no defaults at the top level
    (they are not defaults there: a stage needs the value stated)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _closed(value)
    elif isinstance(node, list):
        for value in node:
            _closed(value)


def schema() -> dict[str, Any]:
    """The JSON Schema of a params file."""
    out = TypeAdapter(ParamsFile).json_schema()
    _closed(out)
    out.pop("required", None)
    for prop in out["properties"].values():
        prop.pop("default", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$comment": f"Generated by stages/params_schema.py from the config dataclasses: do not edit; "
                        f"regenerate with `{common.REGENERATE}`.",
            **out}


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


app = typer.Typer(help="The params file's schema (params.schema.json), generated from the config dataclasses.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("schema")
def schema_cmd(
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if the committed file is stale."),
    out: Path = typer.Option(SCHEMA_FILE, help="Where to write it."),
) -> None:
    """Regenerate params.schema.json from the config dataclasses (after adding or changing
    a config field)."""
    text = render()
    if check:
        if not out.exists() or out.read_text() != text:
            raise common.ParamsError(f"{out} is stale: regenerate it with `{common.REGENERATE}`")
        typer.echo(f"ok: {out} is up to date")
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    typer.echo(f"wrote {out}")


@app.command("check")
def check_cmd(params_file: list[Path] = typer.Argument(None, help="Params files. Default: params.yaml.")) -> None:
    """Validate params files against the schema: one line per file."""
    for path in params_file or [common.PARAMS]:
        common.load(path)
        typer.echo(f"ok: {path}")


if __name__ == "__main__":
    common.exit_with(app)
