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


# ----------------------------------------------------------------------------- App. A, Eq. 8-13
#
# Ties. Examples are ranked by an expert's routing weight with a stable sort, so equal
# weights keep the order of the arrays passed in (the callers pass pairs sorted by
# pair_id, which makes the choice reproducible). A majority vote that ties goes to the
# category with the larger total routing weight among the voters, then to the first
# name in sorted order.


def top_examples(weights: np.ndarray, expert: int, n: int) -> np.ndarray:
    """Indices of the ``n`` examples with the largest pi_k(x) (all of them if fewer)."""
    return np.argsort(-weights[:, expert], kind="stable")[:n]


def assign_categories(weights: np.ndarray, categories: np.ndarray, top_n: int = 50) -> list[str]:
    """c_hat_k: the majority category among expert k's top-``top_n`` examples (paper: 50
    validation examples). Every expert gets a label, also one that is never the top choice."""
    labels = []
    for k in range(weights.shape[1]):
        top = top_examples(weights, k, top_n)
        names, counts = np.unique(categories[top], return_counts=True)
        mass = np.array([weights[top, k][categories[top] == c].sum() for c in names])
        best = max(range(len(names)), key=lambda i: (counts[i], mass[i], -i))
        labels.append(str(names[best]))
    return labels


def category_coverage(assigned: list[str], categories: list[str] | np.ndarray) -> float:
    """Eq. 8: the share of ground-truth categories that at least one expert is assigned to."""
    universe = set(np.asarray(categories).tolist())
    return len(universe & set(assigned)) / len(universe)


def expert_purity(weights: np.ndarray, categories: np.ndarray, assigned: list[str],
                  top_n: int = 50) -> tuple[float, list[float]]:
    """Eq. 9-10: per expert, the share of its top-``top_n`` test examples whose category is
    its assigned one; and the mean over experts."""
    per_expert = [float(np.mean(categories[top_examples(weights, k, top_n)] == assigned[k]))
                  for k in range(weights.shape[1])]
    return float(np.mean(per_expert)), per_expert


def expert_correct(margins: np.ndarray) -> np.ndarray:
    """[N, K] booleans: does expert k alone rank the pair right (Delta_k > 0)?"""
    return margins > 0


def category_specialization(margins: np.ndarray, categories: np.ndarray,
                            assigned: list[str]) -> tuple[float, list[float]]:
    """Eq. 11 and 13: Spec_k = Acc_k(D_{c_hat_k}) - mean_j Acc_j(D_{c_hat_k}); mean over k."""
    correct = expert_correct(margins)
    per_expert = []
    for k, category in enumerate(assigned):
        acc = correct[categories == category].mean(axis=0)  # Acc_j(D_c) for every j
        per_expert.append(float(acc[k] - acc.mean()))
    return float(np.mean(per_expert)), per_expert


def topm_specialization(weights: np.ndarray, margins: np.ndarray, m: float = 0.10) -> tuple[float, list[float]]:
    """Eq. 12-13, for data without categories: on T_k, the top ``m`` share of examples by
    pi_k(x) (at least one), Spec_k = Acc_k(T_k) - mean_j Acc_j(T_k); mean over k."""
    correct = expert_correct(margins)
    n = max(1, int(round(m * len(weights))))
    per_expert = []
    for k in range(weights.shape[1]):
        acc = correct[top_examples(weights, k, n)].mean(axis=0)
        per_expert.append(float(acc[k] - acc.mean()))
    return float(np.mean(per_expert)), per_expert


def per_category_table(weights: np.ndarray, margins: np.ndarray, categories: np.ndarray) -> dict[str, dict]:
    """Tables 9 and 10: per category, the behaviour metrics on its examples, each expert's
    mean routing weight and each expert's own accuracy there."""
    table = {}
    for category in sorted(set(categories.tolist())):
        mask = categories == category
        table[category] = {
            **behaviour_metrics(weights[mask], margins[mask]), "num_pairs": int(mask.sum()),
            "expert_routing_weight": weights[mask].mean(axis=0).tolist(),
            "expert_accuracy": expert_correct(margins[mask]).mean(axis=0).tolist(),
        }
    return table


