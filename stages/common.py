"""What every stage entry point shares: reading ``params.yaml`` and running as a command.

Deliberately imports nothing from the library but :mod:`pipeline.errors` and
:mod:`pipeline.iostats` (two small leaves): each stage
imports the config dataclass it needs itself, so a stage's import closure (and with it
its DVC deps, checked by ``tests/test_dvc_graph.py``) stays its own.

The defaults live in one place, the config dataclasses; ``params.yaml`` states the
values the pipeline runs with. :func:`load` checks the WHOLE params file against one
schema before any stage uses it: ``stages/params.schema.json`` (beside this module), a JSON
Schema generated from the config dataclasses (their annotations carry the ranges and
choices) by :mod:`stages.params_schema` (``smoe params schema``) and committed. Unknown
keys at any level, wrong types and values out of range are refused there, in one line
naming the file and the key path; a YAML syntax error in one line naming the line.
:func:`build` checks its own block against the same schema (for callers that bypass
:func:`load`), then constructs the dataclass, whose ``__post_init__`` keeps the checks
that involve several keys. All of these raise :class:`ParamsError`, a
:class:`~pipeline.errors.UserError`: one line, exit 1, no traceback.

Why the committed JSON file and not the dataclasses themselves at run time: the schema
must cover every section, and importing every section's dataclass here would put every
config module into every stage's import closure (so into its DVC deps: editing
interpret's config would rerun featurize). The JSON file is a pure accept/refuse gate that
never changes an output, so it is no DVC dep, and ``tests/test_params_schema.py`` fails
when it differs from the regenerated one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from annotated_types import Ge, Len

from pipeline import iostats
from pipeline.errors import UserError

T = TypeVar("T")
PARAMS = Path("params.yaml")
SCHEMA_FILE = Path(__file__).resolve().parent / "params.schema.json"  # travels with the code
REGENERATE = "smoe params schema"
LAMBDAS = ("lambda_ls", "lambda_gb", "lambda_div")


class ParamsError(UserError, typer.BadParameter):
    """A params file that cannot be used: unreadable, not YAML, or not valid against the schema.
    Also a click ``BadParameter`` (a ``ValueError``'s role for callers of :func:`build`);
    the runner reports it as a UserError: one line, exit 1."""


@dataclass
class ExperimentSpec:
    """One ``experiments.<name>`` block: one cache and K, optionally Eq. 7's lambdas for
    this experiment (overriding the top-level ones) and the pair column that
    personalization adapts to."""

    dataset: Annotated[str, Len(1)]
    num_experts: Annotated[int, Ge(1)]
    group_by: str | None = None
    lambda_ls: Annotated[float, Ge(0)] | None = None
    lambda_gb: Annotated[float, Ge(0)] | None = None
    lambda_div: Annotated[float, Ge(0)] | None = None


EXPERIMENT_KEYS = {f.name for f in fields(ExperimentSpec)}


class Params(dict):
    """A loaded params file: a plain dict that remembers which file it came from."""

    source: str = "params"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key that appears twice in one mapping (plain YAML
    keeps the last one in silence)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader names it
                break
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content; one line naming the file (and the line) when it is not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a directory, not a params file") from None
    except OSError as err:
        raise ParamsError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ParamsError(f"{path}: {where}not valid YAML ({err.problem or err.context})") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None


def load(path: Path) -> Params:
    """The params file, checked against the whole schema (see the module doc)."""
    if not path.exists():
        raise ParamsError(f"params file {path} does not exist")
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (backbone:, train:, ...), "
                          f"got {_kind(data)}")
    problem = schema_problem(data)
    if problem:
        raise ParamsError(f"{path}: {problem}")
    params = Params(data)
    params.source = str(path)
    return params


# ----------------------------------------------------------------------------- the schema gate


@cache
def _schema() -> dict[str, Any]:
    try:
        return json.loads(SCHEMA_FILE.read_text())
    except (OSError, ValueError) as err:  # a broken checkout, not a user mistake: a bug
        raise RuntimeError(f"{SCHEMA_FILE} is missing or damaged ({err}); regenerate it: {REGENERATE}") from err


@cache
def _validator(section_name: str | None = None) -> Any:
    import jsonschema  # ~60 ms: loaded only by a stage that reads params

    schema = _schema()
    if section_name is not None:  # that section alone, as a file holding only it
        schema = {"$defs": schema.get("$defs", {}), "type": "object",
                  "properties": {section_name: schema["properties"][section_name]}}
    # YAML's 3.0 is a float: an integer key must hold an int (JSON Schema accepts 3.0)
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "text",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value, default=str)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({_kind(value)})" if isinstance(value, str) else text


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "text", "boolean": "true or false",
               "object": "a mapping", "array": "a list", "null": "null"}


def _key_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: Any) -> str:
    """One jsonschema error as ``<key path>: <what is wrong>``."""
    validator, value, schema = error.validator, error.instance, error.schema
    path = _key_path(error.absolute_path)
    if "propertyNames" in error.schema_path:  # a mapping whose keys are a fixed set (limits: {train: ...})
        allowed = schema.get("enum", [])
        return f"{path}: unknown key {value!r}; known: {', '.join(map(str, allowed))}"
    if validator in ("anyOf", "oneOf"):  # X | None: describe the non-null branch
        branches = [s for s in schema[validator] if s.get("type") != "null"]
        if value is not None and len(branches) == 1:
            inner = [e for e in error.context if e.relative_schema_path[0] == schema[validator].index(branches[0])]
            if inner:
                return _message(min(inner, key=lambda e: len(e.relative_path)))
        types = [_TYPE_WORDS.get(s.get("type"), s.get("type")) for s in schema[validator] if s.get("type")]
        return f"{path}: must be {' or '.join(types) or 'another value'}, got {_show(value)}"
    if validator == "additionalProperties":
        known = list(schema.get("properties", {}))
        unknown = sorted(str(k) for k in value if k not in schema.get("properties", {}))
        listed = f"{', '.join(unknown[:-1])} and {unknown[-1]}" if len(unknown) > 1 else repr(unknown[0])
        keys = "keys" if len(unknown) > 1 else "key"
        where = f"unknown top-level {keys} {listed}" if not path else f"{path}: unknown {keys} {listed}"
        return f"{where}; known: {', '.join(known)}"
    if validator == "required":
        missing = [k for k in schema["required"] if k not in value]
        return f"{path or 'top level'}: missing key {missing[0]!r}"
    if validator == "type":
        expected = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
        hint = ""
        if isinstance(value, str) and set(expected) & {"number", "integer"}:
            try:
                float(value)
                hint = "; YAML reads 1e-3 as text: write 1.0e-3"
            except ValueError:
                pass
        return f"{path}: must be {words}, got {_show(value)}{hint}"
    if validator in ("enum", "const"):
        allowed = schema.get("enum", [schema.get("const")])
        return f"{path}: must be one of {', '.join(map(str, allowed))}, got {_show(value)}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if validator in bounds:
        return f"{path}: must be {bounds[validator]} {schema[validator]}, got {_show(value)}"
    if validator == "minItems":
        return f"{path}: must hold at least {schema['minItems']} item(s), got {_show(value)}"
    if validator == "minLength":
        return f"{path}: must not be empty"
    return f"{path}: {error.message}"


def schema_problem(values: Any, section_name: str | None = None) -> str | None:
    """The first problem of ``values`` (a whole params file, or one section) against the
    schema, as one line naming the key path; ``None`` when valid."""
    data = values if section_name is None else {section_name: values}
    errors = sorted(_validator(section_name).iter_errors(data),
                    key=lambda e: (e.validator != "additionalProperties", [str(p) for p in e.absolute_path]))
    if not errors:
        return None
    more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
    return _message(errors[0]) + more


def section(params: dict[str, Any], *keys: str) -> Any:
    """``params[k1][k2]...``, or a one-line error naming the missing key and what exists."""
    node: Any = params
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[: i + 1])
            available = ", ".join(map(str, node)) if isinstance(node, dict) else _show(node)
            raise ParamsError(f"{getattr(params, 'source', 'params')}: no key {where!r}; "
                              f"available: {available or '(none)'}")
        node = node[key]
    return node


def build(cls: type[T], values: dict[str, Any] | None, where: str, *, ignore: tuple[str, ...] = (),
          **overrides: Any) -> T:
    """Instantiate a config dataclass from a params block, rejecting unknown keys and
    invalid values with one line that names the block. ``where``: the block's section in
    the params file (its schema is checked when it has one). ``ignore``: keys of the block
    that belong to another stage (``backbone.source`` is what `backbone` materializes)."""
    block = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(block) - known - set(ignore) - _schema_keys(where))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:  # the dataclass's own checks first: their messages say the most about its keys
        config = cls(**{**{k: v for k, v in block.items() if k not in ignore and k in known},
                        **{k: v for k, v in overrides.items() if v is not None}})
    except (TypeError, ValueError) as e:
        raise ParamsError(f"{where}: {e}") from None
    if _schema_keys(where):  # then the schema's types and ranges (a stage's load() checked them already)
        problem = schema_problem(block, where)
        if problem:
            raise ParamsError(problem)
    return config


def _schema_keys(where: str) -> set[str]:
    """The keys the schema allows in top-level section ``where`` (empty if it has none)."""
    schema = _schema()
    node = schema.get("properties", {}).get(where, {})
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/"):
        node = schema["$defs"][ref.removeprefix("#/$defs/")]
    return set(node.get("properties", {}))


def one_of(value: str, allowed: tuple[str, ...], what: str = "variant") -> str:
    """``value`` if it is one of ``allowed``, else click's usage error naming the choices."""
    if value not in allowed:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    return value


def experiment(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One ``experiments.<name>`` block (:class:`ExperimentSpec`), checked."""
    spec = section(params, "experiments", name)
    source = getattr(params, "source", "params")
    if not isinstance(spec, dict):
        raise ParamsError(f"{source}: experiments.{name}: must be a mapping (dataset:, num_experts:), "
                          f"got {_show(spec)}")
    unknown = sorted(set(spec) - EXPERIMENT_KEYS)
    if unknown:
        raise ParamsError(f"{source}: experiments.{name}: unknown key(s) {unknown}; known: {sorted(EXPERIMENT_KEYS)}")
    for key in ("dataset", "num_experts"):
        if key not in spec:
            raise ParamsError(f"{source}: experiments.{name}: missing key {key!r}")
    return dict(spec)


def lambdas(params: dict[str, Any], name: str) -> dict[str, float]:
    """Eq. 7's weights: the top-level sweep knobs, overridden by the experiment's own keys
    (e.g. the paper's lambda_gb = 1.0 for preference-700K)."""
    spec = experiment(params, name)
    return {key: float(spec[key] if spec.get(key) is not None else section(params, key)) for key in LAMBDAS}


@contextmanager
def scratch(params: dict[str, Any], prefix: str) -> Iterator[str]:
    """A temporary folder for a stage's intermediates (train's heads and curves before they
    are swapped in), under the params' top-level ``scratch_dir`` (null: the
    system's temporary folder, ``$TMPDIR``). No stage lists ``scratch_dir`` as a DVC param:
    where scratch lives never changes an output."""
    where = params.get("scratch_dir")
    if where is not None:
        where = Path(where).expanduser()
        if not where.is_dir():
            raise ParamsError(f"{getattr(params, 'source', 'params')}: scratch_dir: {where} is not a folder; "
                              f"create it, or set scratch_dir: null for the system's temporary folder")
    with tempfile.TemporaryDirectory(prefix=prefix, dir=where) as path:
        yield path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_orphans(target: Path) -> None:
    """Delete the scratch that a killed run (SIGKILL skips every cleanup) left beside
    ``target``: any ``.<name>.staging-<pid>`` / ``.<name>.old-<pid>`` whose process is gone."""
    for path in target.parent.glob(f".{target.name}.*-*"):
        kind, _, pid = path.name[len(target.name) + 2:].rpartition("-")
        if kind not in ("staging", "old") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: the run that owned it is dead
            _remove(path)
        except PermissionError:  # alive, under another user
            pass


@contextmanager
def staged(*targets: Path) -> Iterator[tuple[Path, ...]]:
    """One scratch path beside each output (file or folder) of a stage, swapped in only
    when the block succeeds: each file by ``os.replace``, each folder by moving the old one
    aside, renaming the new one in and deleting the old. On failure every scratch path is
    removed and the previous outputs stay as they were: a failed or killed run never
    leaves a half-written output, or new outputs beside stale ones."""
    tag = f"staging-{os.getpid()}"
    scratch = tuple(t.with_name(f".{t.name}.{tag}") for t in targets)
    for target, path in zip(targets, scratch):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(path)
        _remove_orphans(target)
    try:
        yield scratch
        for target, new in zip(targets, scratch):
            if new.is_dir():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                if target.exists():
                    target.rename(old)
                new.rename(target)
                _remove(old)
            elif new.exists():
                os.replace(new, target)
    finally:
        for path in scratch:
            _remove(path)


def run(main: Callable[..., Any]) -> None:
    """Run one stage function as a command (``python -m stages.<name>``, what dvc.yaml
    calls). A :class:`UserError` or a missing file is one line on stderr and exit 1."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    exit_with(app)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def exit_with(app: typer.Typer) -> None:
    """Run a typer app as the process: the user-error boundary. A
    :class:`~pipeline.errors.UserError` (raised where input is read and validated: params,
    source files, prepared tables, backbones, caches) or a missing file is ONE line on
    stderr and exit 1; a click usage error one line and exit 2; anything else is a bug in
    smoe-rm and keeps its traceback."""
    try:
        # Without standalone mode click RETURNS the code of a `typer.Exit(n)` instead of
        # exiting with it; pass it on, or a failed check would exit 0.
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except UserError as e:  # before click's errors: a UserError may also be one of them
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(1)
    except typer.TyperException as e:  # click's usage errors (a bad option or argument): exit 2, one line
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        typer.echo(f"error: {_one_line(message)}{hint}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except FileNotFoundError as e:
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(1)
    if (line := iostats.summary()) is not None:  # how much of the cache / stores this run read
        typer.echo(line, err=True)
    sys.exit(code if isinstance(code, int) else 0)
