"""Held-out evaluation of trained heads (paper §5.1, App. A): metrics + per-pair predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import figures, metrics
from pipeline.cache import write_json
from pipeline.models import RewardHead, check_compatible, predict
from pipeline.split_store import SplitStore, SplitStores


def predictions_table(states: SplitStore, weights: np.ndarray, margins: np.ndarray) -> pa.Table:
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


def specialization_metrics(val_weights: np.ndarray, val_categories: np.ndarray | None, weights: np.ndarray,
                           margins: np.ndarray, categories: np.ndarray | None, *, top_n: int = 50,
                           top_m: float = 0.10) -> dict[str, Any]:
    """App. A Eq. 8-13 for one model: experts are labelled from validation (top ``top_n``),
    purity and specialization are measured on test. Without categories only Eq. 12."""
    out: dict[str, Any] = {}
    spec_m, per_m = metrics.topm_specialization(weights, margins, top_m)
    out["expert_specialization_topm"] = spec_m
    experts: dict[str, Any] = {"specialization_topm": per_m,
                               "mean_routing_weight": weights.mean(axis=0).tolist(),
                               "accuracy": metrics.expert_correct(margins).mean(axis=0).tolist()}
    if categories is not None and val_categories is not None:
        assigned = metrics.assign_categories(val_weights, val_categories, top_n)
        purity, per_purity = metrics.expert_purity(weights, categories, assigned, top_n)
        spec, per_spec = metrics.category_specialization(margins, categories, assigned)
        out.update(category_coverage=metrics.category_coverage(assigned, categories),
                   expert_purity=purity, expert_specialization=spec)
        experts.update(category=assigned, purity=per_purity, specialization=per_spec)
    else:
        out["expert_specialization"] = spec_m
    out["experts"] = experts
    return out


def split_specialization(validation: SplitStore, val_weights: np.ndarray, states: SplitStore, weights: np.ndarray,
                         margins: np.ndarray, *, top_n: int = 50, top_m: float = 0.10) -> dict[str, Any]:
    """:func:`specialization_metrics` on two splits' predictions (rows in SplitStore order),
    with categories from the pairs' metadata and rows sorted by pair_id."""
    val_order, order = validation.order_by_pair_id(), states.order_by_pair_id()
    val_c, c = validation.categories(), states.categories()
    return specialization_metrics(val_weights[val_order], None if val_c is None else val_c[val_order],
                                  weights[order], margins[order], None if c is None else c[order],
                                  top_n=top_n, top_m=top_m)


def write_figures(weights: np.ndarray, margins: np.ndarray, categories: np.ndarray | None, out_dir: str | Path,
                  title: str) -> list[Path]:
    """The routing heatmap (mean routing weight, category x expert) and the expert
    correlation matrix of one variant."""
    k = weights.shape[1]
    experts = [f"E{i}" for i in range(k)]
    paths = [figures.heatmap(metrics.correlation_matrix(margins), experts, experts,
                             f"{title}: correlation of expert margins (test)", Path(out_dir) / "expert_correlation.png",
                             vmin=-1, vmax=1, cmap="coolwarm")]
    if categories is not None:
        names = sorted(set(categories.tolist()))
        table = np.stack([weights[categories == c].mean(axis=0) for c in names])
        paths.append(figures.heatmap(table, names, experts, f"{title}: mean routing weight by category (test)",
                                     Path(out_dir) / "routing_by_category.png", vmin=0, vmax=1))
    return paths


def routing_examples(name: str, pair_ids: list[str], weights: np.ndarray, categories: np.ndarray | None,
                     prompts: dict[str, str], per_group: int = 2, seed: int = 0, width: int = 160) -> str:
    """Table 2 of the paper: sample prompts (per category when known) with their routing
    distribution, as markdown."""
    rng = np.random.default_rng(seed)
    groups = sorted(set(categories.tolist())) if categories is not None else ["all"]
    k = weights.shape[1]
    lines = [f"# {name}: routing of sample test prompts", "",
             "| prompt | category | " + " | ".join(f"E{i}" for i in range(k)) + " |",
             "|---|---|" + "---|" * k]
    for group in groups:
        rows = np.flatnonzero(categories == group) if categories is not None else np.arange(len(pair_ids))
        for i in rng.choice(rows, size=min(per_group, len(rows)), replace=False):
            text = " ".join(prompts.get(pair_ids[i], "?").split())
            text = (text[:width] + "...") if len(text) > width else text
            cells = " | ".join(f"**{w:.3f}**" if w == weights[i].max() else f"{w:.3f}" for w in weights[i])
            lines.append(f"| {text.replace('|', '/')} | {group} | {cells} |")
    return "\n".join(lines) + "\n"


def evaluate_variant(stores: SplitStores, model_dir: str | Path, name: str, *, metrics_path: str | Path,
                     predictions_dir: str | Path, figures_dir: str | Path | None = None,
                     prompts: dict[str, str] | None = None,
                     split: str = "test", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score one trained head on ``split``. Writes the key metrics (:func:`metrics.headline`,
    what DVC tracks) to ``metrics_path``; into ``predictions_dir``: every metric including
    the per-expert and per-category tables (``metrics.json``), the per-pair
    ``predictions.parquet`` and, when ``prompts`` (pair_id -> prompt text) is given, the
    sample routings (``examples.md``); figures into ``figures_dir``. Returns all metrics."""
    head = RewardHead.load(model_dir)
    check_compatible(head.config, stores.cache_manifest, f"{model_dir} on {stores.path}")
    states = stores.split(split)
    weights, margins = predict(head, states)
    result = {**metrics.behaviour_metrics(weights, margins), "num_experts": head.num_experts,
              "split": split, "num_pairs": len(states), "variant": name, **(extra or {})}
    predictions_dir = Path(predictions_dir)
    predictions_dir.mkdir(parents=True, exist_ok=True)
    if figures_dir is not None:  # every head: how far its reward separates the pairs it gets right from the rest
        margin = metrics.mixture_margin(weights, margins)
        figures.histogram({"correct": margin[margin > 0], "wrong": margin[margin <= 0]},
                          f"{name}: reward margin r(chosen) - r(rejected) ({split})",
                          Path(figures_dir) / "reward_margins.png", xlabel="reward margin")
    if head.router is not None:  # input-dependent routing (moe); single/hyre have none to analyse
        validation = stores.split("validation")
        val_weights, _ = predict(head, validation)
        result.update(split_specialization(validation, val_weights, states, weights, margins))
        order, c = states.order_by_pair_id(), states.categories()
        w, m, c = weights[order], margins[order], (None if c is None else c[order])
        if c is not None:
            result["per_category"] = metrics.per_category_table(w, m, c)
        if figures_dir is not None:
            write_figures(w, m, c, figures_dir, name)
        if prompts is not None:
            ids = [states.pair_ids[i] for i in order]
            (predictions_dir / "examples.md").write_text(routing_examples(name, ids, w, c, prompts))
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(metrics_path), metrics.headline(result))
    write_json(predictions_dir / "metrics.json", result)
    pq.write_table(predictions_table(states, weights, margins), predictions_dir / "predictions.parquet")
    return result
