"""The personalization experiment (paper §6.2, Tables 5, 6, 12, 13, Fig. 8, App. G-H).

For every group of the test split (an attribute of ``attributes``, a user of ``users``):

1. its pairs are split once, by a seeded permutation, into an adaptation POOL and an
   EVALUATION half (``eval_fraction``); every model is scored on the same evaluation pairs;
2. for each adaptation size n and seed, n pairs are drawn from the pool -- the same draw
   for every model, so the comparison is paired;
3. each model is adapted on them (:func:`pipeline.adaptation.adapt`: Hedge for MoE heads,
   HyRe reweighting for the ensemble, nothing for the single head) and its accuracy on the
   evaluation pairs is compared with the unadapted model's.

Reported per model: accuracy after adaptation and the gain over the unadapted model at the
largest n (paper: 50), mean over groups, and mean +- std over seeds; the same per n (Fig. 8)
and per group (Tables 5/12/13); and for each group the expert whose mean routing weight on
the evaluation pairs rose most (Table 6), with its description from ``interpret``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import figures, metrics
from pipeline.adaptation import AdaptConfig, adapt, method_for, pair_accuracy
from pipeline.cache import FeatureCache, write_json
from pipeline.models import RewardHead, check_compatible
from pipeline.pair_states import PairStates


@dataclass
class PersonalizeConfig:
    sizes: list[int] = field(default_factory=lambda: [5, 10, 25, 50])  # adaptation set sizes n
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])        # independent draws per n
    eval_fraction: float = 0.5    # share of each group's pairs held out for evaluation
    split_seed: int = 0           # the pool/evaluation split
    split: str = "test"           # where groups come from (test prompts carry no criterion)

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be a non-empty list of positive integers, got {self.sizes!r}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        self.sizes = sorted(int(n) for n in self.sizes)


class PersonalizeError(ValueError):
    pass


def split_groups(labels: np.ndarray, config: PersonalizeConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per group: (pool rows, evaluation rows), from a seeded permutation of its rows. Refuses
    a group whose pool cannot supply the largest adaptation set."""
    groups = {}
    for i, group in enumerate(sorted(set(labels.tolist()))):
        rows = np.flatnonzero(labels == group)
        rows = rows[np.random.default_rng([config.split_seed, i]).permutation(len(rows))]
        n_eval = int(round(config.eval_fraction * len(rows)))
        pool, evaluation = rows[n_eval:], rows[:n_eval]
        if len(pool) < config.sizes[-1] or len(evaluation) == 0:
            raise PersonalizeError(
                f"group {group!r} has {len(rows)} {config.split} pairs: {len(pool)} for adaptation and "
                f"{len(evaluation)} for evaluation, but n = {config.sizes[-1]} is asked; generate more "
                f"data, lower the largest size or eval_fraction")
        groups[group] = (pool, evaluation)
    return groups


def slug(name: str) -> str:
    """A group name as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "group"


def personalize_variant(head: RewardHead, x: torch.Tensor, groups: dict[str, tuple[np.ndarray, np.ndarray]],
                        config: PersonalizeConfig, adapt_config: AdaptConfig,
                        save_dir: Path | None = None) -> dict[str, Any]:
    """Adapt one head per (group, n, seed); see the module docstring. Adapted heads at the
    largest n and first seed are saved under ``save_dir/<group>/``."""
    by_group: dict[str, Any] = {}
    after = np.zeros((len(groups), len(config.sizes), len(config.seeds)))
    before = np.zeros(len(groups))
    for g, (group, (pool, evaluation)) in enumerate(groups.items()):
        before[g], weights_before = pair_accuracy(head, *x[evaluation].unbind(1))
        shifts = []
        for i, n in enumerate(config.sizes):
            for j, seed in enumerate(config.seeds):
                # The draw depends on (group, n, seed) only: every model sees the same pairs.
                chosen_rows = pool[np.random.default_rng([seed, g, n]).choice(len(pool), size=n, replace=False)]
                xa = x[chosen_rows]
                adapted = adapt(head, xa[:, 0], xa[:, 1], xa[:, 2], AdaptConfig(**{**asdict(adapt_config), "seed": seed}))
                after[g, i, j], weights_after = pair_accuracy(adapted, *x[evaluation].unbind(1))
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


def load_descriptions(experts_json: str | Path) -> dict[int, str]:
    """Expert id -> description from interpret's ``experts.json`` (empty when absent)."""
    path = Path(experts_json)
    if not path.exists():
        return {}
    return {int(e["id"]): str(e["description"]) for e in json.loads(path.read_text()).get("experts", [])}


HEADLINE = ("accuracy_before", "accuracy", "gain", "gain_std")


