"""Stage `prepare`: one dataset's source -> data/prepared/<dataset>/pairs.parquet."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from stages import common as P


def main(
    dataset: str = typer.Argument(..., help="Dataset name: a key under `datasets` in params."),
    out: Path = typer.Option(None, help="Output folder. Default: data/prepared/<dataset>."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file."),
) -> None:
    """Build the canonical pairs table of DATASET from its `datasets.<DATASET>` params
    (source: builtin:<name> | hub id | local file, folder or glob, e.g. a published
    .jsonl.gz as it is | shared:<path> of the real datasets, sha256-checked; plus adapter
    or columns, labels, min_margin, split, seed, ...; pipeline/sources.py documents
    every key)."""
    # Imported here: `datasets` (0.7 s) is only needed by this stage, not by every `smoe` call.
    from pipeline.prepare import prepare

    params = P.load(params_file)  # the whole file, checked against the schema (DatasetSpec's keys and types)
    spec = P.section(params, "datasets", dataset)
    if not isinstance(spec, dict) or not spec.get("source"):
        raise P.ParamsError(f"{params.source}: datasets.{dataset} needs a 'source' (builtin:<name>, a hub id, "
                            f"a local file, folder or glob, or shared:<path>)")
    spec = dict(spec)
    source = str(spec.pop("source"))
    builtin_params = spec.pop("params", None)
    # Into a scratch folder swapped in whole on success: a refused source (a bad file, no
    # usable pairs) leaves the previous pairs.parquet and manifest.json as they were.
    with P.staged(out or Path("data/prepared") / dataset) as (scratch,):
        manifest = prepare(source, scratch, builtin_params=builtin_params, **spec)
    typer.echo(json.dumps({k: manifest[k] for k in ("num_pairs", "pairs_by_split", "dropped")}))


if __name__ == "__main__":
    P.run(main)
