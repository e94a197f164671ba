"""Training benchmarks: training from the cache against training with the backbone in the loop,
one training run (`smoe bench train`) or a lambda sweep (`smoe bench sweep`), and the
synthetic paper-scale memory check (`smoe bench scale`).

Cache against backbone-in-the-loop (:func:`compare`), on the same first ``limit`` pairs of
a prepared dataset (all relabelled "train"), the same sparse head, TrainConfig and seed,
for each of P lambda points (one for `train`, P for `sweep`):

- cached (:func:`from_cache`): what this project does. Featurize the pairs once into a
  temporary cache (the real ``featurize``), build the split stores once into the same
  temporary folder (``build_stores``, as the ``stores`` stage does), then train every
  point with ``train_variant``, each reading only the train split's stored states.
  Wall = featurize + build + training of all points.
- naive (:func:`backbone_in_the_loop`): what MiCRo's public code does. Every training
  step runs the frozen backbone over the batch's chosen and rejected sequences (one padded
  batch of 2B sequences), then the head; a sweep repeats that whole training for every
  point (there is no cache to reuse). Wall = tokenizing the pairs once + the training of
  all points.

Both load the backbone before the clock starts, and each mode runs in its own process so
that its peak RSS is its own. The naive side is, if anything, flattered: see
:func:`_train_in_the_loop`.

The paper-scale check (:func:`bench`) times the sparse variant on a synthetic cache (App.
A: 36K SHP pairs, GRM's hidden size 3072, K = 20 as for preference-700K), in a fresh
process: ``build_s`` (``build_stores``: one pass over the shards into the pair-major
split stores, every split, in a scratch folder), ``pairs_per_s`` (epochs x train pairs
over the training wall time, per-epoch validation included) and ``peak_rss_mb``. The
cache itself is never loaded: only one shard (building) or one block (training) is in
memory at a time.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.backbone import Backbone, BackboneConfig, Encoded, load
from tooling.bench import run_isolated, subset_pairs
from pipeline.cache import FeatureCache
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.models import RewardHead
from pipeline.split_store import build_stores
from tooling.synthetic_cache import write_synthetic_cache
from pipeline.train import TrainConfig, Variant, _param_groups, batch_loss, lr_factor, make_variant, train_variant

PAPER_LAMBDAS = {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}


# --------------------------------------------------------------------------- cache vs naive


def _sparse(hidden_size: int, num_experts: int, lambdas: dict[str, float], config: TrainConfig) -> Variant:
    return make_variant("sparse", hidden_size=hidden_size, num_experts=num_experts, lambdas=lambdas, config=config)


def _backbone_states(backbone: Backbone, batch: list[tuple[Encoded, Encoded]],
                     device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, chosen, rejected) states of a batch of pairs from one padded forward pass
    over its 2B sequences, one per row: chosen ones, then rejected ones, as a reward-model
    trainer concatenates them. The prompt state is read at the prompt boundary of the
    chosen sequence's pass, as the cache reads it (both sequences share that prefix)."""
    rows = [(c.prefix, [c.response]) for c, _ in batch] + [(r.prefix, [r.response]) for _, r in batch]
    prompt, response = backbone.embed_rows(rows)
    n = len(batch)
    # embed_rows runs under inference_mode; autograd may not save inference tensors: clone.
    return prompt[:n].clone().to(device), response[:n].clone().to(device), response[n:].clone().to(device)


