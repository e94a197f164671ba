"""`prepare`: any source -> one canonical pairs table (``pipeline/pairs.py``) + manifest.

Output ``data/prepared/<dataset>/``: ``pairs.parquet`` and ``manifest.json`` with the
row counts per split, every dropped row counted by reason, and the pairs per group of
each metadata column (``pairs_by``; ``group_sizes`` summarizes columns with many groups).

The ``datasets.<name>`` block holds :func:`pipeline.sources.load_rows`'s options (see
:mod:`pipeline.sources`) and one of this stage's own:

``min_group_size: {<metadata column>: <n>}``
    keep only the pairs whose group (e.g. ``user``: one annotator) has at least ``n``
    pairs over all splits, as personalization needs enough pairs per user; the others,
    and pairs with no value in that column, are drops (``small_<column>_group``).

The tabular steps (group counts, the group filter) run in polars on the finished table.
"""

from __future__ import annotations

import inspect
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from annotated_types import Ge, Len

from pipeline import cache, pairs, sources
from pipeline.errors import UserError

MAX_LISTED_GROUPS = 100  # pairs_by lists every group of a column with at most this many


class NoPairsError(UserError, ValueError):
    """A source gave no usable pair."""


Split = Literal[pairs.SPLITS]
SplitName = Literal[(*pairs.SPLITS, *sources.SPLIT_ALIASES)]
MetadataColumn = Literal[pairs.METADATA_COLUMNS]
AdapterName = Literal[tuple(sources.ADAPTERS)]


@dataclass
class DatasetSpec:
    """One ``datasets.<name>`` block of a params file: the source and
    :func:`pipeline.sources.load_rows`'s options (documented there), plus this stage's
    ``min_group_size``. The params schema is generated from these annotations
    (:mod:`stages.params_schema`); the checks that involve several keys, or the data, stay
    in :mod:`pipeline.sources`."""

    source: Annotated[str, Len(1)]  # builtin:<name> | hub id | local file, folder or glob | shared:<path>
    params: dict[str, Any] | None = None  # builtin sources: the generator's keyword arguments
    adapter: AdapterName | None = None
    columns: dict[str, Any] | None = None
    labels: dict[Any, str] | None = None
    min_margin: Annotated[float, Ge(0)] | None = None
    split: SplitName | None = None
    split_fractions: dict[Split, Annotated[float, Ge(0)]] | None = None
    split_by: Literal[sources.SPLIT_BY] | None = None
    path_pattern: str | None = None
    limits: dict[Split, Annotated[int, Ge(0)]] | None = None
    options: dict[str, Any] | None = None
    seed: Annotated[int, Ge(0)] = 0
    revision: str | None = None
    min_group_size: dict[MetadataColumn, Annotated[int, Ge(1)]] | None = None


def option_names() -> list[str]:
    """Every key a ``datasets.<name>`` block may hold besides ``source`` and ``params``."""
    names = [p for p in inspect.signature(sources.load_rows).parameters if p not in ("source", "builtin_params")]
    return sorted([*names, "min_group_size"])


def _group_values(table: pa.Table, column: str) -> pl.Series:
    return pl.from_arrow(table.column(column).combine_chunks()).alias(column)


def filter_small_groups(table: pa.Table, min_group_size: Mapping[str, int] | None) -> tuple[pa.Table, Counter]:
    """Drop the pairs of groups with fewer than ``min_group_size[column]`` pairs (and the
    pairs with no value in that column), column after column; counted by reason."""
    dropped: Counter = Counter()
    for column, n in (min_group_size or {}).items():
        if column not in pairs.METADATA_COLUMNS:
            raise sources.ConfigError(f"min_group_size: {column!r} is not a metadata column; "
                                      f"use one of {list(pairs.METADATA_COLUMNS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise sources.ConfigError(f"min_group_size.{column} must be an integer >= 1, got {n!r}")
        values = _group_values(table, column)
        sizes = values.to_frame().group_by(column).len().filter(pl.col("len") >= n)
        keep = values.is_in(sizes[column].drop_nulls().implode()).fill_null(False)
        dropped[f"small_{column}_group"] += int((~keep).sum())
        table = table.filter(keep.to_arrow())
    return table, +dropped


def group_counts(table: pa.Table) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, float]]]:
    """(pairs per group of each metadata column with at most MAX_LISTED_GROUPS groups;
    {column: groups, min, median, max} for every metadata column in use)."""
    listed, sizes = {}, {}
    for column in pairs.METADATA_COLUMNS:
        counts = _group_values(table, column).drop_nulls().to_frame().group_by(column).len().sort(column)
        if counts.height == 0:
            continue
        sizes[column] = {"groups": counts.height, "min": int(counts["len"].min()),
                         "median": float(counts["len"].median()), "max": int(counts["len"].max())}
        if counts.height <= MAX_LISTED_GROUPS:
            listed[column] = dict(zip(counts[column].to_list(), counts["len"].to_list()))
    return listed, sizes


def prepare(source: str, out_dir: str | Path, *, min_group_size: Mapping[str, int] | None = None,
            **source_options: Any) -> dict[str, Any]:
    """Load ``source`` (``builtin:<name>``, a hub id, or a local file, folder or glob),
    validate, filter and write."""
    unknown = sorted(set(source_options) - {*option_names(), "builtin_params"})
    if unknown:
        raise sources.ConfigError(f"unknown dataset option(s) {unknown}; known: source, params, "
                                  f"{', '.join(option_names())}")
    out_dir = Path(out_dir)
    table, dropped = pairs.finalize(sources.load_rows(source, **source_options))
    table, small = filter_small_groups(table, min_group_size)
    dropped.update(small)
    if table.num_rows == 0:
        raise NoPairsError(f"{source}: no usable pairs (dropped: {dict(dropped) or 'none'})")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".pairs.parquet.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, out_dir / "pairs.parquet")
    pairs_by, group_sizes = group_counts(table)
    options = {k: v for k, v in source_options.items() if v is not None}
    if min_group_size:
        options["min_group_size"] = dict(min_group_size)
    manifest = {
        "source": source,
        "options": options,
        "num_pairs": table.num_rows,
        "pairs_by_split": dict(sorted(Counter(table.column("split").to_pylist()).items())),
        "dropped": dict(sorted(dropped.items())),
        "pairs_by": pairs_by,
        "group_sizes": group_sizes,
    }
    cache.write_json(out_dir / "manifest.json", manifest)
    return manifest
