"""Stage `steer`: one head of an experiment + its split stores -> data/steer/<exp>/<variant>.json (every result),
data/metrics/<exp>/steer-<variant>.json (key numbers, what DVC tracks) and
data/plots/steer/<exp>/<variant>.csv (the Fig. 2 / 7 curves)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.split_store import SplitStores
from pipeline.steer import STEERABLE, SteerConfig, SteerError, steer_variant
from stages import common as P


def main(
    experiment: str = typer.Argument(..., help="Experiment (<exp> below) whose test pairs carry the steering "
                                               "label (params steer.label; the RPR-like `attributes`)."),
    variant: str = typer.Argument(..., help=f"Head to steer: one of {', '.join(STEERABLE)} (single and hyre have "
                                            "no router). sparse also gets the random-expert baseline."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (reads `experiments.<experiment>` "
                                                                "and the `steer:` block)."),
    stores: Path = typer.Option(None, help="Split stores (stage `stores`). Default: data/stores/<experiment's dataset>."),
    model: Path = typer.Option(None, help="Trained head. Default: data/models/<exp>/<variant>."),
    out: Path = typer.Option(None, help="Every result (per attribute, per weight). "
                                        "Default: data/steer/<exp>/<variant>.json."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Key numbers, the DVC metrics file. "
                                                              "Default: data/metrics/<exp>/steer-<variant>.json."),
    curve: Path = typer.Option(None, help="Flip rates per weight (CSV, for `dvc plots`). "
                                          "Default: data/plots/steer/<exp>/<variant>.csv."),
) -> None:
    """Attribute steering of one head (paper §5.2, Eq. 14-18): per attribute, pick the
    expert whose top-100 validation examples hold the largest share of it, set its routing
    weight to w in {0.25, 0.5, 0.75, 1.0} on the test pairs and count the pairs that flip to
    the attribute's preferred response (flip rate) and away from it (undesired flip rate).
    For sparse, also the random-expert baseline. The paired t-tests across attributes and
    Fig. 2 / 7 over all heads are made by `report`."""
    if variant not in STEERABLE:
        raise SteerError(f"{variant!r} cannot be steered (no router): choose one of {', '.join(STEERABLE)}")
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    config = P.build(SteerConfig, params.get("steer"), "steer")
    stores = SplitStores(stores or Path("data/stores") / spec["dataset"])
    output = steer_variant(stores, model or Path("data/models") / experiment / variant, variant, config)
    targets = (out or Path("data/steer") / experiment / f"{variant}.json",
               metrics_path or Path("data/metrics") / experiment / f"steer-{variant}.json",
               curve or Path("data/plots/steer") / experiment / f"{variant}.csv")
    with P.staged(*targets) as (new_out, new_metrics, new_curve):
        new_out.write_text(json.dumps(output.results, indent=2, sort_keys=True) + "\n")
        new_metrics.write_text(json.dumps(output.key_metrics, indent=2, sort_keys=True) + "\n")
        new_curve.write_text(output.curve_csv)
    typer.echo(json.dumps(output.key_metrics, indent=1))


if __name__ == "__main__":
    P.run(main)