# ---------------------------------------------------------------------------------------
# Attribute steering (§5.2, App. A Eq. 14-18)
# ---------------------------------------------------------------------------------------


def target_experts(weights: np.ndarray, labels: np.ndarray, top_n: int) -> dict[str, int]:
    """Per label (attribute), k_a: the expert whose top-``top_n`` examples (paper: 100
    validation examples) hold the largest share of that label. A tie goes to the lower
    expert index."""
    shares = np.stack([np.array([np.mean(labels[top_examples(weights, k, top_n)] == a)
                                 for a in sorted(set(labels.tolist()))])
                       for k in range(weights.shape[1])], axis=1)  # [A, K]
    return {a: int(np.argmax(row)) for a, row in zip(sorted(set(labels.tolist())), shares)}


def steered_weights(weights: np.ndarray, expert: int, w: float) -> np.ndarray:
    """pi-tilde^(k, w): expert ``expert`` gets weight ``w`` and the others are rescaled to sum
    to 1 - w. Where the router put all its mass on ``expert`` the others share 1 - w equally."""
    k = weights.shape[1]
    others = np.array(weights, dtype=np.float64)
    others[:, expert] = 0.0
    total = others.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(total > 0, others / total, 1.0 / (k - 1))
    rest[:, expert] = 0.0
    out = (1.0 - w) * rest
    out[:, expert] = w
    return out


def flip_rate(correct_removed: np.ndarray, correct_steered: np.ndarray) -> float:
    """Eq. 14-15: among the examples misclassified with the target expert removed (w = 0),
    the share classified correctly after steering. NaN when there are none."""
    wrong = ~np.asarray(correct_removed, dtype=bool)
    return float(np.mean(np.asarray(correct_steered, dtype=bool)[wrong])) if wrong.any() else math.nan


def undesired_flip_rate(correct_removed: np.ndarray, correct_steered: np.ndarray) -> float:
    """Eq. 17-18: among the examples correct with the target expert removed, the share that
    steering makes wrong. NaN when there are none."""
    right = np.asarray(correct_removed, dtype=bool)
    return float(np.mean(~np.asarray(correct_steered, dtype=bool)[right])) if right.any() else math.nan


# ---- what DVC tracks as metrics

# The columns `dvc exp show` gets per evaluated head: every scalar metric, under the paper's
# names (Table 1 and Table 4). The nested per-expert and per-category tables go to the
# details file instead: DVC flattens nested metrics into one column per leaf, and hundreds
# of columns would bury these.
KEY_METRICS = ("accuracy", "routing_entropy", "global_entropy", "expert_correlation", "category_coverage",
               "expert_purity", "expert_specialization", "expert_specialization_topm", "description_fidelity",
               "description_fidelity_random")


def headline(result: dict, keys: tuple[str, ...] = KEY_METRICS) -> dict[str, float]:
    """The finite numbers among ``result[keys]``, for a DVC metrics file (one column each in
    `dvc exp show`). Keys a head lacks (no router, no categories) or that are NaN (one
    expert has no correlation) are left out rather than shown as empty columns."""
    return {k: float(result[k]) for k in keys
            if isinstance(result.get(k), (int, float)) and not isinstance(result.get(k), bool) and math.isfinite(result[k])}


# ---------------------------------------------------------------------------------------
# Steering aggregates (§5.2, App. A Eq. 16): the flip rate over attributes and weights, and
# the paired t-test that compares two models' flip rates across attributes
# ---------------------------------------------------------------------------------------


