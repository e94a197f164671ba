"""The feature cache: the one on-disk format every stage after `featurize` reads.

Layout of ``data/features/<dataset>/``::

    manifest.json              what produced the cache, what it holds, checksums (shards, pairs)
    pairs.parquet              one row per kept pair; references sequences BY ID
    shards/shard-00000.parquet one row per unique (prompt, response) sequence

``pairs.parquet``

| column         | type   | meaning                                                        |
|----------------|--------|----------------------------------------------------------------|
| pair_id        | string | id from the prepared pairs table (content hash)                |
| split          | string | train / validation / test / adapt                              |
| chosen_id      | string | seq_id of the preferred sequence                               |
| rejected_id    | string | seq_id of the dispreferred sequence                            |
| prompt_state_id| string | seq_id whose ``prompt_state`` is the pair's router input       |
| category ... confidence | string, nullable | metadata copied from the prepared table (pipeline/pairs.py METADATA_COLUMNS) |

``prompt_state_id`` is the smaller of the two sequence ids: both sequences carry the
same prompt state unless truncation cut their prompts differently, and choosing by id
(never by label) keeps the router input independent of which response was chosen.

``shards/shard-NNNNN.parquet``

| column         | type                          | meaning                                      |
|----------------|-------------------------------|----------------------------------------------|
| seq_id         | string                        | hash of (prompt, response); unique in cache  |
| n_tokens       | int32                         | tokens of the formatted sequence             |
| truncated      | bool                          | prompt was cut from the left to fit          |
| response_state | fixed_size_list<dtype>[H]     | final-layer state at the last real token     |
| prompt_state   | fixed_size_list<dtype>[H]     | final-layer state at the end of the prompt   |

dtype is float16 or float32 (``manifest.dtype``); H is ``manifest.hidden_size``.
Every join downstream is by id; row order carries no meaning.

Shards are written to a temporary name, checksummed and renamed into place, so a
killed run never leaves a half-written shard under a final name. While a run is in
progress each finished shard has a ``.sha256`` sidecar; the manifest (written last,
by rank 0) takes over the checksums and the sidecars are removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pipeline.errors import UserError
from pipeline.integrity import ArtifactError, sha256_file, verify_once

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PAIRS = "pairs.parquet"
SHARD_DIR = "shards"
REQUIRED_MANIFEST_KEYS = (
    "format_version", "backbone", "revision", "hidden_size", "dtype", "pooling", "template_hash",
    "max_length", "num_sequences", "num_pairs", "dropped", "truncated", "shards",
)
ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


class CacheError(UserError, RuntimeError):
    pass


def shard_schema(hidden_size: int, dtype: str) -> pa.Schema:
    vec = pa.list_(ARROW_DTYPES[dtype], hidden_size)
    return pa.schema([("seq_id", pa.string()), ("n_tokens", pa.int32()), ("truncated", pa.bool_()),
                      ("response_state", vec), ("prompt_state", vec)])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def vectors_to_arrow(vectors: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    np_dtype = np.float16 if dtype == "float16" else np.float32
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np_dtype).reshape(-1), type=ARROW_DTYPES[dtype])
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Zero-copy-where-possible view of a fixed_size_list column as a [rows, H] array."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


@dataclass
class ShardRecord:
    file: str
    rows: int
    bytes: int
    sha256: str


def write_shard(directory: Path, index: int, table: pa.Table, plan_hash: str) -> ShardRecord:
    """Atomically write one shard and its checksum sidecar (sidecar last: its presence
    means the shard under the final name is complete)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / shard_name(index)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    table = table.replace_schema_metadata({"smoe_plan_hash": plan_hash})
    pq.write_table(table, tmp, compression="zstd", row_group_size=4096)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, final)
    record = ShardRecord(final.name, table.num_rows, final.stat().st_size, digest)
    write_json(directory / f"{final.name}.sha256", {**record.__dict__, "plan_hash": plan_hash})
    return record


def completed_shard(directory: Path, index: int, plan_hash: str, expected: dict | None = None) -> ShardRecord | None:
    """Return the record of a shard that is complete and intact, else None.

    Intact = its bytes hash to the checksum recorded for it (sidecar during a run, the
    manifest afterwards) and it was written for the same plan.
    """
    path = directory / shard_name(index)
    if not path.exists():
        return None
    sidecar = directory / f"{path.name}.sha256"
    if sidecar.exists():
        try:
            expected = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            return None
    if not expected or expected.get("plan_hash") != plan_hash:
        return None
    if sha256_file(path) != expected["sha256"]:
        return None
    return ShardRecord(path.name, expected["rows"], path.stat().st_size, expected["sha256"])


# --------------------------------------------------------------------------- reading


