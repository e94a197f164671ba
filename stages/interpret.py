"""Stage `interpret`: one trained head + its split stores + the prepared prompts ->
data/interpret/<experiment>/<variant>/ (experts.md, experts.json) + data/metrics/<experiment>/interpret-<variant>.json
(description fidelity and its shuffled baseline, what DVC tracks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from pipeline.cache import write_json
from pipeline.split_store import SplitStores
from pipeline.describers import Connection
from pipeline.interpret import ROUTED, UNROUTED, InterpretConfig, InterpretError, interpret_variant
from stages import common as P

KEYS = ("description_fidelity", "description_fidelity_random", "expert_specialization")


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variant: str = typer.Argument(..., help=f"Variant to interpret: one of {', '.join(ROUTED)} "
                                            f"({' and '.join(UNROUTED)} have no input-dependent router)."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (reads `experiments` and `interpret`)."),
    stores: Path = typer.Option(None, help="Split stores (stage `stores`). Default: data/stores/<experiment's dataset>."),
    prepared: Path = typer.Option(None, help="Prepared pairs (the prompt texts). "
                                             "Default: data/prepared/<experiment's dataset>/pairs.parquet."),
    model: Path = typer.Option(None, help="Trained head. Default: data/models/<experiment>/<variant>."),
    out: Path = typer.Option(None, help="Output folder (experts.md, experts.json). "
                                        "Default: data/interpret/<experiment>/<variant>."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Key numbers (the DVC metrics file). "
                                                              "Default: data/metrics/<experiment>/interpret-<variant>.json."),
    api_key_env: str = typer.Option(Connection.api_key_env, help="openai: environment variable holding the API key "
                                                                 "(unset: no Authorization header; never logged)."),
    timeout: float = typer.Option(Connection.timeout, help="openai: seconds per request."),
    retries: int = typer.Option(Connection.retries, help="openai: extra attempts after a transient failure."),
) -> None:
    """Describe each expert of one trained MoE head from its top validation prompts and
    measure description fidelity (paper §6.1, Eq. 19-20) on the test split: a judge says
    whether each of a stratified sample of test prompts matches the description, and the
    verdicts are correlated with the router's weights (against a shuffled baseline).
    Writes <out>/experts.md (a Table-11-style table) and <out>/experts.json.

    Describer and judge (keywords | hf:<model or path> | openai:<base_url>),
    sample sizes, seed and backend settings are params.yaml's `interpret:`
    block, which DVC tracks; for a one-off, e.g.
    `dvc exp run -S interpret.describer=hf:<model>`. The options below only
    locate files or tune how an openai: endpoint is reached."""
    if variant in UNROUTED:
        raise InterpretError(f"{variant} has no input-dependent router, so there are no experts to describe; "
                             f"interpret one of {', '.join(ROUTED)}")
    P.one_of(variant, ROUTED)
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    config = P.build(InterpretConfig, params.get("interpret"), "interpret")
    try:
        connection = Connection(api_key_env=api_key_env, timeout=timeout, retries=retries)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    stores = SplitStores(stores or Path("data/stores") / spec["dataset"])
    prepared = prepared or Path("data/prepared") / spec["dataset"] / "pairs.parquet"
    model = model or Path("data/models") / experiment / variant
    out = out or Path("data/interpret") / experiment / variant
    metrics_path = metrics_path or Path("data/metrics") / experiment / f"interpret-{variant}.json"
    # All or nothing: a judge that times out on expert 7 leaves the previous outputs.
    with P.staged(out, metrics_path) as (new_out, new_metrics):
        new_out.mkdir()
        report = interpret_variant(stores, prepared, model, new_out, config, connection=connection,
                                   extra={"experiment": experiment, "dataset": spec["dataset"]})
        # flat and finite only, like evaluate's: one `dvc exp show` column per number
        write_json(new_metrics, {k: report[k] for k in KEYS[:2] if math.isfinite(report[k])})
    typer.echo(json.dumps({variant: {k: round(report[k], 4) for k in KEYS}}, indent=1))


if __name__ == "__main__":
    P.run(main)