def _train_in_the_loop(backbone: Backbone, encoded: list[tuple[Encoded, Encoded]], variant: Variant,
                       config: TrainConfig) -> dict[str, Any]:
    """Train ``variant`` with the backbone in the loop: the smallest loop that does it.

    ``train_variant`` cannot be used as is: it standardizes the head's inputs with
    train-split moments and validates after every epoch, which here would cost one extra
    backbone pass over all pairs, plus one per epoch. MiCRo's loop does neither, so neither
    does this one: the head keeps identity input statistics (the per-step compute is the
    same) and nothing is validated; both only make the naive side faster. Everything else
    is the library's: RewardHead, ``batch_loss`` (the losses of pipeline/losses.py), the
    two learning-rate groups, the seed, and the learning-rate schedule (lr_factor)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = RewardHead(variant.head).to(config.device).train()
    optimizer = torch.optim.AdamW(_param_groups(head, config), weight_decay=config.weight_decay)
    total = math.ceil(len(encoded) / config.batch_size) * config.epochs
    warmup = max(1, round(config.warmup_fraction * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup, config.lr_schedule))
    for _ in range(config.epochs):
        order = rng.permutation(len(encoded))
        for start in range(0, len(order), config.batch_size):
            batch = [encoded[i] for i in order[start:start + config.batch_size]]
            prompt, chosen, rejected = _backbone_states(backbone, batch, config.device)
            loss, _ = batch_loss(head, variant.objective, prompt, chosen, rejected)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return {"steps": total, "final_loss": float(loss)}


def _summary(pairs: int, config: TrainConfig, points: int, once_s: float, point_s: list[float]) -> dict[str, Any]:
    """Totals shared by both modes: ``once_s`` is paid once (naive: tokenizing; cached:
    featurize + split-store build), ``point_s`` is each point's training wall time."""
    train_s = sum(point_s)
    seconds = once_s + train_s
    return {"pairs": pairs, "epochs": config.epochs, "points": points, "point_s": point_s, "train_s": train_s,
            "seconds": seconds, "epoch_s": train_s / (points * config.epochs),
            "pairs_per_s": pairs * config.epochs * points / seconds}


def backbone_in_the_loop(pairs: str, backbone_config: dict[str, Any], train_config: dict[str, Any],
                         num_experts: int, points: list[dict[str, float]]) -> dict[str, Any]:
    """The naive mode (run_isolated's entry): for every lambda point, train the sparse head
    with the backbone run over every batch. Tokenization happens once (a trainer's
    ``dataset.map``); a pair the backbone must drop (the "drop" truncation policy) is
    skipped, as featurize drops it."""
    backbone = load(BackboneConfig(**backbone_config))
    config = TrainConfig(**train_config)
    rows = pq.read_table(pairs).to_pylist()
    start = time.perf_counter()
    encoded = []
    for row in rows:
        try:
            encoded.append((backbone.encode(row["prompt"], row["chosen"]), backbone.encode(row["prompt"], row["rejected"])))
        except ValueError:
            continue
    tokenize_s = time.perf_counter() - start
    point_s, runs = [], []
    for lambdas in points:
        start = time.perf_counter()
        runs.append(_train_in_the_loop(backbone, encoded, _sparse(backbone.hidden_size, num_experts, lambdas, config),
                                       config))
        point_s.append(time.perf_counter() - start)
    return {"mode": "naive", **_summary(len(encoded), config, len(points), tokenize_s, point_s),
            "tokenize_s": tokenize_s, "steps": sum(r["steps"] for r in runs),
            "final_loss": [r["final_loss"] for r in runs]}


def from_cache(pairs: str, backbone_config: dict[str, Any], featurize_config: dict[str, Any],
               train_config: dict[str, Any], num_experts: int, points: list[dict[str, float]]) -> dict[str, Any]:
    """The cached mode (run_isolated's entry): featurize once into a temporary cache,
    build its split stores once, then train every lambda point from the train split."""
    backbone = load(BackboneConfig(**backbone_config))
    config = TrainConfig(**train_config)
    with tempfile.TemporaryDirectory(prefix="smoe-bench-cache-") as tmp:
        start = time.perf_counter()
        featurize(pairs, Path(tmp) / "cache", backbone, FeaturizeConfig(**featurize_config), show_progress=False)
        featurize_s = time.perf_counter() - start
        start = time.perf_counter()
        cache = FeatureCache(Path(tmp) / "cache")
        train = build_stores(cache, Path(tmp) / "stores", seed=config.seed).split("train")
        build_s = time.perf_counter() - start
        point_s, curves = [], []
        for lambdas in points:
            start = time.perf_counter()
            # Every benchmark pair is a train pair, so train_variant's per-epoch validation
            # reads them again: a little work the naive side does not do.
            _, curve = train_variant(_sparse(cache.hidden_size, num_experts, lambdas, config), train, train, config,
                                     show_progress=False)
            point_s.append(time.perf_counter() - start)
            curves.append(curve)
    return {"mode": "cached", **_summary(len(train), config, len(points), featurize_s + build_s, point_s),
            "featurize_s": featurize_s, "build_s": build_s, "steps": sum(c["train"][-1]["step"] for c in curves),
            "final_loss": [c["train"][-1]["loss"] for c in curves]}


