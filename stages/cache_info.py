"""`smoe cache info`: print a cache's manifest summary and verify shard checksums."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.cache import CacheError, FeatureCache, describe


def main(
    path: Path = typer.Argument(..., help="Cache folder, e.g. data/features/categories."),
    verify: bool = typer.Option(True, help="Recompute every shard checksum."),
) -> None:
    """Show backbone, template hash, rows, size and drops; exit 1 if any shard is bad."""
    try:
        cache = FeatureCache(path)
    except CacheError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(describe(cache), indent=2))
    if verify:
        problems = cache.verify()
        for p in problems:
            typer.echo(f"BAD {p}", err=True)
        if problems:
            typer.echo(f"to repair: {cache.recovery}", err=True)
            raise typer.Exit(1)
        typer.echo(f"ok: {len(cache.manifest['shards'])} shard checksums verified")
