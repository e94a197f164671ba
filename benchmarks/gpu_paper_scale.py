"""GPU check at the paper's scale, with no hub access.

1. featurize: a randomly initialized LlamaForSequenceClassification with GRM-Llama3.2-3B's
   shape (hidden 3072, 28 layers, 24/8 heads; anchors.md) over a prepared dataset, bf16
   on CUDA, with the score-head integrity check on. Random weights cost the same FLOPs as
   the real ones, so throughput is representative; the states are not meaningful.
2. train: `tooling.bench_train` on a synthetic 36K-pair cache at hidden 3072, K = 20, on
   CUDA and on the CPU of the same machine.

Usage (on a GPU machine, from the repo root):
    python benchmarks/gpu_paper_scale.py --prepared data/prepared/categories \
        --tokenizer data/backbone --out results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from pipeline.backbone import BackboneConfig, load
from tooling.bench_train import bench
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.train import TrainConfig


def grm_shaped_model(tokenizer_dir: str, out: Path) -> Path:
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0, tie_word_embeddings=False, num_labels=1,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForSequenceClassification(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepared", default="data/prepared/categories")
    ap.add_argument("--tokenizer", default="data/backbone")
    ap.add_argument("--token-budget", type=int, default=65536)
    ap.add_argument("--out", default="gpu_results.json")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    results: dict = {"device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = grm_shaped_model(args.tokenizer, Path(tmp) / "grm-shaped")
        backbone = load(BackboneConfig(model=str(model_dir), dtype="auto", max_length=2048))
        for budget in (4096, args.token_budget):
            config = FeaturizeConfig(token_budget=budget, integrity_samples=16)
            torch.cuda.synchronize()
            start = time.perf_counter()
            manifest = featurize(Path(args.prepared), Path(tmp) / f"cache-{budget}", backbone, config,
                                 dataset="categories", show_progress=False)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            results[f"featurize_budget_{budget}"] = {
                "seconds": seconds, "sequences": manifest["num_sequences"], "pairs": manifest["num_pairs"],
                "sequences_per_s": manifest["num_sequences"] / seconds, "compute_dtype": manifest.get("compute_dtype"),
                "integrity": manifest.get("integrity"), "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 1e9}
            print(json.dumps(results), flush=True)
        del backbone
        torch.cuda.empty_cache()
    if not args.skip_train:
        for device in ("cuda", "cpu"):
            results[f"train_{device}"] = bench(Path("/tmp/smoe-bench"), num_pairs=36_000, hidden_size=3072, num_experts=20,
                                               config=TrainConfig(epochs=1, device=device), show_progress=False)
            print(json.dumps(results), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