def average_flip_rate(rates) -> float:
    """Eq. 16: FR-bar = 1 / (|A| |W|) sum_a sum_w FR(a, w), the flip rate averaged over
    attributes a and target weights w. ``rates`` holds FR(a, w) values in any shape (a
    [A, W] grid; one attribute's row; one weight's column for the per-weight curve). An
    undefined FR(a, w) (NaN: no pair of a misclassified at w = 0, Eq. 15) is left out; NaN
    if none is defined. The undesired flip rate (Eq. 18) is averaged the same way."""
    values = np.asarray(rates, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def paired_t_test(reference: dict, other: dict) -> dict[str, float]:
    """Paired t-test across attributes on the per-attribute flip rate (App. A), reference
    minus other; ``reference`` and ``other`` map attribute -> {"flip_rate": FR(a)}.
    Attributes where either flip rate is undefined are left out; t and p are NaN when fewer
    than two remain or the differences are all equal (no variance to test)."""
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


# ---------------------------------------------------------------------------------------
# Description fidelity (§6.1, App. A Eq. 19-20): which examples a judge sees, and how its
# verdicts z_k(x) in {0, 1} are scored against the routing weights pi_k(x)
# ---------------------------------------------------------------------------------------


def stratified_sample(weights_k: np.ndarray, per_stratum: int, top_fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """App. A's sample of the examples judged for one expert (Eq. 19): (indices drawn from
    the top ``top_fraction`` of examples by pi_k, indices drawn from the rest), each sorted,
    ``per_stratum`` each without replacement (paper: 100 from the top 10 %, 100 from the
    other 90 %), or the whole stratum when it is smaller (a small test split is used in
    full). Without the top stratum a random sample would hold few examples the expert
    fires on, and the correlation would measure little. The top stratum has
    ``max(1, round(top_fraction * N))`` examples, the size :func:`topm_specialization`
    uses; ties keep the input order."""
    if per_stratum < 1 or not 0 < top_fraction < 1:
        raise ValueError(f"need per_stratum >= 1 and 0 < top_fraction < 1, got {per_stratum}, {top_fraction}")
    n = len(weights_k)
    ranked = top_examples(np.asarray(weights_k).reshape(-1, 1), 0, n)
    n_top = min(n, max(1, int(round(top_fraction * n))))

    def draw(pool: np.ndarray) -> np.ndarray:
        if len(pool) <= per_stratum:
            return np.sort(pool)
        return np.sort(rng.choice(pool, size=per_stratum, replace=False))

    return draw(ranked[:n_top]), draw(ranked[n_top:])


def pearson_or_zero(z: np.ndarray, pi: np.ndarray) -> float:
    """Eq. 19's correlation corr(z, pi). If z or pi is constant over the sample (a judge that
    says YES to everything, a router that weights every sampled example alike) the
    correlation is undefined; it is taken as 0: the description then tells nothing about
    the routing."""
    z, pi = np.asarray(z, dtype=np.float64), np.asarray(pi, dtype=np.float64)
    if len(z) < 2 or z.std() < 1e-12 or pi.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(z, pi)[0, 1])


def description_fidelity(judgments: list[np.ndarray], weights: list[np.ndarray]) -> tuple[float, list[float]]:
    """Eq. 19-20: per expert k, DF_k = corr(z_k(x), pi_k(x)) over its judged examples
    (:func:`pearson_or_zero`), where ``judgments[k]`` and ``weights[k]`` are z_k and pi_k on
    the same examples in the same order; and DF = mean_k DF_k (NaN without experts). The
    random baseline is the same statistic with each z_k shuffled against its pi_k."""
    if len(judgments) != len(weights):
        raise ValueError(f"{len(judgments)} experts' judgments but {len(weights)} experts' weights")
    per_expert = []
    for k, (z, pi) in enumerate(zip(judgments, weights)):
        if len(z) != len(pi):
            raise ValueError(f"expert {k}: {len(z)} judgments for {len(pi)} routing weights")
        per_expert.append(pearson_or_zero(z, pi))
    return (float(np.mean(per_expert)) if per_expert else math.nan), per_expert
