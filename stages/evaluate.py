"""Stage `evaluate`: one head + its split stores -> data/metrics/<experiment>/<variant>.json (key numbers, what
DVC tracks) + data/predictions/<experiment>/<variant>/ (every metric, per-pair predictions, sample routings)
+ data/plots/eval/<experiment>/<variant>/ (routing heatmap, expert correlation)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.split_store import SplitStores
from pipeline.evaluate import evaluate_variant
from pipeline.models import VARIANTS
from pipeline.pairs import prompt_texts
from stages import common as P

KEYS = ("accuracy", "routing_entropy", "global_entropy", "expert_correlation")


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variant: str = typer.Argument(..., help=f"Variant to evaluate: one of {', '.join(VARIANTS)}."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file."),
    stores: Path = typer.Option(None, help="Split stores (stage `stores`). Default: data/stores/<experiment's dataset>."),
    model: Path = typer.Option(None, help="Trained head. Default: data/models/<experiment>/<variant>."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Key metrics (the DVC metrics file). "
                                                              "Default: data/metrics/<experiment>/<variant>.json."),
    predictions: Path = typer.Option(None, help="Every metric (metrics.json), per-pair predictions and sample "
                                                "routings. Default: data/predictions/<experiment>/<variant>."),
    prepared: Path = typer.Option(None, help="Prepared pairs (prompt text for the examples). Default: data/prepared/<dataset>."),
    figures_dir: Path = typer.Option(None, "--figures", help="PNG figures. Default: data/plots/eval/<experiment>/<variant>."),
) -> None:
    """Score one trained variant on the test split: accuracy, routing entropy (Eq. 4),
    global entropy (Eq. 5), expert correlation (Eq. 6), and where the data has categories,
    category coverage (Eq. 8), expert purity (Eq. 9-10) and specialization (Eq. 11-13) with
    per-category tables. Also a per-pair Parquet dump, sample routings and figures."""
    P.one_of(variant, VARIANTS)
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    stores = SplitStores(stores or Path("data/stores") / spec["dataset"])
    pairs_path = (prepared or Path("data/prepared") / spec["dataset"]) / "pairs.parquet"
    prompts = prompt_texts(pairs_path) if pairs_path.exists() else None
    predictions = predictions or Path("data/predictions") / experiment / variant
    figures_dir = figures_dir or Path("data/plots/eval") / experiment / variant
    metrics_path = metrics_path or Path("data/metrics") / experiment / f"{variant}.json"
    with P.staged(metrics_path, predictions, figures_dir) as (new_metrics, new_predictions, new_figures):
        result = evaluate_variant(
            stores, model or Path("data/models") / experiment / variant, variant, metrics_path=new_metrics,
            predictions_dir=new_predictions, figures_dir=new_figures, prompts=prompts,
            extra={"experiment": experiment, "dataset": spec["dataset"]})
    typer.echo(json.dumps({variant: {k: round(result[k], 4) for k in KEYS}}, indent=1))


if __name__ == "__main__":
    P.run(main)
