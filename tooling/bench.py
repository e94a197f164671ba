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
across responses, length-sorted token-budget batches, overlapped writing. Each mode also
reports its model FLOP utilization where a peak is known (:func:`forward_flops_per_token`,
:func:`peak_flops`).

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


# --------------------------------------------------------------------------- model FLOPs

# Dense (no 2:4 sparsity) bf16/fp16 tensor-core peaks from NVIDIA's data sheets, in TFLOP/s,
# by a fragment of torch.cuda.get_device_name: the first fragment the name contains wins, so
# the specific ones come first ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_TFLOPS_16BIT: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("A100", 312.0))


def gpu_peak_flops(name: str, dtype: torch.dtype) -> float | None:
    """The peak FLOP/s of the GPU called ``name`` at ``dtype``; None when the table has no
    figure (fp32 runs at another peak, TF32 or not, depending on torch's matmul precision)."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    return next((tflops * 1e12 for fragment, tflops in PEAK_TFLOPS_16BIT if fragment in name), None)


def peak_flops(device: str | torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s at ``dtype``: a known GPU's table figure, None on a CPU or
    an unknown GPU (MFU is then not defined)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)


def attended_keys(prefix: int, responses: list[int]) -> int:
    """Query-key pairs one packed row's attention needs (the packing mask's allowed pairs
    between real tokens): the token at position p of its own sequence sees p + 1 keys, and
    positions restart after the prompt for every response. A plain sequence of T tokens:
    ``attended_keys(T, [])`` = T (T + 1) / 2."""
    return prefix * (prefix + 1) // 2 + sum(r * prefix + r * (r + 1) // 2 for r in responses)


def forward_flops_per_token(config: Any, mean_context: float) -> float:
    """Model FLOPs of one token's forward pass through a Llama-family decoder whose tokens
    attend to ``mean_context`` keys on average: 2 N + 4 L d_attn c.

    The MFU convention of PaLM (Chowdhery et al. 2022, App. B: 6 N + 12 L H Q T per trained
    token, of which the forward pass is a third), which extends Kaplan et al. 2020 (Table 1:
    2 N + 2 L n_ctx d_attn, the QK^T scores only) by the scores' product with V: N =
    non-embedding parameters, each one multiply-add (2 FLOPs) per token; QK^T and the
    product with V each cost 2 d_attn FLOPs per (query, key) pair and layer, d_attn =
    heads x head_dim. PaLM's T (the whole context) is replaced by c, the keys a query
    really attends to (about T / 2 causally, less when packed): model FLOPs count what the
    model needs, not masked-out work. N counts the matmul
    weights only (attention q, k, v, o and the gated MLP's gate, up, down): the input
    embedding is a lookup, featurize runs no LM head, and biases and norm scales are
    under 0.1 % of N (Kaplan's sub-leading terms)."""
    d, layers, ff = config.hidden_size, config.num_hidden_layers, getattr(config, "intermediate_size", None)
    if not ff:
        raise ValueError(f"{type(config).__name__} is not a Llama-family decoder config (no intermediate_size)")
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim  # q and o; k and v (grouped)
    params = layers * (attention + 3 * d * ff)
    return 2.0 * params + 4.0 * layers * heads * head_dim * mean_context


def _utilization(backbone: Any, tokens: int, context: int, seconds: float) -> dict[str, Any]:
    """A mode's model FLOPs and MFU (None where not defined: CPU, unknown GPU, encoder)."""
    flops = peak = None
    if backbone.shares_prefix and tokens:
        try:
            flops = tokens * forward_flops_per_token(backbone.model.config, context / tokens)
        except ValueError:
            pass
        peak = peak_flops(backbone.device, backbone.dtype)
    return {"device_type": backbone.device.type, "dtype": str(backbone.dtype).removeprefix("torch."),
            "attention": backbone.config.attention, "mean_context": context / tokens if tokens else None,
            "model_flops": flops, "peak_flops": peak,
            "mfu": flops / seconds / peak if flops is not None and peak else None}


# --------------------------------------------------------------------------- featurize


@torch.inference_mode()
def _featurize_naive(pairs_path: Path, backbone_config: BackboneConfig) -> dict[str, Any]:
    backbone = load(backbone_config)
    rows = pq.read_table(pairs_path).to_pylist()
    start = time.perf_counter()
    tokens = sequences = context = 0
    for row in rows:
        for response in (row["chosen"], row["rejected"]):
            enc = backbone.encode(row["prompt"], response)
            ids = torch.tensor([enc.prefix + enc.response], device=backbone.device)
            hidden = backbone.model(input_ids=ids, use_cache=False).last_hidden_state[0]
            _ = hidden[-1].float().cpu(), hidden[len(enc.prefix) - 1].float().cpu()
            tokens += ids.shape[1]
            context += attended_keys(ids.shape[1], [])
            sequences += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "forward_tokens": tokens, "sequences": sequences, "pairs": len(rows),
            **_utilization(backbone, tokens, context, seconds)}


def _featurize_real(pairs_path: Path, backbone_config: BackboneConfig, config: FeaturizeConfig) -> dict[str, Any]:
    backbone = load(backbone_config)
    computed = {"tokens": 0, "context": 0}
    original = backbone.embed_rows

    def counting(rows, padding_side="right"):
        computed["tokens"] += sum(len(p) + sum(len(r) for r in rs) for p, rs in rows)
        computed["context"] += sum(attended_keys(len(p), [len(r) for r in rs]) for p, rs in rows)
        return original(rows, padding_side=padding_side)

    backbone.embed_rows = counting
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        manifest = featurize(pairs_path, out, backbone, config, show_progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "forward_tokens": computed["tokens"], "sequences": manifest["num_sequences"],
            "pairs": manifest["num_pairs"], **_utilization(backbone, computed["tokens"], computed["context"], seconds)}


def featurize_mode(mode: str, pairs: str, backbone_config: dict[str, Any],
                   featurize_config: dict[str, Any]) -> dict[str, Any]:
    """One mode of the featurize benchmark (run_isolated's entry: plain-data arguments).
    The naive loop always runs sdpa: ArmoRM's loop has one unpadded sequence per forward
    and no custom mask, so SDPA already takes its fastest kernel there."""
    if mode == "naive":
        stats = _featurize_naive(Path(pairs), BackboneConfig(**{**backbone_config, "attention": "sdpa"}))
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
