"""Stage `train`: data/features/<dataset> -> data/models/<experiment>/<variant>/ + curves."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import typer

from pipeline.backbone import source_identity
from pipeline.cache import FeatureCache
from pipeline.train import VARIANTS, check_cache_backbone, train_experiment
from stages import params as P


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variants: list[str] = typer.Option(list(VARIANTS), "--variant", "-v", help="Variants to train (repeatable)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<experiment's dataset>."),
    out: Path = typer.Option(None, help="Models folder. Default: data/models/<experiment>."),
    curves: Path = typer.Option(None, help="Training-curve folder. Default: data/plots/train/<experiment>."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train the reward heads of one experiment from its cached features only: single,
    vanilla, micro, sparse (lambdas from params.yaml, per-experiment values win) and hyre.
    The backbone is not loaded."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    config = P.train_config(params)
    cache = FeatureCache(features or Path("data/features") / spec["dataset"])
    expected = source_identity(P.section(params, "backbone", "source"), params["backbone"].get("revision"))
    check_cache_backbone(cache.manifest, expected, str(cache.path))
    out = out or Path("data/models") / experiment
    curves = curves or Path("data/plots/train") / experiment
    # Write next to the final folders and swap in at the end: a failed run keeps nothing half-made.
    staging = Path(tempfile.mkdtemp(prefix=f".{experiment}.", dir=out.parent if out.parent.exists() else None))
    try:
        with tempfile.TemporaryDirectory(prefix="smoe-train-") as scratch:
            summary = train_experiment(cache, staging / "models", staging / "curves", variants=variants,
                                       num_experts=spec["num_experts"], lambdas=P.lambdas(params, experiment),
                                       config=config, scratch=scratch, show_progress=progress,
                                       extra={"experiment": experiment, "dataset": spec["dataset"]})
        for src, dst in ((staging / "models", out), (staging / "curves", curves)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.move(str(src), str(dst))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    typer.echo(json.dumps({"experiment": experiment, "validation": summary}, indent=1))
