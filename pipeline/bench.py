"""Featurize throughput: the real implementation against a naive ArmoRM-style loop.

The naive loop is what ArmoRM's extraction does: for every pair, format chosen and
rejected separately and run each through the model at batch size 1 with no padding,
taking the last-token state and the prompt-boundary state from that pass. It uses the
same loaded backbone and the same tokenization as the real path; what differs is
exactly what `featurize` adds: each unique sequence once, prompts shared across
responses, length-sorted token-budget batches, overlapped writing.

Each mode runs in its own subprocess on the same prepared pairs so that peak RSS is
that mode's own.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from pipeline.backbone import BackboneConfig, load
from pipeline.featurize import FeaturizeConfig, featurize


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the process's own
    address space; ``ru_maxrss`` is not used because it survives fork+exec, so a child
    started by a big parent (say, one holding a 3B model) would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _subset(prepared: Path, limit: int, workdir: Path) -> Path:
    table = pq.read_table(prepared / "pairs.parquet" if prepared.is_dir() else prepared)
    table = table.slice(0, min(limit, table.num_rows))
    out = workdir / "pairs.parquet"
    pq.write_table(table, out)
    return out


@torch.inference_mode()
def naive(pairs_path: Path, backbone_config: BackboneConfig) -> dict[str, Any]:
    backbone = load(backbone_config)
    rows = pq.read_table(pairs_path).to_pylist()
    start = time.perf_counter()
    tokens = sequences = 0
    for row in rows:
        for response in (row["chosen"], row["rejected"]):
            enc = backbone.encode(row["prompt"], response)
            ids = torch.tensor([enc.prefix + enc.response], device=backbone.device)
            hidden = backbone.model(input_ids=ids, use_cache=False).last_hidden_state[0]
            _ = hidden[-1].float().cpu(), hidden[len(enc.prefix) - 1].float().cpu()
            tokens += ids.shape[1]
            sequences += 1
    return {"seconds": time.perf_counter() - start, "forward_tokens": tokens, "sequences": sequences,
            "pairs": len(rows)}


def real(pairs_path: Path, backbone_config: BackboneConfig, config: FeaturizeConfig) -> dict[str, Any]:
    backbone = load(backbone_config)
    computed = {"tokens": 0}
    original = backbone.embed_rows

    def counting(rows, padding_side="right"):
        computed["tokens"] += sum(len(p) + sum(len(r) for r in rs) for p, rs in rows)
        return original(rows, padding_side=padding_side)

    backbone.embed_rows = counting
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        manifest = featurize(pairs_path, out, backbone, config, show_progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "forward_tokens": computed["tokens"], "sequences": manifest["num_sequences"],
            "pairs": manifest["num_pairs"]}


def run_mode(mode: str, pairs_path: Path, backbone_config: BackboneConfig, config: FeaturizeConfig) -> dict[str, Any]:
    stats = naive(pairs_path, backbone_config) if mode == "naive" else real(pairs_path, backbone_config, config)
    stats["peak_rss_mb"] = peak_rss_mb()
    stats["mode"] = mode
    stats["pairs_per_s"] = stats["pairs"] / stats["seconds"]
    stats["sequences_per_s"] = stats["sequences"] / stats["seconds"]
    stats["forward_tokens_per_s"] = stats["forward_tokens"] / stats["seconds"]
    return stats


def compare(prepared: Path, limit: int, backbone_config: BackboneConfig, config: FeaturizeConfig) -> dict[str, Any]:
    """Run both modes, each in a fresh subprocess, on the same first ``limit`` pairs."""
    with tempfile.TemporaryDirectory() as tmp:
        pairs_path = _subset(Path(prepared), limit, Path(tmp))
        results = {}
        for mode in ("naive", "real"):
            payload = json.dumps({"mode": mode, "pairs": str(pairs_path), "backbone": backbone_config.__dict__,
                                  "featurize": config.__dict__})
            proc = subprocess.run([sys.executable, "-m", "pipeline.bench", payload], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"bench mode {mode} failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    results["speedup_wall"] = results["naive"]["seconds"] / results["real"]["seconds"]
    return results


if __name__ == "__main__":  # subprocess entry: one mode, JSON on the last stdout line
    args = json.loads(sys.argv[1])
    result = run_mode(args["mode"], Path(args["pairs"]), BackboneConfig(**args["backbone"]),
                      FeaturizeConfig(**args["featurize"]))
    print(json.dumps(result))
