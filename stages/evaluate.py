"""Stage `evaluate`: data/models/<experiment> + its cache -> data/metrics/<experiment>/<variant>.json."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from pipeline.cache import FeatureCache
from pipeline.evaluate import evaluate_experiment
from pipeline.train import VARIANTS
from stages import params as P


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variants: list[str] = typer.Option(list(VARIANTS), "--variant", "-v", help="Variants to evaluate (repeatable)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<experiment's dataset>."),
    models: Path = typer.Option(None, help="Trained heads. Default: data/models/<experiment>."),
    metrics_dir: Path = typer.Option(None, "--metrics", help="Default: data/metrics/<experiment>."),
    predictions: Path = typer.Option(None, help="Per-pair predictions. Default: data/predictions/<experiment>."),
) -> None:
    """Score each trained variant on the test split: accuracy, routing entropy (Eq. 4),
    global entropy (Eq. 5), expert correlation (Eq. 6), and a per-pair Parquet dump."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    cache = FeatureCache(features or Path("data/features") / spec["dataset"])
    with tempfile.TemporaryDirectory(prefix="smoe-eval-") as scratch:
        results = evaluate_experiment(
            cache, models or Path("data/models") / experiment, variants,
            metrics_dir=metrics_dir or Path("data/metrics") / experiment,
            predictions_dir=predictions or Path("data/predictions") / experiment, scratch=scratch,
            extra={"experiment": experiment, "dataset": spec["dataset"]})
    keys = ("accuracy", "routing_entropy", "global_entropy", "expert_correlation")
    typer.echo(json.dumps({v: {k: round(r[k], 4) for k in keys} for v, r in results.items()}, indent=1))
