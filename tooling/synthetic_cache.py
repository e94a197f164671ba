"""A feature cache with known structure, written without a backbone (tests, benchmarks).

Prompts fall into ``num_clusters`` clusters (their prompt states sit around a cluster
centre); each cluster has its own preference direction ``w_c``, and of two random response
states the one with the larger ``w_c . h`` is chosen. A router that finds the clusters and
one expert per direction fits the labels; a single linear head cannot when the directions
conflict. The cache is a normal cache (same schema, manifest and checksums as featurize
writes), so everything downstream reads it unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.cache import (FORMAT_VERSION, MANIFEST, PAIRS, SHARD_DIR, prompt_state_id, sha256_file, vectors_to_arrow,
                           write_json, write_shard)


def _id(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16]


def write_synthetic_cache(out: str | Path, *, num_pairs: int, hidden_size: int, num_clusters: int = 4,
                          split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                          dtype: str = "float16", pairs_per_shard: int | None = None, backbone: str = "synthetic",
                          template_hash: str = "synthetic", nan_at: int | None = None,
                          show_progress: bool = False) -> Path:
    """Write a cache of ``num_pairs`` pairs (2 sequences and 1 prompt each) to ``out``. ``nan_at`` puts a
    NaN into that sequence's response state (to test error reporting)."""
    out = Path(out)
    if pairs_per_shard is None:  # shards of ~256 MiB of vectors, featurize's default shard_max_mb
        pairs_per_shard = max(1, min(50_000, 256 * 2**20 // (3 * hidden_size * np.dtype(dtype).itemsize)))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_clusters, hidden_size)) * 2.0
    directions = rng.normal(size=(num_clusters, hidden_size))
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    cuts = np.cumsum([int(f * num_pairs) for f in split_fractions[:2]])
    pair_rows = {k: [] for k in ("pair_id", "split", "chosen_id", "rejected_id", "prompt_state_id", "category")}
    records = []
    n_shards = -(-num_pairs // pairs_per_shard)
    for shard in tqdm(range(n_shards), desc="synthetic shards", disable=not show_progress):
        lo, hi = shard * pairs_per_shard, min(num_pairs, (shard + 1) * pairs_per_shard)
        n = hi - lo
        cluster = rng.integers(num_clusters, size=n)
        # float32 draws: a 50K-pair shard at hidden 3072 stays ~1 GB in memory
        prompt = centres[cluster].astype(np.float32) + rng.standard_normal((n, hidden_size), dtype=np.float32)
        a = rng.standard_normal((n, hidden_size), dtype=np.float32)
        b = rng.standard_normal((n, hidden_size), dtype=np.float32)
        a_wins = np.einsum("nh,nh->n", directions[cluster].astype(np.float32), a - b) > 0
        chosen, rejected = np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)
        ids_c = [_id(seed, i, "c") for i in range(lo, hi)]
        ids_r = [_id(seed, i, "r") for i in range(lo, hi)]
        ids_p = [prompt_state_id(_id(seed, i, "p").encode()) for i in range(lo, hi)]  # one prompt per pair
        response = np.concatenate([chosen, rejected])
        if nan_at is not None and lo <= nan_at < hi:
            response[nan_at - lo, 0] = np.nan
        table = pa.table({
            "state_id": pa.array(ids_c + ids_r + ids_p),
            "kind": pa.array(["response"] * (2 * n) + ["prompt"] * n),
            "n_tokens": pa.array(np.full(3 * n, 32, dtype=np.int32)),
            "truncated": pa.array(np.zeros(3 * n, dtype=bool)),
            "state": vectors_to_arrow(np.concatenate([response, prompt]), dtype),
        })
        del response, a, b, chosen, rejected
        records.append(write_shard(shard_dir, shard, table, plan_hash="synthetic"))
        for j, i in enumerate(range(lo, hi)):
            pair_rows["pair_id"].append(_id(seed, i, "pair"))
            pair_rows["split"].append("train" if i < cuts[0] else "validation" if i < cuts[1] else "test")
            pair_rows["chosen_id"].append(ids_c[j])
            pair_rows["rejected_id"].append(ids_r[j])
            pair_rows["prompt_state_id"].append(ids_p[j])
            pair_rows["category"].append(f"cluster{cluster[j]}")
    pq.write_table(pa.table(pair_rows), out / PAIRS)
    splits = dict(zip(*np.unique(pair_rows["split"], return_counts=True)))
    manifest = {
        "format_version": FORMAT_VERSION, "backbone": backbone, "revision": "synthetic",
        "hidden_size": hidden_size, "dtype": dtype, "pooling": "last", "template_hash": template_hash,
        "template_params": {"system_prompt": None, "template_date": "26 Jul 2024"},  # BackboneConfig's defaults
        "max_length": 0, "num_sequences": 2 * num_pairs, "num_prompt_states": num_pairs, "num_pairs": num_pairs, "pairs_sha256": sha256_file(out / PAIRS),
        "pairs_by_split": {k: int(v) for k, v in splits.items()},
        "dropped": {"counts": {}, "pairs": [], "prepare": {}}, "truncated": {"count": 0, "seq_ids": []},
        "metadata_columns": ["category"], "dataset": "synthetic",
        "shards": [{"file": r.file, "rows": r.rows, "bytes": r.bytes, "sha256": r.sha256} for r in records],
    }
    for sidecar in shard_dir.glob("*.sha256"):
        sidecar.unlink()
    write_json(out / MANIFEST, manifest)
    return out
