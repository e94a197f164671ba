"""The feature cache: the one on-disk format every stage after `featurize` reads.

Layout of ``data/features/<dataset>/``::

    manifest.json              what produced the cache, what it holds, checksums (shards, pairs)
    pairs.parquet              one row per kept pair; references states BY ID
    shards/shard-00000.parquet one row per stored state: a response state per unique
                               (prompt, response) sequence, a prompt state per unique prompt

``pairs.parquet``

| column         | type   | meaning                                                        |
|----------------|--------|----------------------------------------------------------------|
| pair_id        | string | id from the prepared pairs table (content hash)                |
| split          | string | train / validation / test / adapt                              |
| chosen_id      | string | state_id of the preferred sequence's response state            |
| rejected_id    | string | state_id of the dispreferred sequence's response state         |
| prompt_state_id| string | state_id of the pair's router input (a ``prompt`` row)         |
| category ... confidence | string, nullable | metadata copied from the prepared table (pipeline/pairs.py METADATA_COLUMNS) |

``shards/shard-NNNNN.parquet``

| column    | type                      | meaning                                                     |
|-----------|---------------------------|-------------------------------------------------------------|
| state_id  | string                    | unique in the cache: a sequence id, or ``p`` + prompt key   |
| kind      | string                    | ``response`` or ``prompt``                                  |
| n_tokens  | int32                     | tokens of the formatted sequence (response) / prompt (prompt) |
| truncated | bool                      | the prompt was cut from the left to fit                     |
| state     | fixed_size_list<dtype>[H] | final-layer state at the last real token of the sequence (response), or at the end of the prompt (prompt) |

A prompt state is stored ONCE per prompt (format 2; format 1 stored it beside every
response state, which roughly doubled a cache with one pair per prompt). For a decoder
the prompt key is the hash of the prompt's token ids as fed to the model: causal attention
makes the state at the end of the prompt a function of those tokens alone, so two
sequences whose prompts were truncated differently get two prompt states. For an encoder
(bidirectional, mean pooling) the prompt's pooled state depends on the response too, so
the key is the sequence itself. A pair's ``prompt_state_id`` is the prompt state of the
smaller of its two sequence ids: chosen by id, never by label, so the router input does
not depend on which response was preferred.

dtype is float16 or float32 (``manifest.dtype``); H is ``manifest.hidden_size``.
Every join downstream is by id; row order carries no meaning.

Shards are written to a temporary name, checksummed and renamed into place, so a
killed run never leaves a half-written shard under a final name. While a run is in
progress each finished shard has a ``.sha256`` sidecar; the manifest (written last,
by rank 0) takes over the checksums and the sidecars are removed.

Readers hash each file from the same bytes they parse (one read, :meth:`FeatureCache._read`),
and count them in :mod:`pipeline.iostats`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pipeline import iostats
from pipeline.errors import UserError
from pipeline.integrity import sha256_file

FORMAT_VERSION = 2  # 2: prompt states once per prompt (one `state` column, rows by `kind`)
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


KINDS = ("response", "prompt")


def shard_schema(hidden_size: int, dtype: str) -> pa.Schema:
    return pa.schema([("state_id", pa.string()), ("kind", pa.string()), ("n_tokens", pa.int32()),
                      ("truncated", pa.bool_()), ("state", pa.list_(ARROW_DTYPES[dtype], hidden_size))])


def prompt_state_id(prompt_key: bytes) -> str:
    """The state_id of a prompt state: ``p`` + its key's hex (sequence ids are plain hex,
    so the two kinds never collide)."""
    return "p" + prompt_key.hex()[:24]


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

    Every file is checked against its manifest checksum from the very bytes that are then
    parsed (:meth:`_read`), and anything pyarrow cannot read becomes a :class:`CacheError`
    naming the file: no stage trains on, or reports from, a shard that is not the one
    featurize wrote."""

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
        if self.manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            dataset = self.manifest.get("dataset", "<dataset>")
            raise CacheError(f"{manifest_path}: cache format {self.manifest['format_version']}, this code reads "
                             f"format {FORMAT_VERSION} (prompt states once per prompt); rebuild it with "
                             f"`dvc repro --force featurize@{dataset}` or `smoe featurize` (every shard of an "
                             f"older format is recomputed)")
        missing = [k for k in (*REQUIRED_MANIFEST_KEYS, "pairs_sha256") if k not in self.manifest]
        if missing:
            raise CacheError(f"{manifest_path}: manifest lacks {missing}; {self.recovery}")
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

    def _read(self, path: Path, expected: str) -> pq.ParquetFile:
        """One read of ``path``: the bytes are hashed against the manifest and parsed from
        memory, so verifying a file costs no second pass over it (a shard is at most
        ``featurize.shard_max_mb`` of vectors) and every byte counts once in iostats."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CacheError(f"{path}: missing; {self.recovery}") from None
        iostats.count_read("cache", len(data))
        if hashlib.sha256(data).hexdigest() != expected:
            raise CacheError(f"{path}: checksum mismatch (damaged, truncated or replaced since it was written); "
                             f"{self.recovery}")
        try:
            return pq.ParquetFile(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as e:
            raise self._unreadable(path, e) from None

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
        path = self.path / PAIRS
        file = self._read(path, self.manifest["pairs_sha256"])
        try:
            # one thread: pyarrow's pool + torch can abort (exit 134) a process that exits right after a read
            return file.read(columns=columns, use_threads=False)
        except (pa.ArrowException, OSError) as e:
            raise self._unreadable(path, e) from None

    def iter_batches(self, columns: list[str] | None = None,
                     batch_rows: int = 4096) -> Iterator[tuple[Path, int, pa.RecordBatch]]:
        """(shard path, first row's index in the shard, batch) over every shard, ``batch_rows``
        rows at a time: memory stays at one shard's bytes plus one decoded batch."""
        for record in self.manifest["shards"]:
            path = self.path / SHARD_DIR / record["file"]
            file = self._read(path, record["sha256"])
            offset = 0
            try:
                for batch in file.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
                    if "state" in batch.schema.names:
                        self._check_width(path, batch.column("state"))
                    yield path, offset, batch
                    offset += batch.num_rows
            except (pa.ArrowException, OSError) as e:
                raise self._unreadable(path, e) from None

    def states(self, state_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Map state_id -> state as float32 (response and prompt states alike); all, or just
        ``state_ids``. Loads into memory: for small caches and tests. Training reads the
        split stores built from the cache instead (pipeline/split_store.py)."""
        wanted = None if state_ids is None else set(state_ids)
        out: dict[str, np.ndarray] = {}
        for _, _, batch in self.iter_batches(["state_id", "state"]):
            vectors = arrow_to_vectors(batch.column(1)).astype(np.float32)
            for i, sid in enumerate(batch.column(0).to_pylist()):
                if wanted is None or sid in wanted:
                    out[sid] = vectors[i]
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