def headline(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The key numbers per model at the largest n, for the DVC metrics file (a
    `dvc exp show` column each): accuracy before and after adaptation, gain and its std."""
    return {name: metrics.headline(r, HEADLINE) for name, r in results.items() if name != "settings"}


def personalize_experiment(cache: FeatureCache, models_dir: str | Path, variants: list[str], group_by: str, *,
                           config: PersonalizeConfig, adapt_config: AdaptConfig, out_path: str | Path,
                           adapted_dir: str | Path | None, figures_dir: str | Path | None,
                           tables_path: str | Path | None = None, metrics_path: str | Path | None = None,
                           interpret_dir: str | Path | None, scratch: str | Path) -> dict[str, Any]:
    """Run :func:`personalize_variant` for every variant; write every result to ``out_path``
    (JSON), the key numbers (:func:`headline`) to ``metrics_path``, the markdown tables
    (``tables_path``), the adapted heads and the Fig. 8 curve."""
    states = PairStates.build(cache, config.split, scratch)
    if group_by not in states.metadata.column_names or None in states.metadata.column(group_by).to_pylist():
        raise PersonalizeError(f"{cache.path}: every {config.split} pair needs a {group_by!r} value to "
                               f"personalize by; columns: {states.metadata.column_names}")
    order = states.order_by_pair_id()  # rows by pair_id: the split does not depend on file order
    labels = np.array(states.metadata.column(group_by).to_pylist())[order]
    x = torch.from_numpy(states.read(0, len(states))[order].astype(np.float32))
    groups = split_groups(labels, config)
    results: dict[str, Any] = {}
    for name in variants:
        head = RewardHead.load(Path(models_dir) / name)
        check_compatible(head.config, cache.manifest, f"{Path(models_dir) / name} on {cache.path}")
        save_dir = None if adapted_dir is None else Path(adapted_dir) / name
        results[name] = personalize_variant(head, x, groups, config, adapt_config, save_dir)
        results[name]["method"] = method_for(head)
        if interpret_dir is not None:
            descriptions = load_descriptions(Path(interpret_dir) / name / "experts.json")
            for row in results[name]["by_group"].values():
                k = row["most_upweighted_expert"]
                row["most_upweighted_description"] = descriptions.get(k) if k is not None else None
    results["settings"] = {"group_by": group_by, **asdict(config), "adaptation": asdict(adapt_config)}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(metrics_path), headline(results))
    if tables_path is not None:
        Path(tables_path).parent.mkdir(parents=True, exist_ok=True)
        Path(tables_path).write_text(markdown_tables(results, group_by))
    if figures_dir is not None:
        models = [m for m in results if m != "settings"]
        sizes = config.sizes
        figures.line_plot(sizes, {m: [results[m]["by_n"][str(n)]["accuracy"] for n in sizes] for m in models},
                          f"Accuracy after adaptation vs adaptation-set size (Fig. 8), by {group_by}",
                          Path(figures_dir) / "adaptation_size.png", xlabel="adaptation pairs n",
                          ylabel="accuracy (eval pairs)",
                          errors={m: [results[m]["by_n"][str(n)]["accuracy_std"] for n in sizes] for m in models})
        lines = ["n," + ",".join(models)]
        lines += [f"{n}," + ",".join(f"{results[m]['by_n'][str(n)]['accuracy']:.6f}" for m in models) for n in sizes]
        (Path(figures_dir) / "adaptation_size.csv").write_text("\n".join(lines) + "\n")
    return results


def markdown_tables(results: dict[str, Any], group_by: str) -> str:
    """Tables 5/12/13 (accuracy after adaptation, gain in parentheses) and Table 6 (the most
    upweighted expert per group), in markdown."""
    models = [m for m in results if m != "settings"]
    groups = list(results[models[0]]["by_group"]) if models else []
    n = results["settings"]["sizes"][-1]
    lines = [f"# Personalization by {group_by} (n = {n}, mean over seeds {results['settings']['seeds']})", "",
             "| model | " + " | ".join(groups) + " | overall |", "|---|" + "---|" * (len(groups) + 1)]
    for m in models:
        cells = [f"{100 * g['accuracy']:.1f} ({100 * g['gain']:+.1f})" for g in results[m]["by_group"].values()]
        lines.append(f"| {m} | " + " | ".join(cells) +
                     f" | {100 * results[m]['accuracy']:.1f} ({100 * results[m]['gain']:+.1f} "
                     f"± {100 * results[m]['gain_std']:.1f}) |")
    for m in models:
        if results[m]["method"] == "hedge":  # input-dependent routing over described experts
            lines += ["", f"## {m}: most upweighted expert per {group_by} (Table 6)", "",
                      f"| {group_by} | expert | weight shift | description |", "|---|---|---|---|"]
            for group, g in results[m]["by_group"].items():
                k = g["most_upweighted_expert"]
                lines.append(f"| {group} | E{k} | {g['routing_weight_shift'][k]:+.3f} | "
                             f"{(g.get('most_upweighted_description') or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"
