"""Evaluation metrics (paper §5.1 and App. A), in float64 numpy on held-out predictions.

Inputs share the notation of ``pipeline/losses.py``, as arrays over a split:

    weights  [N, K]  routing weights pi(x) (rows sum to 1)
    margins  [N, K]  Delta_k = r_k(x, y_w) - r_k(x, y_l)

The behaviour metrics reuse the training equations, evaluated on the whole split
instead of one batch, and normalized by log K: 0 = one-hot routing, 1 = uniform.
"""

from __future__ import annotations

import math

import numpy as np


def mixture_margin(weights: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """r(x, y_w) - r(x, y_l) under Eq. 2: the routed mixture of the expert margins."""
    return (weights * margins).sum(axis=1)


def accuracy(margin: np.ndarray) -> float:
    """Share of pairs where the chosen response gets the higher reward. A tie counts as
    wrong: a model that cannot tell two responses apart has not predicted the label."""
    return float(np.mean(np.asarray(margin) > 0))


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def routing_entropy(weights: np.ndarray) -> float:
    """Eq. 4 on a split: mean per-example routing entropy / log K (the "local" entropy)."""
    k = weights.shape[1]
    return float(_entropy(weights).mean() / math.log(k)) if k > 1 else 0.0


def global_entropy(weights: np.ndarray) -> float:
    """Eq. 5 (without its sign) on a split: entropy of the mean routing / log K. Near 0 means
    the router collapsed onto one expert; near 1 means all experts are used."""
    k = weights.shape[1]
    return float(_entropy(weights.mean(axis=0)) / math.log(k)) if k > 1 else 0.0


def correlation_matrix(margins: np.ndarray) -> np.ndarray:
    """Pearson correlations [K, K] between the experts' margins. An expert whose margin is
    constant has no defined correlation: its row and column are NaN."""
    centered = margins - margins.mean(axis=0)
    std = np.sqrt((centered ** 2).mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (centered.T @ centered / len(margins)) / np.outer(std, std)


def expert_correlation(margins: np.ndarray) -> float:
    """Table 1 / Table 8's "expert correlation": the mean Pearson correlation over distinct
    expert pairs (Eq. 6's pairs, unsquared, so that anti-correlated experts show as < 0).
    Pairs involving a constant expert are left out; NaN if none remain."""
    k = margins.shape[1]
    if k < 2:
        return float("nan")
    corr = correlation_matrix(margins)[np.triu_indices(k, 1)]
    corr = corr[np.isfinite(corr)]
    return float(corr.mean()) if len(corr) else float("nan")


def behaviour_metrics(weights: np.ndarray, margins: np.ndarray) -> dict[str, float]:
    """The metrics every variant reports (Table 1 / Table 8 columns)."""
    return {
        "accuracy": accuracy(mixture_margin(weights, margins)),
        "routing_entropy": routing_entropy(weights),
        "global_entropy": global_entropy(weights),
        "expert_correlation": expert_correlation(margins),
    }
