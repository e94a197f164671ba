"""Benchmarks, each against its naive counterpart, measured in the same run.

This module holds what every benchmark shares, and the featurize benchmark itself:

- :func:`run_isolated` runs one benchmark mode in a fresh Python process, so that the
  peak RSS reported for a mode is that mode's own (and a mode cannot warm caches for the
  next one);
- :func:`subset_pairs` cuts the first ``limit`` pairs of a prepared dataset, so that both
  modes of a benchmark see exactly the same pairs;
- :func:`peak_rss_mb` and :func:`machine_label`.

Featurize throughput (:func:`compare`): the real implementation against a naive
ArmoRM-style loop. The naive loop is what ArmoRM's extraction does: for every pair,
format chosen and rejected separately and run each through the model at batch size 1
with no padding, taking the last-token state and the prompt-boundary state from that
pass. It uses the same loaded backbone and the same tokenization as the real path; what
differs is exactly what `featurize` adds: each unique sequence once, prompts shared
across responses, length-sorted token-budget batches, overlapped writing.

The training and sweep benchmarks are in ``tooling/bench_train.py``.
"""

from __future__ import annotations

import importlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
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


def machine_label(device: str = "auto") -> str:
    """What the numbers were measured on, for the printed header and the JSON."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def subset_pairs(prepared: str | Path, limit: int, workdir: str | Path, *, split: str | None = None) -> Path:
    """The first ``limit`` pairs of a prepared dataset (a folder or its pairs.parquet),
    written to ``workdir/pairs.parquet``. ``split`` relabels every pair, e.g. "train" so
    that a training benchmark trains on all of them whatever their original split."""
    prepared = Path(prepared)
    table = pq.read_table(prepared / "pairs.parquet" if prepared.is_dir() else prepared)
    table = table.slice(0, min(limit, table.num_rows))
    if split is not None:
        column = table.schema.get_field_index("split")
        table = table.set_column(column, "split", pa.array([split] * table.num_rows, table.schema.field(column).type))
    out = Path(workdir) / "pairs.parquet"
    pq.write_table(table, out)
    return out


def run_isolated(target: str, **kwargs: Any) -> dict[str, Any]:
    """Call ``target`` ("module:function", returning a JSON-able dict) with JSON-able
    ``kwargs`` in a fresh Python process; return its dict plus that process's
    ``peak_rss_mb``. The child prints its result as the last line of stdout (libraries
    may print before it)."""
    proc = subprocess.run([sys.executable, "-m", "tooling.bench", target, json.dumps(kwargs)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark {target} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- featurize


@torch.inference_mode()
def _featurize_naive(pairs_path: Path, backbone_config: BackboneConfig) -> dict[str, Any]:
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


def _featurize_real(pairs_path: Path, backbone_config: BackboneConfig, config: FeaturizeConfig) -> dict[str, Any]:
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


def featurize_mode(mode: str, pairs: str, backbone_config: dict[str, Any],
                   featurize_config: dict[str, Any]) -> dict[str, Any]:
    """One mode of the featurize benchmark (run_isolated's entry: plain-data arguments)."""
    if mode == "naive":
        stats = _featurize_naive(Path(pairs), BackboneConfig(**backbone_config))
    else:
        stats = _featurize_real(Path(pairs), BackboneConfig(**backbone_config), FeaturizeConfig(**featurize_config))
    stats["mode"] = mode
    stats["pairs_per_s"] = stats["pairs"] / stats["seconds"]
    stats["sequences_per_s"] = stats["sequences"] / stats["seconds"]
    stats["forward_tokens_per_s"] = stats["forward_tokens"] / stats["seconds"]
    return stats


def compare(prepared: str | Path, limit: int, backbone_config: BackboneConfig,
            config: FeaturizeConfig) -> dict[str, Any]:
    """Featurize the same first ``limit`` pairs naively and for real, each in a fresh
    process. Returns ``{"naive": stats, "real": stats, "speedup_wall": naive / real}``."""
    with tempfile.TemporaryDirectory() as tmp:
        pairs_path = subset_pairs(prepared, limit, tmp)
        results: dict[str, Any] = {
            mode: run_isolated("tooling.bench:featurize_mode", mode=mode, pairs=str(pairs_path),
                               backbone_config=vars(backbone_config), featurize_config=vars(config))
            for mode in ("naive", "real")}
    results["speedup_wall"] = results["naive"]["seconds"] / results["real"]["seconds"]
    return results


if __name__ == "__main__":  # run_isolated's child: python -m tooling.bench module:function '{"kwarg": ...}'
    module, function = sys.argv[1].split(":")
    result = getattr(importlib.import_module(module), function)(**json.loads(sys.argv[2]))
    result["peak_rss_mb"] = peak_rss_mb()  # after the work: the mode's own peak
    print(json.dumps(result))
