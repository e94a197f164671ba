"""One split of a feature cache as a pair-major array on disk, for streaming training.

The cache stores each sequence once (``shards/``) and pairs by id (``pairs.parquet``).
Training wants the opposite: for every pair, its router input and both response states,
in random order, without holding the cache in memory (a 200K-pair cache at hidden 3072 is
~5 GB). :meth:`SplitStore.build` makes one pass over the shards and writes

    <scratch>/<split>.f16    float16 [num_pairs, 3, H]: (prompt_state, chosen, rejected)

in a seeded random pair order. Epochs then read it block by block (``block_pairs`` rows
at a time, with plain file reads, never a memory map, so resident memory stays at one
block): blocks come in a fresh random order each epoch and are shuffled inside, which on
a file already laid out in random order is close to a full shuffle, and IS a full shuffle
whenever the split fits in one block.

Rows are tied to pairs by ``pair_ids`` (file order); every result downstream carries the
pair id, never a row number.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.cache import CacheError, FeatureCache, arrow_to_vectors
from pipeline.progress import progress

DTYPE = np.float16


@dataclass
class Batch:
    rows: np.ndarray          # row indices into SplitStore.pair_ids
    prompt: torch.Tensor      # [B, H] float32
    chosen: torch.Tensor
    rejected: torch.Tensor


class SplitStore:
    def __init__(self, path: Path, pair_ids: list[str], metadata: pa.Table, hidden_size: int):
        self.path = Path(path)
        self.pair_ids = pair_ids
        self.metadata = metadata      # one row per pair, in file order (pair_id first)
        self.hidden_size = hidden_size
        self._moments: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}  # the file never changes

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

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, cache: FeatureCache, split: str, scratch: str | Path, *, seed: int = 0,
              show_progress: bool = False) -> "SplitStore":
        pairs = cache.pairs()
        pairs = pairs.filter(pc.equal(pairs.column("split"), split))
        if pairs.num_rows == 0:
            raise CacheError(f"{cache.path}: split {split!r} has no pairs "
                             f"(pairs by split: {cache.manifest.get('pairs_by_split')})")
        order = np.random.default_rng(seed).permutation(pairs.num_rows)
        pairs = pairs.take(pa.array(order))
        hidden = cache.hidden_size
        path = Path(scratch) / f"{split}.f16"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Where each sequence's states go: seq_id -> [(row, slot)], slot 0 takes the
        # prompt state, slots 1-2 the response state.
        targets: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for slot, column in enumerate(("prompt_state_id", "chosen_id", "rejected_id")):
            for row, sid in enumerate(pairs.column(column).to_pylist()):
                targets[sid].append((row, slot))
        with open(path, "wb") as f:
            f.truncate(pairs.num_rows * 3 * hidden * np.dtype(DTYPE).itemsize)
        found: set[str] = set()
        batches = cache.iter_batches(["seq_id", "response_state", "prompt_state"])
        for shard_path, offset, batch in progress(None, f"reading {split} states", "batch", iterable=batches,
                                                  enabled=show_progress):
            ids = batch.column(0).to_pylist()
            hits = [i for i, sid in enumerate(ids) if sid in targets]
            if not hits:
                continue
            take = pa.array(hits)
            states = {"response_state": arrow_to_vectors(batch.column(1).take(take)),
                      "prompt_state": arrow_to_vectors(batch.column(2).take(take))}
            for name, values in states.items():
                bad = ~np.isfinite(values).all(axis=1)
                if bad.any():
                    i = hits[int(np.flatnonzero(bad)[0])]
                    raise CacheError(f"{shard_path}: row {offset + i} (seq_id {ids[i]}) has NaN or inf in {name}. "
                                     f"Re-run featurize for this cache (the backbone produced non-finite states).")
            rows, slots, sources = [], [], []
            for j, i in enumerate(hits):
                found.add(ids[i])
                for row, slot in targets[ids[i]]:
                    rows.append(row)
                    slots.append(slot)
                    sources.append(j)
            rows_a, slots_a, src_a = np.array(rows), np.array(slots), np.array(sources)
            mm = np.memmap(path, dtype=DTYPE, mode="r+", shape=(pairs.num_rows, 3, hidden))
            is_prompt = slots_a == 0
            mm[rows_a[is_prompt], 0] = states["prompt_state"][src_a[is_prompt]]
            mm[rows_a[~is_prompt], slots_a[~is_prompt]] = states["response_state"][src_a[~is_prompt]]
            mm.flush()
            del mm  # unmap per batch: written pages leave this process's resident set
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed batches otherwise
        missing = set(targets) - found
        if missing:
            raise CacheError(f"{cache.path}: {len(missing)} sequence(s) referenced by {split} pairs are in no "
                             f"shard (e.g. {sorted(missing)[0]}); the cache is incomplete, run `smoe cache info`")
        meta_columns = ["pair_id"] + [c for c in pairs.column_names
                                      if c not in ("pair_id", "split", "chosen_id", "rejected_id", "prompt_state_id")]
        return cls(path, pairs.column("pair_id").to_pylist(), pairs.select(meta_columns), hidden)

    # ------------------------------------------------------------------ reading

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float16 [n, 3, H], read into memory (no mapping)."""
        row_items = 3 * self.hidden_size
        with open(self.path, "rb") as f:
            f.seek(start * row_items * np.dtype(DTYPE).itemsize)
            data = np.fromfile(f, dtype=DTYPE, count=(stop - start) * row_items)
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

    def moments(self, block_pairs: int = 8192, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(prompt mean, prompt std, response mean, response std) over the split. Sums are
        float64; the work is done ``chunk`` rows at a time so memory stays ~one block.
        Computed once per instance: every variant trained on a split standardizes with them."""
        if (block_pairs, chunk) in self._moments:
            return self._moments[(block_pairs, chunk)]
        n = 0
        sums = np.zeros((2, self.hidden_size))
        squares = np.zeros((2, self.hidden_size))
        for _, block in self.blocks(block_pairs):
            for start in range(0, len(block), chunk):
                part = block[start:start + chunk].astype(np.float32)
                prompt, response = part[:, 0], part[:, 1:].reshape(-1, self.hidden_size)
                sums[0] += prompt.sum(0, dtype=np.float64)
                squares[0] += np.einsum("ij,ij->j", prompt, prompt, dtype=np.float64)
                sums[1] += response.sum(0, dtype=np.float64) / 2
                squares[1] += np.einsum("ij,ij->j", response, response, dtype=np.float64) / 2
                n += len(part)
        mean = sums / n
        std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
        self._moments[(block_pairs, chunk)] = (mean[0], std[0], mean[1], std[1])
        return self._moments[(block_pairs, chunk)]
