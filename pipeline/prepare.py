"""`prepare`: any source -> one canonical pairs table (``pipeline/pairs.py``) + manifest.

Output ``data/prepared/<dataset>/``: ``pairs.parquet`` and ``manifest.json`` with the
row counts per split and every dropped row counted by reason.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline import cache, pairs, sources


def prepare(source: str, out_dir: str | Path, **source_options: Any) -> dict[str, Any]:
    """Load ``source`` (``builtin:<name>``, a hub id, or a local file), validate and write."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, dropped = pairs.finalize(sources.load_rows(source, **source_options))
    if table.num_rows == 0:
        raise ValueError(f"{source}: no usable pairs (dropped: {dict(dropped) or 'none'})")
    tmp = out_dir / ".pairs.parquet.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out_dir / "pairs.parquet")
    manifest = {
        "source": source,
        "options": {k: v for k, v in source_options.items() if v is not None},
        "num_pairs": table.num_rows,
        "pairs_by_split": dict(sorted(Counter(table.column("split").to_pylist()).items())),
        "dropped": dict(sorted(dropped.items())),
    }
    cache.write_json(out_dir / "manifest.json", manifest)
    return manifest
