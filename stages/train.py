"""Stage `train`: data/stores/<dataset> -> data/models/<experiment>/<variant>/ + its curves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from pipeline.backbone import BackboneConfig, source_identity
from pipeline.split_store import SplitStores
from pipeline.train import VARIANTS, TrainConfig, check_cache_backbone, train_experiment
from stages import common as P


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variant: str = typer.Argument(..., help=f"Variant to train: one of {', '.join(VARIANTS)}."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file."),
    stores: Path = typer.Option(None, help="Split stores (stage `stores`). Default: data/stores/<experiment's dataset>."),
    out: Path = typer.Option(None, help="Head folder. Default: data/models/<experiment>/<variant>."),
    curves: Path = typer.Option(None, help="Training-curve folder. Default: data/plots/train/<experiment>/<variant>."),
    progress: bool = typer.Option(True, help="Report progress (bars on a terminal, periodic lines in a log)."),
) -> None:
    """Train one reward head of one experiment from its cached features only: single,
    vanilla, micro, sparse (lambdas from params.yaml, per-experiment values win) or hyre.
    The backbone is not loaded. Only sparse reads the lambdas."""
    P.one_of(variant, VARIANTS)
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    config = P.build(TrainConfig, P.section(params, "train"), "train")
    stores = SplitStores(stores or Path("data/stores") / spec["dataset"])
    backbone = P.build(BackboneConfig, P.section(params, "backbone"), "backbone", ignore=("source",),
                       model=P.section(params, "backbone", "source"))
    check_cache_backbone(stores.cache_manifest, source_identity(backbone.model, backbone.revision),
                         f"the cache behind {stores.path}",
                         template={"system_prompt": backbone.system_prompt, "template_date": backbone.template_date})
    out = out or Path("data/models") / experiment / variant
    curves = curves or Path("data/plots/train") / experiment / variant
    lambdas = P.lambdas(params, experiment) if variant == "sparse" else {}
    with P.staged(out, curves) as (new_out, new_curves), P.scratch(params, "smoe-train-") as scratch:
        summary = train_experiment(stores, Path(scratch) / "models", Path(scratch) / "curves", variants=[variant],
                                   num_experts=spec["num_experts"], lambdas=lambdas, config=config,
                                   show_progress=progress,
                                   extra={"experiment": experiment, "dataset": spec["dataset"]})
        shutil.move(Path(scratch) / "models" / variant, new_out)
        shutil.move(Path(scratch) / "curves" / variant, new_curves)
    typer.echo(json.dumps({"experiment": experiment, "variant": variant, "validation": summary[variant]}, indent=1))


if __name__ == "__main__":
    P.run(main)