def compare(prepared: str | Path, limit: int, backbone_config: BackboneConfig, featurize_config: FeaturizeConfig,
            train_config: TrainConfig, *, num_experts: int, points: list[dict[str, float]]) -> dict[str, Any]:
    """Train the sparse head for every lambda point in ``points`` on the first ``limit``
    pairs of ``prepared``, from the cache and with the backbone in the loop, each mode in a
    fresh process. Returns ``{"naive", "cached", "speedup_wall", "break_even_epochs"}``:
    the wall ratio naive / cached, and the number of trained epochs (over all points) at
    which the cache's one-off cost is paid back by its cheaper epochs."""
    with tempfile.TemporaryDirectory(prefix="smoe-bench-") as tmp:
        pairs = str(subset_pairs(prepared, limit, tmp, split="train"))
        common = dict(pairs=pairs, backbone_config=vars(backbone_config), train_config=vars(train_config),
                      num_experts=num_experts, points=points)
        naive = run_isolated("tooling.bench_train:backbone_in_the_loop", **common)
        cached = run_isolated("tooling.bench_train:from_cache", featurize_config=vars(featurize_config), **common)
    if naive["pairs"] != cached["pairs"]:
        raise RuntimeError(f"the modes trained on different pairs: naive {naive['pairs']}, cached {cached['pairs']}")
    saved_per_epoch = naive["epoch_s"] - cached["epoch_s"]
    extra_once = (cached["featurize_s"] + cached["build_s"]) - naive["tokenize_s"]
    return {"naive": naive, "cached": cached, "speedup_wall": naive["seconds"] / cached["seconds"],
            "break_even_epochs": extra_once / saved_per_epoch if saved_per_epoch > 0 else None}


# --------------------------------------------------------------------------- paper scale


def run(cache_dir: str, num_experts: int, train_config: dict[str, Any]) -> dict[str, Any]:
    """The paper-scale check's training process (run_isolated's entry)."""
    config = TrainConfig(**train_config)
    cache = FeatureCache(cache_dir)
    with tempfile.TemporaryDirectory(prefix="smoe-bench-train-") as scratch:
        start = time.perf_counter()
        stores = build_stores(cache, Path(scratch) / "stores", seed=config.seed)
        train, validation = stores.split("train"), stores.split("validation")
        build_s = time.perf_counter() - start
        variant = _sparse(cache.hidden_size, num_experts, PAPER_LAMBDAS, config)
        start = time.perf_counter()
        _, curves = train_variant(variant, train, validation, config, show_progress=False)
        if config.device.startswith("cuda"):
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start
    return {"train_pairs": len(train), "hidden_size": cache.hidden_size, "num_experts": num_experts,
            "epochs": config.epochs, "batch_size": config.batch_size, "device": config.device,
            "build_s": build_s, "train_s": train_s, "pairs_per_s": len(train) * config.epochs / train_s,
            "steps": curves["train"][-1]["step"], "final_validation": curves["validation"][-1]}


def bench(workdir: str | Path, *, num_pairs: int, hidden_size: int, num_experts: int, config: TrainConfig,
          show_progress: bool = True) -> dict[str, Any]:
    """The paper-scale check: write (or reuse) the synthetic cache under ``workdir``, then
    time training on it in a fresh process."""
    cache_dir = Path(workdir) / f"synthetic-{num_pairs}-{hidden_size}"
    write_s = None
    if not (cache_dir / "manifest.json").exists():
        start = time.perf_counter()
        write_synthetic_cache(cache_dir, num_pairs=num_pairs, hidden_size=hidden_size, num_clusters=num_experts,
                              split_fractions=(0.9, 0.05, 0.05), pairs_per_shard=10_000, show_progress=show_progress)
        write_s = time.perf_counter() - start
    result = run_isolated("tooling.bench_train:run", cache_dir=str(cache_dir), num_experts=num_experts,
                          train_config=vars(config))
    cache_bytes = sum(p.stat().st_size for p in (cache_dir / "shards").glob("*.parquet"))
    return {**result, "cache_pairs": num_pairs, "cache_gb": cache_bytes / 1e9, "write_cache_s": write_s}