class FeatureCache:
    """Read access to a finished cache directory.

    Every file is checked against its manifest checksum before this process first reads
    it (:func:`pipeline.integrity.verify_once`), and anything pyarrow cannot read becomes
    a :class:`CacheError` naming the file: no stage trains on, or reports from, a shard
    that is not the one featurize wrote."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise CacheError(f"{self.path}: no {MANIFEST}; this is not a finished feature cache "
                             f"(run `smoe featurize`, or `dvc pull` it from the remote)")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CacheError(f"{manifest_path}: damaged, not valid JSON ({e}); {self.recovery}") from None
        if not isinstance(self.manifest, dict):
            raise CacheError(f"{manifest_path}: damaged, not a JSON object; {self.recovery}")
        missing = [k for k in (*REQUIRED_MANIFEST_KEYS, "pairs_sha256") if k not in self.manifest]
        if missing:
            raise CacheError(f"{manifest_path}: manifest lacks {missing}; {self.recovery}")
        if self.manifest["format_version"] != FORMAT_VERSION:
            raise CacheError(f"{manifest_path}: cache format {self.manifest['format_version']}, "
                             f"this code reads format {FORMAT_VERSION}; {self.recovery}")
        shards = self.manifest["shards"]
        if not isinstance(shards, list) or not all(
                isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("sha256"), str)
                for s in shards):
            raise CacheError(f"{manifest_path}: damaged, 'shards' is not a list of {{file, sha256}} records; "
                             f"{self.recovery}")

    @property
    def recovery(self) -> str:
        """What a user does about a damaged cache: featurize recomputes only the shards
        whose checksum fails, and DVC can restore the whole folder from its cache."""
        return (f"re-run featurize for it (`dvc repro` or `smoe featurize`; only damaged shards are "
                f"recomputed), or restore it with `dvc checkout {self.path}`")

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    def shard_paths(self) -> list[Path]:
        return [self.path / SHARD_DIR / s["file"] for s in self.manifest["shards"]]

    def _checked(self, path: Path, expected: str) -> Path:
        try:
            verify_once(path, expected)
        except ArtifactError as e:
            raise CacheError(f"{e}; {self.recovery}") from None
        return path

    def _pairs_path(self) -> Path:
        return self._checked(self.path / PAIRS, self.manifest["pairs_sha256"])

    def _shard_path(self, record: dict[str, Any]) -> Path:
        return self._checked(self.path / SHARD_DIR / record["file"], record["sha256"])

    def _unreadable(self, path: Path, error: Exception) -> CacheError:
        # Reached only when the bytes match the manifest: the manifest itself describes a
        # file pyarrow cannot read (e.g. a manifest rewritten over a foreign folder).
        return CacheError(f"{path}: unreadable as Parquet ({type(error).__name__}: {error}); {self.recovery}")

    def _check_width(self, path: Path, column: pa.Array | pa.ChunkedArray) -> None:
        width = getattr(column.type, "list_size", None)
        if width != self.hidden_size:
            raise CacheError(f"{path}: states have width {width}, the manifest says hidden size "
                             f"{self.hidden_size} (a shard from another cache?); {self.recovery}")

    def verify(self) -> list[str]:
        """Check every shard, and the pairs table, against its manifest checksum. Returns
        the problems (what `smoe cache info` prints); readers raise on the first instead."""
        problems = []
        files = [(self.path / PAIRS, self.manifest["pairs_sha256"])]
        files += [(self.path / SHARD_DIR / r["file"], r["sha256"]) for r in self.manifest["shards"]]
        for path, expected in files:  # always rehashed: this is the explicit full check
            if not path.exists():
                problems.append(f"{path}: missing")
            elif sha256_file(path) != expected:
                problems.append(f"{path}: checksum mismatch (damaged, truncated or replaced since it was written)")
        return problems

    def pairs(self, columns: list[str] | None = None) -> pa.Table:
        path = self._pairs_path()
        try:
            # one thread: pyarrow's pool + torch can abort (exit 134) a process that exits right after a read
            return pq.ParquetFile(path).read(columns=columns, use_threads=False)
        except (pa.ArrowException, OSError) as e:
            raise self._unreadable(path, e) from None

    def iter_shards(self, columns: list[str] | None = None) -> Iterator[tuple[Path, pa.Table]]:
        for record in self.manifest["shards"]:
            path = self._shard_path(record)
            try:
                table = pq.ParquetFile(path).read(columns=columns, use_threads=False)
            except (pa.ArrowException, OSError) as e:
                raise self._unreadable(path, e) from None
            for name in ("response_state", "prompt_state"):
                if name in table.column_names:
                    self._check_width(path, table.column(name))
            yield path, table

    def iter_batches(self, columns: list[str], batch_rows: int = 4096) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
        """(shard path, first row's index in the shard, batch) over every shard, ``batch_rows``
        rows at a time: memory stays at one batch however large the shards are."""
        for record in self.manifest["shards"]:
            path = self._shard_path(record)
            offset = 0
            try:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns,
                                                               use_threads=False):
                    for name in ("response_state", "prompt_state"):
                        if name in batch.schema.names:
                            self._check_width(path, batch.column(name))
                    yield path, offset, batch
                    offset += batch.num_rows
            except (pa.ArrowException, OSError) as e:
                raise self._unreadable(path, e) from None

    def states(self, seq_ids: Iterable[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Map seq_id -> (response_state, prompt_state) as float32; all, or just ``seq_ids``.
        Loads into memory: for small caches and tests. Training streams shards instead."""
        wanted = None if seq_ids is None else set(seq_ids)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for _, table in self.iter_shards():
            ids = table.column("seq_id").to_pylist()
            resp = arrow_to_vectors(table.column("response_state")).astype(np.float32)
            prompt = arrow_to_vectors(table.column("prompt_state")).astype(np.float32)
            for i, sid in enumerate(ids):
                if wanted is None or sid in wanted:
                    out[sid] = (resp[i], prompt[i])
        return out


def describe(cache: FeatureCache) -> dict[str, Any]:
    """The summary `smoe cache info` prints."""
    m = cache.manifest
    size = sum(p.stat().st_size for p in cache.shard_paths() if p.exists())
    return {
        "path": str(cache.path), "backbone": m["backbone"], "revision": m["revision"],
        "template_hash": m["template_hash"], "hidden_size": m["hidden_size"], "dtype": m["dtype"],
        "pooling": m["pooling"], "max_length": m["max_length"], "num_sequences": m["num_sequences"],
        "num_pairs": m["num_pairs"], "pairs_by_split": m.get("pairs_by_split"),
        "shards": len(m["shards"]), "bytes": size,
        "dropped": m["dropped"]["counts"], "truncated": m["truncated"]["count"],
    }
