"""Training benchmark on a synthetic cache of paper scale (App. A: 36K SHP pairs, GRM's
hidden size 3072, K = 20 as for preference-700K).

Measures, in a fresh subprocess so that peak RSS is the training run's own:
- ``build_s``: one pass over the shards into the pair-major scratch file;
- ``pairs_per_s``: training throughput of the sparse variant (all four loss terms),
  counting epochs x train pairs over the training wall time (per-epoch validation included);
- ``peak_rss_mb``: the process's peak resident memory. The cache itself is never loaded:
  only one shard (building) or one block (training) is in memory at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.bench import peak_rss_mb
from pipeline.cache import FeatureCache
from pipeline.pair_states import PairStates
from pipeline.synthetic import write_synthetic_cache
from pipeline.train import TrainConfig, make_variant, train_variant

PAPER_LAMBDAS = {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}


def run(cache_dir: Path, num_experts: int, config: TrainConfig) -> dict[str, Any]:
    cache = FeatureCache(cache_dir)
    with tempfile.TemporaryDirectory(prefix="smoe-bench-train-") as scratch:
        start = time.perf_counter()
        train = PairStates.build(cache, "train", scratch, seed=config.seed)
        validation = PairStates.build(cache, "validation", scratch, seed=config.seed)
        build_s = time.perf_counter() - start
        variant = make_variant("sparse", hidden_size=cache.hidden_size, num_experts=num_experts,
                               lambdas=PAPER_LAMBDAS, config=config)
        start = time.perf_counter()
        _, curves = train_variant(variant, train, validation, config, show_progress=False)
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
    return {"train_pairs": len(train), "hidden_size": cache.hidden_size, "num_experts": num_experts,
            "epochs": config.epochs, "batch_size": config.batch_size, "device": config.device,
            "build_s": build_s, "train_s": train_s, "pairs_per_s": len(train) * config.epochs / train_s,
            "steps": curves["train"][-1]["step"], "final_validation": curves["validation"][-1],
            "peak_rss_mb": peak_rss_mb()}


def bench(workdir: Path, *, num_pairs: int, hidden_size: int, num_experts: int, config: TrainConfig,
          show_progress: bool = True) -> dict[str, Any]:
    """Write (or reuse) the synthetic cache under ``workdir``, then time training on it."""
    cache_dir = Path(workdir) / f"synthetic-{num_pairs}-{hidden_size}"
    write_s = None
    if not (cache_dir / "manifest.json").exists():
        start = time.perf_counter()
        write_synthetic_cache(cache_dir, num_pairs=num_pairs, hidden_size=hidden_size, num_clusters=num_experts,
                              split_fractions=(0.9, 0.05, 0.05), pairs_per_shard=10_000, show_progress=show_progress)
        write_s = time.perf_counter() - start
    payload = json.dumps({"cache": str(cache_dir), "num_experts": num_experts, "config": vars(config)})
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench_train", payload], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training benchmark failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cache_bytes = sum(p.stat().st_size for p in (cache_dir / "shards").glob("*.parquet"))
    return {**result, "cache_pairs": num_pairs, "cache_gb": cache_bytes / 1e9, "write_cache_s": write_s}


if __name__ == "__main__":  # subprocess entry: JSON on the last stdout line
    args = json.loads(sys.argv[1])
    print(json.dumps(run(Path(args["cache"]), args["num_experts"], TrainConfig(**args["config"]))))
