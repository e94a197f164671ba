"""Attribute steering by routing-weight intervention (paper §5.2, App. A Eq. 14-18, App. E).

For each attribute a, the target expert k_a is picked on the validation split (whose
prompts still carry the attribute's criterion): the expert whose top-100 examples hold the
largest share of a. On the test split (bare prompts) the router's weights are replaced by
pi-tilde^(k_a, w) for w in {0.25, 0.5, 0.75, 1.0}; the flip rate is the share of the pairs
misclassified at w = 0 that steering makes right, the undesired flip rate the share of the
pairs right at w = 0 that it makes wrong. The random baseline steers the sparse model
towards uniformly drawn experts instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import figures, metrics
from pipeline.cache import FeatureCache, write_json
from pipeline.models import RewardHead, check_compatible
from pipeline.pair_states import PairStates
from pipeline.train import predict

STEER_WEIGHTS = (0.25, 0.5, 0.75, 1.0)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def steer_attributes(weights: np.ndarray, margins: np.ndarray, labels: np.ndarray, targets: dict[str, int],
                     steer_weights: tuple[float, ...] = STEER_WEIGHTS) -> dict[str, dict[str, Any]]:
    """Per attribute: FR(a, w) and UFR(a, w) for each w (Eq. 15, 18), on the test pairs
    labelled with a (``labels``), steering towards ``targets[a]``."""
    out = {}
    for attribute, expert in targets.items():
        mask = labels == attribute
        if not mask.any():
            continue
        w_a, m_a = weights[mask], margins[mask]
        removed = metrics.mixture_margin(metrics.steered_weights(w_a, expert, 0.0), m_a) > 0
        fr, ufr = {}, {}
        for w in steer_weights:
            steered = metrics.mixture_margin(metrics.steered_weights(w_a, expert, w), m_a) > 0
            fr[str(w)] = metrics.flip_rate(removed, steered)
            ufr[str(w)] = metrics.undesired_flip_rate(removed, steered)
        out[attribute] = {"target_expert": expert, "num_pairs": int(mask.sum()),
                          "num_wrong_removed": int((~removed).sum()),
                          "flip_rate": _nanmean(list(fr.values())), "flip_rate_by_weight": fr,
                          "undesired_flip_rate": _nanmean(list(ufr.values())), "undesired_flip_rate_by_weight": ufr}
    return out


def summarize(per_attribute: dict[str, dict[str, Any]], steer_weights: tuple[float, ...] = STEER_WEIGHTS) -> dict[str, Any]:
    """Eq. 16: the flip rate averaged over attributes and weights, plus the per-weight curve
    (averaged over attributes) and the same for the undesired flip rate."""
    rows = list(per_attribute.values())
    return {
        "flip_rate": _nanmean([r["flip_rate_by_weight"][str(w)] for r in rows for w in steer_weights]),
        "flip_rate_by_weight": {str(w): _nanmean([r["flip_rate_by_weight"][str(w)] for r in rows]) for w in steer_weights},
        "undesired_flip_rate": _nanmean([r["undesired_flip_rate_by_weight"][str(w)] for r in rows for w in steer_weights]),
        "undesired_flip_rate_by_weight": {str(w): _nanmean([r["undesired_flip_rate_by_weight"][str(w)] for r in rows])
                                          for w in steer_weights},
        "per_attribute": per_attribute,
    }


def random_baseline(weights: np.ndarray, margins: np.ndarray, labels: np.ndarray, repeats: int, seed: int,
                    steer_weights: tuple[float, ...] = STEER_WEIGHTS) -> dict[str, dict[str, Any]]:
    """Steering towards a uniformly drawn expert per attribute, averaged over ``repeats`` draws."""
    rng = np.random.default_rng(seed)
    attributes = sorted(set(labels.tolist()))
    runs = [steer_attributes(weights, margins, labels,
                             {a: int(rng.integers(weights.shape[1])) for a in attributes}, steer_weights)
            for _ in range(repeats)]
    out = {}
    for a in attributes:
        draws = [run[a] for run in runs]
        out[a] = {"target_expert": None, "num_pairs": draws[0]["num_pairs"],
                  "num_wrong_removed": float(np.mean([d["num_wrong_removed"] for d in draws]))}
        for key in ("flip_rate_by_weight", "undesired_flip_rate_by_weight"):
            out[a][key] = {str(w): _nanmean([d[key][str(w)] for d in draws]) for w in steer_weights}
        out[a]["flip_rate"] = _nanmean(list(out[a]["flip_rate_by_weight"].values()))
        out[a]["undesired_flip_rate"] = _nanmean(list(out[a]["undesired_flip_rate_by_weight"].values()))
    return out


def paired_t_test(reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Paired t-test across attributes on the per-attribute flip rate (App. A), reference
    minus other. Attributes where either flip rate is undefined are left out."""
    from scipy import stats  # scipy comes with scikit-learn; imported here, on first use

    shared = [a for a in reference if a in other and not math.isnan(reference[a]["flip_rate"])
              and not math.isnan(other[a]["flip_rate"])]
    x = np.array([reference[a]["flip_rate"] for a in shared])
    y = np.array([other[a]["flip_rate"] for a in shared])
    if len(shared) < 2 or np.allclose(x - y, (x - y)[0]):
        return {"t": math.nan, "p_value": math.nan, "mean_difference": float(np.mean(x - y)) if shared else math.nan,
                "num_attributes": len(shared)}
    result = stats.ttest_rel(x, y)
    return {"t": float(result.statistic), "p_value": float(result.pvalue), "mean_difference": float(np.mean(x - y)),
            "num_attributes": len(shared)}


