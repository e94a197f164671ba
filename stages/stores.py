"""Stage `stores`: data/features/<dataset> -> data/stores/<dataset>/, every split of the cache as a
pair-major store (pipeline/split_store.py), built in one pass over the cache and read by every stage after it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.cache import FeatureCache
from pipeline.split_store import build_stores
from stages import common as P


def main(
    dataset: str = typer.Argument(..., help="Dataset name: a key under `datasets` in params.yaml."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<dataset>."),
    out: Path = typer.Option(None, help="Stores folder, replaced as a whole. Default: data/stores/<dataset>."),
    progress: bool = typer.Option(True, help="Report progress (bars on a terminal, periodic lines in a log)."),
) -> None:
    """Lay out every split of one feature cache as pair-major float16 arrays, one row per
    pair: (router input, chosen response state, rejected response state), in a fixed
    random order (seed 0; training reshuffles every epoch with train.seed). One pass over
    the cache, each shard read and checksummed once; train, interpret, evaluate, steer and
    personalize then read only the split they need. Takes about as much disk as the cache
    (a pair's states once per pair: more when responses are shared between pairs)."""
    cache = FeatureCache(features or Path("data/features") / dataset)
    out = out or Path("data/stores") / dataset
    with P.staged(out) as (new_out,):
        stores = build_stores(cache, new_out, show_progress=progress)
        splits = stores.manifest["splits"]
    size = sum(p.stat().st_size for p in out.iterdir())
    typer.echo(json.dumps({"dataset": dataset, "pairs": {k: v["pairs"] for k, v in splits.items()},
                           "bytes": size}, indent=1))


if __name__ == "__main__":
    P.run(main)
