"""The personalization experiment (paper §6.2, Tables 5, 6, 12, 13, Fig. 8, App. G-H).

For every group of the test split (an attribute of ``attributes``, a user of ``users``):

1. its pairs are split once, by a seeded permutation, into an adaptation POOL and an
   EVALUATION half (``eval_fraction``); every model is scored on the same evaluation pairs;
2. for each adaptation size n and seed, n pairs are drawn from the pool -- the same draw
   for every model, so the comparison is paired;
3. each model is adapted on them (:func:`pipeline.adaptation.adapt`: Hedge for MoE heads,
   HyRe reweighting for the ensemble, nothing for the single head) and its accuracy on the
   evaluation pairs is compared with the unadapted model's.

One head at a time (:func:`personalize_variant`): the split and the draws depend only on
the data (rows ordered by pair_id, groups by name) and the seeds, never on which other
heads are personalized or in which order, so heads personalized separately are still
compared on the same pairs. The cross-model tables (5, 6, 12, 13) and Fig. 8 are the
report's (:mod:`pipeline.report`).

Reported per model: accuracy after adaptation and the gain over the unadapted model at the
largest n (paper: 50), mean over groups, and mean +- std over seeds; the same per n (Fig. 8)
and per group (Tables 5/12/13); and for each group the expert whose mean routing weight on
the evaluation pairs rose most (Table 6), with its description from ``interpret``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from annotated_types import Ge, Interval, Len

import numpy as np
import torch

from pipeline import metrics
from pipeline.adaptation import AdaptConfig, adapt, method_for, pair_accuracy
from pipeline.errors import UserError
from pipeline.models import RewardHead, check_compatible
from pipeline.split_store import SplitStores

SPLITS = ("train", "validation", "test")


@dataclass
class PersonalizeConfig:
    # adaptation set sizes n, and independent draws per n
    sizes: Annotated[list[Annotated[int, Ge(1)]], Len(1)] = field(default_factory=lambda: [5, 10, 25, 50])
    seeds: Annotated[list[int], Len(1)] = field(default_factory=lambda: [0, 1, 2])
    eval_fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.5  # share of each group's pairs held out for evaluation
    split_seed: int = 0           # the pool/evaluation split
    split: Literal["train", "validation", "test"] = "test"  # where groups come from (test prompts carry no criterion)
    min_pairs: Annotated[int, Ge(2)] = 51  # the paper's group filter: only groups with more than 50 pairs

    def __post_init__(self) -> None:
        def integers(name: str) -> list[int]:
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                            for v in values):
                raise ValueError(f"{name} must be a list of integers, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat, got {values!r}")
            return list(values)

        sizes, seeds = integers("sizes"), integers("seeds")
        if not sizes or min(sizes) < 1:
            raise ValueError(f"sizes must be a non-empty list of positive integers, got {self.sizes!r}")
        if not seeds:
            raise ValueError("seeds must not be empty")
        if isinstance(self.eval_fraction, bool) or not isinstance(self.eval_fraction, (int, float)) \
                or not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int):
            raise ValueError(f"split_seed must be an integer, got {self.split_seed!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if isinstance(self.min_pairs, bool) or not isinstance(self.min_pairs, int) or self.min_pairs < 2:
            raise ValueError(f"min_pairs must be an integer >= 2, got {self.min_pairs!r}")
        self.sizes, self.seeds = sorted(sizes), seeds


class PersonalizeError(UserError, ValueError):
    pass


class PersonalizeOutput(NamedTuple):
    results: dict[str, Any]        # every result: {variant: ..., "settings": ...}
    key_metrics: dict[str, float]  # flat key numbers, the DVC metrics file
    curve_csv: str                 # accuracy per adaptation size, for `dvc plots`


def split_groups(labels: np.ndarray, config: PersonalizeConfig
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """Per group: (pool rows, evaluation rows), from a seeded permutation of its rows; and
    the groups left out, with the reason. As in the paper, a group needs at least
    ``min_pairs`` pairs (more than 50), and its pool must supply the largest adaptation set;
    a group that fails either is skipped and counted, never an error. Each group's
    permutation is seeded by its index among ALL groups, so leaving one out does not change
    the draws of the others."""
    groups, skipped = {}, {}
    for i, group in enumerate(sorted(set(labels.tolist()))):
        rows = np.flatnonzero(labels == group)
        rows = rows[np.random.default_rng([config.split_seed, i]).permutation(len(rows))]
        n_eval = int(round(config.eval_fraction * len(rows)))
        pool, evaluation = rows[n_eval:], rows[:n_eval]
        if len(rows) < config.min_pairs:
            skipped[group] = f"{len(rows)} {config.split} pairs, fewer than min_pairs = {config.min_pairs}"
        elif len(pool) < config.sizes[-1] or len(evaluation) == 0:
            skipped[group] = (f"{len(rows)} {config.split} pairs: {len(pool)} for adaptation and {len(evaluation)} "
                              f"for evaluation, but n = {config.sizes[-1]} is asked")
        else:
            groups[group] = (pool, evaluation)
    if not groups:
        raise PersonalizeError(f"no {config.split} group is large enough to personalize to "
                               f"({len(skipped)} skipped: {'; '.join(f'{g}: {r}' for g, r in skipped.items())}); "
                               f"lower personalize.min_pairs or the largest size, or use more data")
    return groups, skipped


def slug(name: str) -> str:
    """A group name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "group"


