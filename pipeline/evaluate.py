"""Held-out evaluation of trained heads (paper §5.1, App. A): metrics + per-pair predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import metrics
from pipeline.cache import FeatureCache
from pipeline.models import RewardHead, check_compatible
from pipeline.pair_states import PairStates
from pipeline.train import predict


def predictions_table(states: PairStates, weights: np.ndarray, margins: np.ndarray) -> pa.Table:
    """One row per pair, keyed by ``pair_id`` (join on it, never on row order)."""
    margin = metrics.mixture_margin(weights, margins)
    columns = {
        "pair_id": pa.array(states.pair_ids),
        "routing_weights": pa.array(list(weights.astype(np.float32)), type=pa.list_(pa.float32())),
        "expert_margins": pa.array(list(margins.astype(np.float32)), type=pa.list_(pa.float32())),
        "margin": pa.array(margin.astype(np.float32)),
        "correct": pa.array(margin > 0),
    }
    for name in states.metadata.column_names:
        if name != "pair_id":
            columns[name] = states.metadata.column(name)
    return pa.table(columns)


def evaluate_experiment(cache: FeatureCache, models_dir: str | Path, variants: list[str], *,
                        metrics_dir: str | Path, predictions_dir: str | Path, scratch: str | Path,
                        split: str = "test", extra: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Score every variant on ``split``; write ``<metrics_dir>/<variant>.json`` and
    ``<predictions_dir>/<variant>.parquet``. Returns the metrics."""
    states = PairStates.build(cache, split, scratch)
    results = {}
    for name in variants:
        head = RewardHead.load(Path(models_dir) / name)
        check_compatible(head.config, cache.manifest, f"{Path(models_dir) / name} on {cache.path}")
        weights, margins = predict(head, states)
        result = {**metrics.behaviour_metrics(weights, margins), "num_experts": head.num_experts,
                  "split": split, "num_pairs": len(states), "variant": name, **(extra or {})}
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        Path(predictions_dir).mkdir(parents=True, exist_ok=True)
        (Path(metrics_dir) / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        pq.write_table(predictions_table(states, weights, margins), Path(predictions_dir) / f"{name}.parquet")
        results[name] = result
    return results