def headline(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The key numbers per model, for the DVC metrics file (a `dvc exp show` column each):
    flip rate and undesired flip rate (Eq. 16, 18), the flip rate at the largest weight, and
    the paired t-test's p-value against the reference model."""
    out = {}
    for name, r in results.items():
        if name == "settings":
            continue
        by_weight = r.get("flip_rate_by_weight") or {}
        row = {"flip_rate": r.get("flip_rate"), "undesired_flip_rate": r.get("undesired_flip_rate"),
               "flip_rate_at_max_weight": by_weight[max(by_weight, key=float)] if by_weight else None}
        for key, test in r.items():
            if key.startswith("t_test_vs_"):
                row["p_value_vs_" + key.removeprefix("t_test_vs_")] = test.get("p_value")
        out[name] = metrics.headline(row, tuple(row))
    return out


def steer_experiment(cache: FeatureCache, models_dir: str | Path, variants: list[str], *, out_path: str | Path,
                     figures_dir: str | Path | None, scratch: str | Path, metrics_path: str | Path | None = None,
                     label: str = "attribute", reference: str = "sparse", top_n: int = 100,
                     steer_weights: tuple[float, ...] = STEER_WEIGHTS, random_repeats: int = 20,
                     seed: int = 0) -> dict[str, Any]:
    """Steer every variant (MoE heads only) and the random baseline; write every result to
    ``out_path`` (JSON), the key numbers (:func:`headline`) to ``metrics_path`` and the
    Fig. 2 / Fig. 7 curves. Returns the results."""
    validation = PairStates.build(cache, "validation", scratch)
    test = PairStates.build(cache, "test", scratch)
    for states, split in ((validation, "validation"), (test, "test")):
        if label not in states.metadata.column_names or None in states.metadata.column(label).to_pylist():
            raise ValueError(f"{cache.path}: every {split} pair needs a {label!r} label to steer by; "
                             f"columns: {states.metadata.column_names}")
    val_labels = np.array(validation.metadata.column(label).to_pylist())
    labels = np.array(test.metadata.column(label).to_pylist())
    val_order, order = validation.order_by_pair_id(), test.order_by_pair_id()
    results: dict[str, Any] = {}
    for name in variants:
        head = RewardHead.load(Path(models_dir) / name)
        check_compatible(head.config, cache.manifest, f"{Path(models_dir) / name} on {cache.path}")
        if head.router is None:
            raise ValueError(f"{name}: steering intervenes on routing weights; this head has no router")
        val_weights, _ = predict(head, validation)
        weights, margins = predict(head, test)
        targets = metrics.target_experts(val_weights[val_order], val_labels[val_order], top_n)
        per_attribute = steer_attributes(weights[order], margins[order], labels[order], targets, steer_weights)
        results[name] = summarize(per_attribute, steer_weights)
        if name == reference:
            results["random"] = summarize(random_baseline(weights[order], margins[order], labels[order],
                                                          random_repeats, seed, steer_weights), steer_weights)
    if reference in results:
        for name in results:
            if name != reference:
                results[name]["t_test_vs_" + reference] = paired_t_test(results[reference]["per_attribute"],
                                                                        results[name]["per_attribute"])
    results["settings"] = {"label": label, "top_n": top_n, "steer_weights": list(steer_weights),
                           "random_repeats": random_repeats, "seed": seed, "reference": reference}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, sort_keys=True, allow_nan=True) + "\n")
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(metrics_path), headline(results))
    if figures_dir is not None:
        write_steering_figures(results, steer_weights, figures_dir)
    return results


def write_steering_figures(results: dict[str, Any], steer_weights: tuple[float, ...], out_dir: str | Path) -> list[Path]:
    """Fig. 2 (flip rate against w) and Fig. 7 (undesired flip rate against w), as PNG and
    as CSV (one column per model) for `dvc plots`."""
    models = [m for m in results if m != "settings"]
    paths = []
    for key, title, name in (("flip_rate_by_weight", "Flip rate vs target-expert weight (Fig. 2)", "flip_rate"),
                             ("undesired_flip_rate_by_weight", "Undesired flip rate vs weight (Fig. 7)",
                              "undesired_flip_rate")):
        series = {m: [results[m][key][str(w)] for w in steer_weights] for m in models}
        paths.append(figures.line_plot(list(steer_weights), series, title, Path(out_dir) / f"{name}.png",
                                       xlabel="target expert weight w", ylabel=name.replace("_", " "), ylim=(0, 1)))
        lines = ["weight," + ",".join(models)]
        lines += [f"{w}," + ",".join(f"{series[m][i]:.6f}" for m in models) for i, w in enumerate(steer_weights)]
        (Path(out_dir) / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return paths
