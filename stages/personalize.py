"""Stage `personalize`: data/models/<experiment> + its cache -> data/personalize/<experiment>/ (every result in
personalization.json, the tables, the adapted heads) + data/metrics/<experiment>/personalization.json (key
numbers, what DVC tracks)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import typer

from pipeline.cache import FeatureCache
from pipeline.personalize import personalize_experiment
from pipeline.train import VARIANTS
from stages import params as P


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    group_by: str = typer.Option(..., help="Pair column naming the group to personalize to: "
                                           "attribute (attributes) or user (users)."),
    variants: list[str] = typer.Option(list(VARIANTS), "--variant", "-v", help="Variants to adapt (repeatable)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file (reads `personalize:`)."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<experiment's dataset>."),
    models: Path = typer.Option(None, help="Trained heads. Default: data/models/<experiment>."),
    out: Path = typer.Option(None, help="Every result (per n, per group, settings). "
                                        "Default: <adapted>/personalization.json."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Key numbers per model, the DVC metrics file. "
                                                              "Default: data/metrics/<experiment>/personalization.json."),
    adapted: Path = typer.Option(None, help="Adapted heads + tables. Default: data/personalize/<experiment>."),
    figures_dir: Path = typer.Option(None, "--figures", help="Fig. 8 PNG + CSV. Default: data/plots/personalize/<experiment>."),
    interpret_dir: Path = typer.Option(None, "--interpret", help="Expert descriptions (experts.json) for Table 6. "
                                                                 "Default: data/interpret/<experiment>."),
) -> None:
    """Test-time personalization (paper §6.2, App. G-H): per group (attribute or user),
    adapt each trained head on n in {5, 10, 25, 50} of the group's pairs (3 seeds) -- Hedge
    router adaptation for MoE heads, HyRe reweighting for the ensemble, nothing for the
    single head -- and report accuracy and gain on held-out pairs of the same group."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    config, adapt_config = P.personalize_configs(params)
    cache = FeatureCache(features or Path("data/features") / spec["dataset"])
    adapted = adapted or Path("data/personalize") / experiment
    for name in variants:  # no heads left over from groups that no longer exist; nothing else is touched
        shutil.rmtree(adapted / name, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="smoe-personalize-") as scratch:
        results = personalize_experiment(
            cache, models or Path("data/models") / experiment, variants, group_by, config=config,
            adapt_config=adapt_config, out_path=out or adapted / "personalization.json",
            metrics_path=metrics_path or Path("data/metrics") / experiment / "personalization.json",
            adapted_dir=adapted, tables_path=adapted / "personalization.md",
            figures_dir=figures_dir or Path("data/plots/personalize") / experiment,
            interpret_dir=interpret_dir or Path("data/interpret") / experiment, scratch=scratch)
    typer.echo(json.dumps({m: {k: round(r[k], 4) for k in ("accuracy_before", "accuracy", "gain", "gain_std")}
                           for m, r in results.items() if m != "settings"}, indent=1))
