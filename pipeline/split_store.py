"""The split stores: each split of a feature cache as a pair-major array on disk, built
ONCE per cache (stage ``stores``) and read by every stage after it.

The cache stores each state once (``shards/``) and pairs by id (``pairs.parquet``).
Training and evaluation want the opposite: for every pair, its router input and both
response states, in random order, without holding the cache in memory (a 700K-pair cache
at hidden 3072 is ~13 GB). :func:`build_stores` makes ONE pass over the cache's shards and
writes, for every split at once, into ``data/stores/<dataset>/``::

    manifest.json      the cache's identity (backbone, template, hidden size) and the splits
    <split>.f16        float16 [num_pairs, 3, H]: (prompt_state, chosen, rejected)
    <split>.parquet    one row per pair in file order: pair_id and the pair's metadata
    <split>.moments.npy  float64 [4, H]: prompt mean, prompt std, response mean, response std
    checksums.json     sha256 of every file above, verified where they are read

in a seeded random pair order. Every later stage opens the split it needs
(:meth:`SplitStores.split`) instead of decompressing the cache again: one pass over the
cache per ``dvc repro`` instead of two per stage. Epochs read a store block by block
(``block_pairs`` rows at a time, with plain file reads, never a memory map, so resident
memory stays at one block): blocks come in a fresh random order each epoch and are
shuffled inside, which on a file already laid out in random order is close to a full
shuffle, and IS a full shuffle whenever the split fits in one block.

Rows are tied to pairs by ``pair_ids`` (file order); every result downstream carries the
pair id, never a row number. Bytes read from the cache and from the stores are counted
in :mod:`pipeline.iostats`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline import iostats
from pipeline.cache import CacheError, FeatureCache, arrow_to_vectors, write_json
from pipeline.integrity import ArtifactError, read_checksums, verify_once, write_checksums
from pipeline.progress import progress

DTYPE = np.float16
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SLOT_COLUMNS = ("prompt_state_id", "chosen_id", "rejected_id")  # slot 0, 1, 2 of a store row
# What a stage needs of the cache it never opens: the identity that heads are checked against.
CACHE_IDENTITY = ("dataset", "backbone", "revision", "hidden_size", "dtype", "pooling", "template_hash",
                  "template_params", "pairs_by_split", "metadata_columns", "pairs_sha256", "format_version")


@dataclass
class Batch:
    rows: np.ndarray          # row indices into SplitStore.pair_ids
    prompt: torch.Tensor      # [B, H] float32
    chosen: torch.Tensor
    rejected: torch.Tensor


class SplitStore:
    def __init__(self, path: Path, pair_ids: list[str], metadata: pa.Table, hidden_size: int,
                 moments: np.ndarray | None = None):
        self.path = Path(path)
        self.pair_ids = pair_ids
        self.metadata = metadata      # one row per pair, in file order (pair_id first)
        self.hidden_size = hidden_size
        self._moments = None if moments is None else tuple(moments)  # the file never changes

    def __len__(self) -> int:
        return len(self.pair_ids)

    def categories(self) -> np.ndarray | None:
        """The ground-truth category per pair (file order), when every pair has one."""
        if "category" not in self.metadata.column_names:
            return None
        values = self.metadata.column("category").to_pylist()
        return None if any(v is None for v in values) else np.array(values)

    def order_by_pair_id(self) -> np.ndarray:
        """Row order sorted by pair_id: makes tie-breaking in top-n metrics reproducible."""
        return np.argsort(np.array(self.pair_ids), kind="stable")

    # ------------------------------------------------------------------ reading

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float16 [n, 3, H], read into memory (no mapping)."""
        row_items = 3 * self.hidden_size
        with open(self.path, "rb") as f:
            f.seek(start * row_items * np.dtype(DTYPE).itemsize)
            data = np.fromfile(f, dtype=DTYPE, count=(stop - start) * row_items)
        iostats.count_read("stores", data.nbytes)
        return data.reshape(stop - start, 3, self.hidden_size)

    def blocks(self, block_pairs: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self), block_pairs):
            yield start, self.read(start, min(start + block_pairs, len(self)))

    def batches(self, batch_size: int, *, shuffle: bool = False, rng: np.random.Generator | None = None,
                block_pairs: int = 8192, device: str | torch.device = "cpu") -> Iterator[Batch]:
        """Batches of pairs. ``shuffle`` needs ``rng``: block order and order within each
        block are drawn from it, so a seed fixes the whole epoch."""
        starts = list(range(0, len(self), block_pairs))
        if shuffle:
            starts = [starts[i] for i in rng.permutation(len(starts))]
        carry_rows = np.empty(0, dtype=np.int64)
        carry = np.empty((0, 3, self.hidden_size), dtype=DTYPE)
        device = torch.device(device)
        for n, start in enumerate(starts):
            block = self.read(start, min(start + block_pairs, len(self)))
            rows = np.arange(start, start + len(block))
            if shuffle:
                perm = rng.permutation(len(block))
                block, rows = block[perm], rows[perm]
            block, rows = np.concatenate([carry, block]), np.concatenate([carry_rows, rows])
            last = n == len(starts) - 1
            full = len(block) if last else len(block) - len(block) % batch_size
            # The whole block goes to the device once, as stored (float16: half the bytes),
            # from pinned memory without blocking; each batch is cast to float32 there.
            on_device = torch.from_numpy(block[:full])
            if device.type == "cuda":
                on_device = on_device.pin_memory().to(device, non_blocking=True)
            for b in range(0, full, batch_size):
                x = on_device[b:b + batch_size].float()
                yield Batch(rows[b:b + batch_size], x[:, 0], x[:, 1], x[:, 2])
            carry, carry_rows = block[full:], rows[full:]

    def moments(self, block_pairs: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(prompt mean, prompt std, response mean, response std) over the split, which every
        variant trained on it standardizes with. Written by :func:`build_stores` (no pass
        over the file here); a store made another way computes them once, block by block."""
        if self._moments is None:
            moments = Moments(self.hidden_size)
            for _, block in self.blocks(block_pairs):
                moments.add(block)
            self._moments = tuple(moments.result())
        return self._moments


class Moments:
    """Running float64 sums of a split's states: the prompt slot, and the two response
    slots pooled (each pair counts once: halved). Fed the float16 rows as stored."""

    def __init__(self, hidden_size: int, chunk: int = 1024):
        self.n, self.chunk = 0, chunk
        self.sums, self.squares = np.zeros((2, hidden_size)), np.zeros((2, hidden_size))

    def add(self, rows: np.ndarray, slots: np.ndarray | None = None) -> None:
        """``rows``: float16 [n, 3, H] pair rows, or with ``slots`` float16 [n, H] states and
        the slot (0 prompt, 1-2 response) each fills; ``n`` counts pairs via slot-0 rows."""
        if slots is None:
            rows, slots = rows.reshape(-1, rows.shape[-1]), np.tile(np.arange(3), len(rows))
        for start in range(0, len(rows), self.chunk):  # float32 work, ``chunk`` rows at a time
            part, kind = rows[start:start + self.chunk].astype(np.float32), slots[start:start + self.chunk] > 0
            for i, mask in enumerate((~kind, kind)):
                x = part[mask]
                weight = 0.5 if i else 1.0
                self.sums[i] += x.sum(0, dtype=np.float64) * weight
                self.squares[i] += np.einsum("ij,ij->j", x, x, dtype=np.float64) * weight
            self.n += int((~kind).sum())

    def result(self) -> np.ndarray:
        """float64 [4, H]: prompt mean, prompt std, response mean, response std."""
        mean = self.sums / self.n
        std = np.sqrt(np.maximum(self.squares / self.n - mean ** 2, 0.0))
        return np.stack([mean[0], std[0], mean[1], std[1]])


# ---------------------------------------------------------------------- the stores folder


class SplitStores:
    """A stores folder written by :func:`build_stores`. Opening it checks its manifest;
    each split's files are checked against ``checksums.json`` when that split is opened."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._checksums = read_checksums(self.path, self.recovery)
            verify_once(self.path / MANIFEST, self._checksums.get(MANIFEST, ""), self.recovery)
        except ArtifactError as e:
            raise CacheError(str(e)) from None
        # verified above: these are the bytes build_stores wrote
        self.manifest: dict[str, Any] = json.loads((self.path / MANIFEST).read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{self.path / MANIFEST}: split stores of format {self.manifest.get('format_version')}, "
                             f"this code reads format {FORMAT_VERSION}; {self.recovery}")

    @property
    def recovery(self) -> str:
        return (f"rebuild it with `dvc repro stores@{self.path.name}` (or `smoe stores {self.path.name}`), "
                f"or restore it with `dvc checkout {self.path}`")

    @property
    def cache_manifest(self) -> dict[str, Any]:
        """The identity of the cache the stores were built from (what heads are checked against)."""
        return self.manifest["cache"]

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    def split(self, name: str) -> SplitStore:
        splits = self.manifest["splits"]
        if name not in splits:
            raise CacheError(f"{self.path}: split {name!r} has no pairs (pairs by split: "
                             f"{self.cache_manifest.get('pairs_by_split')})")
        states, index, moments = (self.path / f"{name}{ext}" for ext in (".f16", ".parquet", ".moments.npy"))
        for path in (states, index, moments):
            try:
                if verify_once(path, self._checksums.get(path.name, ""), self.recovery):
                    iostats.count_read("stores", path.stat().st_size)  # the check read it once
            except ArtifactError as e:
                raise CacheError(str(e)) from None
        metadata = pq.ParquetFile(index).read(use_threads=False)
        if metadata.num_rows != splits[name]["pairs"] or states.stat().st_size != (
                metadata.num_rows * 3 * self.hidden_size * np.dtype(DTYPE).itemsize):
            raise CacheError(f"{self.path}: {name} store and its index disagree on the number of pairs; "
                             f"{self.recovery}")
        return SplitStore(states, metadata.column("pair_id").to_pylist(), metadata, self.hidden_size,
                          np.load(moments))


def build_stores(cache: FeatureCache, out_dir: str | Path, *, seed: int = 0,
                 show_progress: bool = False) -> SplitStores:
    """Write every split of ``cache`` as a pair-major store into ``out_dir``, in ONE pass
    over its shards (each shard is read, hashed and decoded exactly once).

    Each split's pairs are laid out in the order ``default_rng(seed).permutation``. Every
    reference of a pair (its prompt state, its chosen and its rejected response state) is
    a row of one sorted table of state ids; each shard batch finds its states there with
    one binary search, so memory is ~25 bytes per reference, not a Python dict entry.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hidden = cache.hidden_size
    table = cache.pairs()
    split_names = sorted(set(table.column("split").to_pylist()))
    if not split_names:
        raise CacheError(f"{cache.path}: the cache holds no pairs")
    splits: dict[str, pa.Table] = {}
    for name in split_names:
        part = table.filter(pc.equal(table.column("split"), name))
        splits[name] = part.take(pa.array(np.random.default_rng(seed).permutation(part.num_rows)))
    # One entry per (split, row, slot): which state goes where.
    ids, where_split, where_row, where_slot = [], [], [], []
    for code, name in enumerate(split_names):
        n = splits[name].num_rows
        for slot, column in enumerate(SLOT_COLUMNS):
            ids += splits[name].column(column).to_pylist()
            where_split.append(np.full(n, code, np.int8))
            where_row.append(np.arange(n, dtype=np.int64))
            where_slot.append(np.full(n, slot, np.int8))
    width = max(map(len, ids))
    ref_ids = np.array(ids, dtype=f"S{width}")
    del ids
    order = np.argsort(ref_ids, kind="stable")
    ref_ids = ref_ids[order]
    ref_split = np.concatenate(where_split)[order]
    ref_row = np.concatenate(where_row)[order]
    ref_slot = np.concatenate(where_slot)[order]
    unique_ids, first, count = np.unique(ref_ids, return_index=True, return_counts=True)
    del ref_ids, order
    found = np.zeros(len(unique_ids), dtype=bool)
    moments = {name: Moments(hidden) for name in split_names}  # the standardization training needs, for free

    paths = {name: out_dir / f"{name}.f16" for name in split_names}
    for name, path in paths.items():
        with open(path, "wb") as f:
            f.truncate(splits[name].num_rows * 3 * hidden * np.dtype(DTYPE).itemsize)
    bar = progress(sum(int(r.get("rows", 0)) for r in cache.manifest["shards"]) or None,
                   "building split stores", "state", enabled=show_progress)
    for shard_path, offset, batch in cache.iter_batches(["state_id", "state"]):
        bar.update(batch.num_rows)
        batch_ids = batch.column(0).to_pylist()
        fits = np.array([len(i) <= width for i in batch_ids])
        keys = np.array(batch_ids, dtype=object)[fits].astype(f"S{width}")
        pos = np.minimum(np.searchsorted(unique_ids, keys), len(unique_ids) - 1)
        hit = unique_ids[pos] == keys
        hits, groups = np.flatnonzero(fits)[hit], pos[hit]
        if not len(hits):
            continue
        values = arrow_to_vectors(batch.column(1).take(pa.array(hits)))
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            i = int(hits[np.flatnonzero(bad)[0]])
            raise CacheError(f"{shard_path}: row {offset + i} (state_id {batch_ids[i]}) has NaN or inf in its state. "
                             f"Re-run featurize for this cache (the backbone produced non-finite states).")
        found[groups] = True
        # Every reference of every hit: a ragged range per hit, flattened.
        per_hit = count[groups]
        source = np.repeat(np.arange(len(hits)), per_hit)
        refs = np.repeat(first[groups] - np.cumsum(per_hit) + per_hit, per_hit) + np.arange(per_hit.sum())
        for code, name in enumerate(split_names):
            mine = ref_split[refs] == code
            if not mine.any():
                continue
            stored = values[source[mine]].astype(DTYPE)
            moments[name].add(stored, ref_slot[refs[mine]])
            mm = np.memmap(paths[name], dtype=DTYPE, mode="r+", shape=(splits[name].num_rows, 3, hidden))
            mm[ref_row[refs[mine]], ref_slot[refs[mine]]] = stored
            mm.flush()
            del mm  # unmap per batch: written pages leave this process's resident set
    bar.close()
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed batches otherwise
    if not found.all():
        missing = unique_ids[~found]
        raise CacheError(f"{cache.path}: {len(missing)} state(s) referenced by pairs are in no shard "
                         f"(e.g. {missing[0].decode()}); the cache is incomplete, run `smoe cache info`")
    drop = {"split", *SLOT_COLUMNS}
    for name in split_names:
        meta = ["pair_id"] + [c for c in splits[name].column_names if c != "pair_id" and c not in drop]
        pq.write_table(splits[name].select(meta), out_dir / f"{name}.parquet")
        np.save(out_dir / f"{name}.moments.npy", moments[name].result())
    write_json(out_dir / MANIFEST, {
        "format_version": FORMAT_VERSION, "hidden_size": hidden, "dtype": "float16", "seed": seed,
        "cache": {k: cache.manifest[k] for k in CACHE_IDENTITY if k in cache.manifest},
        "splits": {name: {"pairs": splits[name].num_rows} for name in split_names},
    })
    write_checksums(out_dir, [MANIFEST, *(f"{name}{ext}" for name in split_names
                                          for ext in (".f16", ".parquet", ".moments.npy"))])
    return SplitStores(out_dir)