def load_groups(stores: SplitStores, group_by: str,
                config: PersonalizeConfig) -> tuple[torch.Tensor, dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """The float16 states [N, 3, H] of ``config.split``'s pairs in file order, their groups
    as row indices (drawn in pair_id order: the split does not depend on file order) and
    the groups left out (:func:`split_groups`). Kept in float16, as stored: a 70K-pair test
    split at hidden 3072 is 1.3 GB so, 2.6 GB as float32; rows are cast where used."""
    states = stores.split(config.split)
    if group_by not in states.metadata.column_names or None in states.metadata.column(group_by).to_pylist():
        raise PersonalizeError(f"{stores.path}: every {config.split} pair needs a {group_by!r} value to "
                               f"personalize by; columns: {states.metadata.column_names}")
    order = states.order_by_pair_id()
    labels = np.array(states.metadata.column(group_by).to_pylist())[order]
    groups, skipped = split_groups(labels, config)
    groups = {g: (order[pool], order[evaluation]) for g, (pool, evaluation) in groups.items()}
    return torch.from_numpy(states.read(0, len(states))), groups, skipped


def personalize_head(head: RewardHead, x: torch.Tensor, groups: dict[str, tuple[np.ndarray, np.ndarray]],
                     config: PersonalizeConfig, adapt_config: AdaptConfig,
                     save_dir: Path | None = None) -> dict[str, Any]:
    """Adapt one head per (group, n, seed); see the module docstring. Adapted heads at the
    largest n and first seed are saved under ``save_dir/<group>/``."""
    by_group: dict[str, Any] = {}
    after = np.zeros((len(groups), len(config.sizes), len(config.seeds)))
    before = np.zeros(len(groups))
    for g, (group, (pool, evaluation)) in enumerate(groups.items()):
        held_out = x[evaluation].float().unbind(1)
        before[g], weights_before = pair_accuracy(head, *held_out)
        shifts = []
        for i, n in enumerate(config.sizes):
            for j, seed in enumerate(config.seeds):
                # The draw depends on (group, n, seed) only: every model sees the same pairs.
                chosen_rows = pool[np.random.default_rng([seed, g, n]).choice(len(pool), size=n, replace=False)]
                xa = x[chosen_rows].float()
                adapted = adapt(head, xa[:, 0], xa[:, 1], xa[:, 2], AdaptConfig(**{**asdict(adapt_config), "seed": seed}))
                after[g, i, j], weights_after = pair_accuracy(adapted, *held_out)
                if n == config.sizes[-1]:
                    shifts.append(np.subtract(weights_after, weights_before))
                    if j == 0 and save_dir is not None:
                        adapted.save(save_dir / slug(group), group=group, adaptation_pairs=int(n), seed=int(seed))
        shift = np.mean(shifts, axis=0)
        by_group[group] = {
            "accuracy_before": float(before[g]),
            "accuracy": float(after[g, -1].mean()), "accuracy_std": float(after[g, -1].std()),
            "gain": float(after[g, -1].mean() - before[g]), "gain_std": float(after[g, -1].std()),
            "num_eval_pairs": int(len(evaluation)), "num_pool_pairs": int(len(pool)),
            "routing_weight_shift": shift.tolist(),
            "most_upweighted_expert": int(np.argmax(shift)) if len(shift) > 1 else None,
        }
    per_seed_after = after.mean(axis=0)        # [sizes, seeds]: mean over groups
    per_seed_gain = per_seed_after - before.mean()
    by_n = {str(n): {"accuracy": float(per_seed_after[i].mean()), "accuracy_std": float(per_seed_after[i].std()),
                     "gain": float(per_seed_gain[i].mean()), "gain_std": float(per_seed_gain[i].std())}
            for i, n in enumerate(config.sizes)}
    top = by_n[str(config.sizes[-1])]
    return {"accuracy": top["accuracy"], "accuracy_std": top["accuracy_std"], "gain": top["gain"],
            "gain_std": top["gain_std"], "accuracy_before": float(before.mean()), "num_pairs": config.sizes[-1],
            "by_n": by_n, "by_group": by_group}


def personalize_variant(stores: SplitStores, model_dir: str | Path, variant: str, group_by: str, *,
                        config: PersonalizeConfig, adapt_config: AdaptConfig,
                        adapted_dir: str | Path | None = None) -> PersonalizeOutput:
    """Personalize one head (any variant) to every ``group_by`` group of the cache's
    ``config.split``. Saves the adapted heads (largest n, first seed) under
    ``adapted_dir/<group>/`` when given (Table 6's expert descriptions are joined by the
    report, so this stage does not depend on interpret). Returns every result, the key numbers (:func:`headline`) and the Fig. 8 curve
    (:func:`curve_csv`)."""
    head = RewardHead.load(model_dir)
    check_compatible(head.config, stores.cache_manifest, f"{model_dir} on {stores.path}")
    x, groups, skipped = load_groups(stores, group_by, config)
    result = personalize_head(head, x, groups, config, adapt_config,
                              None if adapted_dir is None else Path(adapted_dir))
    result["method"] = method_for(head)
    result["skipped_groups"] = skipped  # the paper's filter: counted, never an error
    results = {variant: result,
               "settings": {"group_by": group_by, "variant": variant, **asdict(config), "adaptation": asdict(adapt_config)}}
    return PersonalizeOutput(results, headline(results), curve_csv(results))


HEADLINE = ("accuracy_before", "accuracy", "gain", "gain_std")


def _variant(results: dict[str, Any]) -> dict[str, Any]:
    return results[results["settings"]["variant"]]


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The key numbers of one :func:`personalize_variant` result at the largest n, flat (a
    `dvc exp show` column each): accuracy before and after adaptation, gain and its std."""
    return metrics.headline(_variant(results), HEADLINE)


def curve_csv(results: dict[str, Any]) -> str:
    """Fig. 8 for one head as CSV: ``n,accuracy,accuracy_std`` (mean over groups, mean and
    std over seeds), one row per adaptation size."""
    by_n = _variant(results)["by_n"]
    lines = ["n,accuracy,accuracy_std"]
    lines += [f"{n},{by_n[str(n)]['accuracy']:.6f},{by_n[str(n)]['accuracy_std']:.6f}"
              for n in results["settings"]["sizes"]]
    return "\n".join(lines) + "\n"
