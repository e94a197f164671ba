"""Stage `steer`: data/models/<experiment> + its cache -> data/steer/<experiment>/steering.json (every result),
data/metrics/<experiment>/steering.json (key numbers, what DVC tracks) + Fig. 2/7."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from pipeline.cache import FeatureCache
from pipeline.steer import steer_experiment
from stages import params as P


def main(
    experiment: str = typer.Argument("attributes", help="Experiment whose test pairs carry a steering label "
                                                        "(the RPR-like `attributes` by default)."),
    variants: list[str] = typer.Option(["vanilla", "micro", "sparse"], "--variant", "-v",
                                       help="MoE variants to steer (repeatable); the random baseline uses sparse."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file (reads the `steer:` block)."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<experiment's dataset>."),
    models: Path = typer.Option(None, help="Trained heads. Default: data/models/<experiment>."),
    out: Path = typer.Option(None, help="Every result (per attribute, per weight, t-tests). "
                                        "Default: data/steer/<experiment>/steering.json."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Key numbers per model, the DVC metrics file. "
                                                              "Default: data/metrics/<experiment>/steering.json."),
    figures_dir: Path = typer.Option(None, "--figures", help="Fig. 2/7 PNG + CSV. Default: data/plots/steer/<experiment>."),
) -> None:
    """Attribute steering (paper §5.2, Eq. 14-18): per attribute, pick the expert whose
    top-100 validation examples hold the largest share of it, set its routing weight to
    w in {0.25, 0.5, 0.75, 1.0} on the test pairs and count the pairs that flip to the
    attribute's preferred response (flip rate) and away from it (undesired flip rate),
    against a random-expert baseline, with paired t-tests across attributes."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    settings = P.steer_settings(params)
    cache = FeatureCache(features or Path("data/features") / spec["dataset"])
    with tempfile.TemporaryDirectory(prefix="smoe-steer-") as scratch:
        results = steer_experiment(
            cache, models or Path("data/models") / experiment, variants,
            out_path=out or Path("data/steer") / experiment / "steering.json",
            metrics_path=metrics_path or Path("data/metrics") / experiment / "steering.json",
            figures_dir=figures_dir or Path("data/plots/steer") / experiment, scratch=scratch,
            label=settings["label"], top_n=settings["top_n"], steer_weights=tuple(settings["weights"]),
            random_repeats=settings["random_repeats"], seed=settings["seed"])
    typer.echo(json.dumps({m: {"flip_rate": round(r["flip_rate"], 4), "undesired_flip_rate": round(r["undesired_flip_rate"], 4),
                               "flip_rate_at_1.0": round(r["flip_rate_by_weight"].get("1.0", float("nan")), 4)}
                           for m, r in results.items() if m != "settings"}, indent=1))
