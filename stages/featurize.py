"""Stage `featurize`: data/prepared/<dataset> -> data/features/<dataset> (the cache)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from pipeline import backbone as bb
from pipeline.featurize import featurize
from pipeline.featurize import FeaturizeConfig
from pipeline.pairs import check_prepared
from stages import common as P


def main(
    dataset: str = typer.Argument(..., help="Dataset name (folder under data/prepared)."),
    backbone_dir: str = typer.Option("data/backbone", "--backbone", help="Materialized backbone folder, hub id or path."),
    prepared: Path = typer.Option(None, help="Prepared folder. Default: data/prepared/<dataset>."),
    out: Path = typer.Option(None, help="Cache folder. Default: data/features/<dataset>."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (backbone, featurize)."),
    progress: bool = typer.Option(True, help="Report progress (bars on a terminal, periodic lines in a log)."),
) -> None:
    """Run the frozen backbone once per unique sequence and write Parquet shards plus a
    manifest. Resumable: rerun after a crash and finished shards are kept. Scale out
    with `torchrun --nproc-per-node N $(which smoe) featurize ...`."""
    params = P.load(params_file)
    config = P.build(FeaturizeConfig, P.section(params, "featurize"), "featurize")
    prepared = check_prepared(prepared or Path("data/prepared") / dataset, dataset)  # before the backbone loads
    backbone = bb.load(P.build(bb.BackboneConfig, P.section(params, "backbone"), "backbone", ignore=("source",),
                                model=backbone_dir))
    start = time.perf_counter()
    manifest = featurize(prepared, out or Path("data/features") / dataset,
                         backbone, config, dataset=dataset, show_progress=progress)
    if manifest is not None:
        summary = {k: manifest[k] for k in ("num_sequences", "num_pairs", "pairs_by_split", "hidden_size")}
        summary["dropped"] = manifest["dropped"]["counts"]
        summary["truncated"] = manifest["truncated"]["count"]
        summary["seconds"] = round(time.perf_counter() - start, 1)
        typer.echo(json.dumps(summary))


if __name__ == "__main__":
    P.run(main)
