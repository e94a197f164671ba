"""Stage `evaluate`: data/models/<experiment> + its cache -> data/metrics/<experiment>/<variant>.json (key
numbers, what DVC tracks) + data/predictions/<experiment>/ (every metric, per-pair predictions, examples)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from pipeline.cache import FeatureCache
from pipeline.evaluate import evaluate_experiment
from pipeline.pairs import prompt_texts
from pipeline.train import VARIANTS
from stages import params as P


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variants: list[str] = typer.Option(list(VARIANTS), "--variant", "-v", help="Variants to evaluate (repeatable)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<experiment's dataset>."),
    models: Path = typer.Option(None, help="Trained heads. Default: data/models/<experiment>."),
    metrics_dir: Path = typer.Option(None, "--metrics", help="Key metrics per variant (the DVC metrics files). "
                                                             "Default: data/metrics/<experiment>."),
    predictions: Path = typer.Option(None, help="Per-pair predictions and every metric (<variant>_metrics.json). "
                                                "Default: data/predictions/<experiment>."),
    prepared: Path = typer.Option(None, help="Prepared pairs (prompt text for the examples). Default: data/prepared/<dataset>."),
    figures_dir: Path = typer.Option(None, "--figures", help="PNG figures. Default: data/plots/eval/<experiment>."),
    interpret_dir: Path = typer.Option(None, "--interpret", help="Where `smoe interpret` wrote experts.json (description "
                                                                 "fidelity is merged from there). Default: data/interpret/<experiment>."),
) -> None:
    """Score each trained variant on the test split: accuracy, routing entropy (Eq. 4),
    global entropy (Eq. 5), expert correlation (Eq. 6), and where the data has categories,
    category coverage (Eq. 8), expert purity (Eq. 9-10) and specialization (Eq. 11-13) with
    per-category tables. Also a per-pair Parquet dump, sample routings and figures."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    cache = FeatureCache(features or Path("data/features") / spec["dataset"])
    pairs_path = (prepared or Path("data/prepared") / spec["dataset"]) / "pairs.parquet"
    prompts = prompt_texts(pairs_path) if pairs_path.exists() else None
    with tempfile.TemporaryDirectory(prefix="smoe-eval-") as scratch:
        results = evaluate_experiment(
            cache, models or Path("data/models") / experiment, variants,
            metrics_dir=metrics_dir or Path("data/metrics") / experiment,
            predictions_dir=predictions or Path("data/predictions") / experiment, scratch=scratch,
            figures_dir=figures_dir or Path("data/plots/eval") / experiment, prompts=prompts,
            interpret_dir=interpret_dir or Path("data/interpret") / experiment,
            extra={"experiment": experiment, "dataset": spec["dataset"]})
    keys = ("accuracy", "routing_entropy", "global_entropy", "expert_correlation")
    typer.echo(json.dumps({v: {k: round(r[k], 4) for k in keys} for v, r in results.items()}, indent=1))
