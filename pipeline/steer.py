"""Attribute steering by routing-weight intervention (paper §5.2, App. A Eq. 14-18, App. E).

For each attribute a, the target expert k_a is picked on the validation split (whose
prompts still carry the attribute's criterion): the expert whose top-100 examples hold the
largest share of a. On the test split (bare prompts) the router's weights are replaced by
pi-tilde^(k_a, w) for w in {0.25, 0.5, 0.75, 1.0}; the flip rate is the share of the pairs
misclassified at w = 0 that steering makes right, the undesired flip rate the share of the
pairs right at w = 0 that it makes wrong. The random baseline steers the sparse model
towards uniformly drawn experts instead.

One head at a time (:func:`steer_variant`): a change to one head reruns only its own
steering. What compares heads -- the paired t-tests across attributes, Fig. 2 and 7 over
all models -- is the report's (:mod:`pipeline.report`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from annotated_types import Ge, Interval, Len

import numpy as np

from pipeline import metrics
from pipeline.errors import UserError
from pipeline.models import RewardHead, check_compatible, predict
from pipeline.split_store import SplitStore, SplitStores

# Heads with an input-dependent router: steering replaces its weights, so only these steer.
STEERABLE = ("vanilla", "micro", "sparse")
# The head whose steering gets the random-expert baseline, and that the report's t-tests
# compare every other model with (the paper's model).
REFERENCE = "sparse"
RANDOM = "random"


@dataclass
class SteerConfig:
    label: Annotated[str, Len(1)] = "attribute"  # pair column naming the attribute a test pair is labelled under
    # validation examples per expert used to pick each attribute's target (paper: 100)
    top_n: Annotated[int, Ge(1)] = 100
    weights: Annotated[list[Annotated[float, Interval(gt=0, le=1)]], Len(1)] = field(  # target-expert weights w
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    random_repeats: Annotated[int, Ge(1)] = 20  # random-target baseline: draws averaged
    seed: int = 0                # of the random baseline's draws
    min_pairs: Annotated[int, Ge(1)] = 51          # the paper's filter: attributes with more than 50 test pairs

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"label must be a non-empty column name, got {self.label!r}")
        for name in ("top_n", "random_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.min_pairs, bool) or not isinstance(self.min_pairs, int) or self.min_pairs < 1:
            raise ValueError(f"min_pairs must be an integer >= 1, got {self.min_pairs!r}")
        if not isinstance(self.weights, (list, tuple)) or not self.weights:
            raise ValueError(f"weights must be a non-empty list of numbers in (0, 1], got {self.weights!r}")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1 for w in self.weights):
            raise ValueError(f"weights must be numbers in (0, 1] (w = 0 is the removed-expert reference), "
                             f"got {self.weights!r}")
        if len(set(map(float, self.weights))) != len(self.weights):
            raise ValueError(f"weights must not repeat, got {self.weights!r}")
        # floats, in order: "1.0" (not "1") is the key of w = 1 in every result
        self.weights = sorted(float(w) for w in self.weights)


class SteerError(UserError, ValueError):
    """A head that cannot be steered, or test pairs without the steering label."""


class SteerOutput(NamedTuple):
    results: dict[str, Any]       # every result: {variant: ..., ["random": ...,] "settings": ...}
    key_metrics: dict[str, float]  # flat key numbers, the DVC metrics file
    curve_csv: str                 # the per-weight curves, for `dvc plots`


def steer_attributes(weights: np.ndarray, margins: np.ndarray, labels: np.ndarray, targets: dict[str, int],
                     steer_weights: list[float]) -> dict[str, dict[str, Any]]:
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
                          "flip_rate": metrics.average_flip_rate(list(fr.values())), "flip_rate_by_weight": fr,
                          "undesired_flip_rate": metrics.average_flip_rate(list(ufr.values())),
                          "undesired_flip_rate_by_weight": ufr}
    return out


def summarize(per_attribute: dict[str, dict[str, Any]], steer_weights: list[float]) -> dict[str, Any]:
    """Eq. 16 (:func:`metrics.average_flip_rate`): the flip rate averaged over attributes
    and weights, plus the per-weight curve (averaged over attributes) and the same for the
    undesired flip rate."""
    rows = list(per_attribute.values())
    out: dict[str, Any] = {}
    for key in ("flip_rate", "undesired_flip_rate"):
        by_weight = [[r[key + "_by_weight"][str(w)] for w in steer_weights] for r in rows]  # [A, W]
        out[key] = metrics.average_flip_rate(by_weight)
        out[key + "_by_weight"] = {str(w): metrics.average_flip_rate([row[i] for row in by_weight])
                                   for i, w in enumerate(steer_weights)}
    out["per_attribute"] = per_attribute
    return out


def random_baseline(weights: np.ndarray, margins: np.ndarray, labels: np.ndarray,
                    config: SteerConfig) -> dict[str, dict[str, Any]]:
    """Steering towards a uniformly drawn expert per attribute, averaged over
    ``config.random_repeats`` draws seeded by ``config.seed``."""
    rng = np.random.default_rng(config.seed)
    attributes = sorted(set(labels.tolist()))
    runs = [steer_attributes(weights, margins, labels,
                             {a: int(rng.integers(weights.shape[1])) for a in attributes}, config.weights)
            for _ in range(config.random_repeats)]
    out = {}
    for a in attributes:
        draws = [run[a] for run in runs]
        out[a] = {"target_expert": None, "num_pairs": draws[0]["num_pairs"],
                  "num_wrong_removed": float(np.mean([d["num_wrong_removed"] for d in draws]))}
        for key in ("flip_rate", "undesired_flip_rate"):
            out[a][key + "_by_weight"] = {str(w): metrics.average_flip_rate([d[key + "_by_weight"][str(w)] for d in draws])
                                          for w in config.weights}
            out[a][key] = metrics.average_flip_rate(list(out[a][key + "_by_weight"].values()))
    return out


def _labels(states: SplitStore, label: str, split: str, where: str) -> np.ndarray:
    if label not in states.metadata.column_names or None in states.metadata.column(label).to_pylist():
        raise SteerError(f"{where}: every {split} pair needs a {label!r} label to steer by; "
                         f"columns: {states.metadata.column_names}")
    return np.array(states.metadata.column(label).to_pylist())


def steer_variant(stores: SplitStores, model_dir: str | Path, variant: str, config: SteerConfig) -> SteerOutput:
    """Steer one head (vanilla, micro or sparse) on the cache's test pairs, with the random
    baseline when it is the :data:`REFERENCE` head. Writes nothing; returns every result,
    the key numbers (:func:`headline`) and the per-weight curves (:func:`curve_csv`)."""
    if variant not in STEERABLE:
        raise SteerError(f"{variant!r} cannot be steered: steering intervenes on routing weights and only "
                         f"{', '.join(STEERABLE)} have a router")
    head = RewardHead.load(model_dir)
    check_compatible(head.config, stores.cache_manifest, f"{model_dir} on {stores.path}")
    if head.router is None:
        raise SteerError(f"{model_dir}: steering intervenes on routing weights; this head has no router")
    validation, test = stores.split("validation"), stores.split("test")
    val_labels = _labels(validation, config.label, "validation", str(stores.path))
    labels = _labels(test, config.label, "test", str(stores.path))
    val_order, order = validation.order_by_pair_id(), test.order_by_pair_id()
    val_weights, _ = predict(head, validation)
    weights, margins = predict(head, test)
    weights, margins, labels = weights[order], margins[order], labels[order]
    # The paper's filter: an attribute with too few test pairs is left out, and counted.
    names, counts = np.unique(labels, return_counts=True)
    skipped = {str(a): f"{n} test pairs, fewer than min_pairs = {config.min_pairs}"
               for a, n in zip(names, counts) if n < config.min_pairs}
    if len(skipped) == len(names):
        raise SteerError(f"{stores.path}: no {config.label} has {config.min_pairs} test pairs or more "
                         f"({', '.join(f'{a}: {n}' for a, n in zip(names, counts))}); lower steer.min_pairs or use more data")
    kept = ~np.isin(labels, list(skipped))
    weights, margins, labels = weights[kept], margins[kept], labels[kept]
    targets = metrics.target_experts(val_weights[val_order], val_labels[val_order], config.top_n)
    results: dict[str, Any] = {variant: summarize(steer_attributes(weights, margins, labels, targets, config.weights),
                                                  config.weights)}
    results[variant]["skipped_attributes"] = skipped
    if variant == REFERENCE:
        results[RANDOM] = summarize(random_baseline(weights, margins, labels, config), config.weights)
    results["settings"] = {**asdict(config), "variant": variant, "reference": REFERENCE}
    return SteerOutput(results, headline(results), curve_csv(results))


def _models(results: dict[str, Any]) -> list[str]:
    # the steered head first, then the random baseline when there is one
    return [m for m in results if m not in ("settings", RANDOM)] + [m for m in results if m == RANDOM]


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The key numbers of one :func:`steer_variant` result, flat (one `dvc exp show` column
    each): flip rate and undesired flip rate (Eq. 16, 18) and the flip rate at the largest
    weight; the random baseline's under ``random_``. The t-tests compare heads: the report's."""
    out: dict[str, float] = {}
    for name in _models(results):
        r = results[name]
        by_weight = r["flip_rate_by_weight"]
        row = {"flip_rate": r["flip_rate"], "undesired_flip_rate": r["undesired_flip_rate"],
               "flip_rate_at_max_weight": by_weight[max(by_weight, key=float)] if by_weight else None}
        prefix = "random_" if name == RANDOM else ""
        out.update({prefix + k: v for k, v in metrics.headline(row, tuple(row)).items()})
    return out


def curve_csv(results: dict[str, Any]) -> str:
    """The Fig. 2 / Fig. 7 curves of one :func:`steer_variant` result as CSV:
    ``weight,flip_rate,undesired_flip_rate`` (+ ``random_flip_rate,random_undesired_flip_rate``
    with the random baseline); an undefined rate is empty."""
    columns = [(name, key) for name in _models(results) for key in ("flip_rate", "undesired_flip_rate")]
    lines = [",".join(["weight"] + [("random_" if name == RANDOM else "") + key for name, key in columns])]
    for w in results["settings"]["weights"]:
        values = [results[name][key + "_by_weight"][str(w)] for name, key in columns]
        lines.append(",".join([str(w)] + ["" if math.isnan(v) else f"{v:.6f}" for v in values]))
    return "\n".join(lines) + "\n"
