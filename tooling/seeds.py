"""Seed robustness of one configuration, read from `dvc exp show --json`.

Which category an expert ends up with, and so coverage and purity (Eq. 8-10), can hinge
on the training seed. A claim such as "sparse covers every category, the baselines do
not" is worth making only if it holds across seeds, so run the configuration under
several:

    dvc exp run --queue -S 'train.seed=0,1,2,3,4' evaluate@categories-{single,vanilla,micro,sparse,hyre} && dvc queue start -j 2

and summarize with `smoe seeds categories`: per variant, the mean and standard deviation
of each key metric over the seeds (evaluate's, and the interpret, steer and personalize
stages' key numbers beside them: `steer_*`, `personalize_*`), and per seed the values side by side with, for each
other variant, the number of seeds in which the reference variant (sparse) is higher.

The data draw matters as much as the training seed on small data. To vary both, run
each draw once in the workspace and queue the training seeds on top of it (README,
"Check a result across seeds": a queued data seed would re-run featurize per
experiment), then pass `--by datasets.categories.seed`: one summary per data draw, then
all runs pooled.

Which entries of `dvc exp show --json` count as seed runs:
- the reference configuration is the first baseline commit's params (HEAD, the commit
  the queued experiments start from);
- a commit or experiment counts when its params equal the reference's in every key but
  the seed key (and the ``--by`` key, if any), so a lambda grid next to the seeds is
  skipped, not mixed in; and it has
  finished with the experiment's metrics files; the workspace entry is skipped;
- per seed value (per group), the newest such entry is kept (a re-run replaces the earlier one).
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.metrics import KEY_METRICS
from pipeline.models import VARIANTS
from tooling.grid import GridError, exp_entries, file_data, fmt_metric

# the metrics the per-seed tables show by default: the ones category discovery hinges on
DEFAULT_PER_SEED = ("category_coverage", "expert_purity", "accuracy")


@dataclass
class SeedRun:
    """One finished run: its seed and, per variant, the flat metrics of data/metrics/<experiment>/<variant>.json."""

    name: str
    seed: Any
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    timestamp: str = ""
    group: Any = None  # the value of ``group_key`` (e.g. the data seed) when runs are grouped


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}, the dotted keys `dvc exp run -S` takes."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# The other stages' metrics files beside evaluate's, data/metrics/<experiment>/<stage>-<variant>.json,
# and the prefix their keys get in a variant's metrics (interpret's keys are already KEY_METRICS names).
STAGE_PREFIXES = {"interpret": "", "steer": "steer_", "personalize": "personalize_"}
# Their key numbers, in the order the summary table shows them after KEY_METRICS.
STAGE_METRICS = ("steer_flip_rate", "steer_undesired_flip_rate", "steer_flip_rate_at_max_weight",
                 "steer_random_flip_rate", "steer_random_undesired_flip_rate", "steer_random_flip_rate_at_max_weight",
                 "personalize_accuracy_before", "personalize_accuracy", "personalize_gain")


def _variant_metrics(metric_files: dict | None, experiment: str) -> dict[str, dict[str, float]]:
    """Per variant, the flat numbers of evaluate's data/metrics/<experiment>/<variant>.json merged
    with interpret-/steer-/personalize-<variant>.json beside it (keys prefixed, STAGE_PREFIXES),
    so description fidelity, flip rates and personalization gains are summarized over seeds too."""
    pattern = re.compile(rf"data/metrics/{re.escape(experiment)}/(?:({'|'.join(STAGE_PREFIXES)})-)?"
                         rf"({'|'.join(VARIANTS)})\.json")
    out: dict[str, dict[str, float]] = {}
    for path in sorted(metric_files or {}):
        match = pattern.fullmatch(posixpath.normpath(path.replace("\\", "/")))
        data = file_data(metric_files, match.group(0)) if match else None
        if data is not None:
            prefix = STAGE_PREFIXES[match.group(1)] if match.group(1) else ""
            out.setdefault(match.group(2), {}).update(
                {prefix + k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def load_seed_runs(exp_show_json: list | dict, experiment: str, *, seed_key: str = "train.seed",
                   group_key: str | None = None, params_file: str = "params.yaml") -> tuple[list[SeedRun], int]:
    """The seed runs of the reference configuration (see the module docstring), sorted by
    group then seed, and how many finished entries were skipped for differing in other
    params. With ``group_key`` (e.g. ``datasets.categories.seed``, the data draw) the runs
    may also differ in that param; each keeps its value in ``SeedRun.group``."""
    entries = exp_entries(exp_show_json)
    baselines = [e for e, is_baseline, _ in entries if is_baseline]
    if not baselines:
        raise GridError("`dvc exp show --json` lists no commit")
    reference = flatten(file_data((baselines[0].get("data") or {}).get("params"), params_file) or {})
    if seed_key not in reference:
        raise GridError(f"{params_file} of {baselines[0].get('rev', 'HEAD')[:7]} has no {seed_key}")
    reference.pop(seed_key)
    if group_key is not None:
        if group_key not in reference:
            raise GridError(f"{params_file} of {baselines[0].get('rev', 'HEAD')[:7]} has no {group_key}")
        reference.pop(group_key)
    newest: dict[tuple[str, str], SeedRun] = {}
    skipped = 0
    for entry, _, executor in entries:
        data = entry.get("data") or {}
        if entry.get("error") or (executor or {}).get("state") in ("queued", "running", "failed"):
            continue
        metrics = _variant_metrics(data.get("metrics"), experiment)
        params = flatten(file_data(data.get("params"), params_file) or {})
        if not metrics or seed_key not in params:
            continue
        seed = params.pop(seed_key)
        group = params.pop(group_key, None) if group_key is not None else None
        if params != reference:
            skipped += 1
            continue
        run = SeedRun(name=entry.get("name") or str(entry.get("rev", ""))[:7], seed=seed, metrics=metrics,
                      timestamp=data.get("timestamp") or "", group=group)
        key = (repr(group), repr(seed))
        if key not in newest or run.timestamp > newest[key].timestamp:
            newest[key] = run
    return sorted(newest.values(), key=lambda r: (str(type(r.group)), r.group, str(type(r.seed)), r.seed)), skipped


def by_group(runs: list[SeedRun]) -> list[tuple[Any, list[SeedRun]]]:
    """(group value, its runs) in the order the runs come (sorted by group)."""
    groups: dict[str, tuple[Any, list[SeedRun]]] = {}
    for run in runs:
        groups.setdefault(repr(run.group), (run.group, []))[1].append(run)
    return list(groups.values())


def _pooled(runs: list[SeedRun]) -> bool:
    """Whether ``runs`` span more than one group (rows and titles then say group/seed)."""
    return len({repr(r.group) for r in runs}) > 1


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def variants_of(runs: list[SeedRun], reference: str) -> list[str]:
    """All variants seen, the reference first."""
    names = sorted({v for r in runs for v in r.metrics})
    return sorted(names, key=lambda v: v != reference)


def summary_table(runs: list[SeedRun], variants: list[str], metrics: tuple[str, ...] = KEY_METRICS + STAGE_METRICS) -> str:
    """Markdown: one row per variant, per metric "mean ± std" over the seeds (sample std,
    n - 1; "n/a" where no seed has the metric)."""
    metrics = tuple(m for m in metrics if any(m in r.metrics.get(v, {}) for r in runs for v in variants))
    lines = ["| variant | " + " | ".join(metrics) + " |", "|:---|" + "---:|" * len(metrics)]
    for variant in variants:
        cells = []
        for metric in metrics:
            values = _finite([r.metrics.get(variant, {}).get(metric) for r in runs])
            if not values:
                cells.append("n/a")
            else:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                cells.append(f"{np.mean(values):.3f} ± {std:.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wins(runs: list[SeedRun], reference: str, other: str, metric: str) -> tuple[int, int]:
    """(seeds where ``reference`` > ``other`` on ``metric``, seeds where both have it)."""
    both = [(r.metrics[reference][metric], r.metrics[other][metric]) for r in runs
            if math.isfinite(r.metrics.get(reference, {}).get(metric, math.nan))
            and math.isfinite(r.metrics.get(other, {}).get(metric, math.nan))]
    return sum(a > b for a, b in both), len(both)


def per_seed_table(runs: list[SeedRun], variants: list[str], metric: str) -> str:
    """Markdown: one row per seed with ``metric`` of every variant, and a last row with, for
    each other variant, how many seeds the first variant (the reference) is strictly higher in."""
    reference = variants[0]
    variants = [v for v in variants if v == reference or any(metric in r.metrics.get(v, {}) for r in runs)]
    grouped = _pooled(runs)
    lines = [f"| {'group/seed' if grouped else 'seed'} | " + " | ".join(variants) + " |", "|---:|" + "---:|" * len(variants)]
    for run in runs:
        label = f"{run.group}/{run.seed}" if grouped else run.seed
        lines.append(f"| {label} | " + " | ".join(fmt_metric(run.metrics.get(v, {}).get(metric)) for v in variants) + " |")
    counts = ["—"] + [("{}/{}".format(*wins(runs, reference, v, metric))) for v in variants[1:]]
    lines.append(f"| {reference} higher | " + " | ".join(counts) + " |")
    return "\n".join(lines) + "\n"


def seeds_report(runs: list[SeedRun], experiment: str, *, reference: str = "sparse", seed_key: str = "train.seed",
                 per_seed: tuple[str, ...] = DEFAULT_PER_SEED, group: str = "") -> str:
    """The whole markdown summary: the mean ± std table, then one per-seed table per metric.
    ``group`` (e.g. "datasets.categories.seed = 1") goes into the title."""
    variants = variants_of(runs, reference)
    if reference not in variants:
        raise GridError(f"no seed run has data/metrics/{experiment}/{reference}.json (variants: {', '.join(variants)})")
    title = f"{experiment}, {group}" if group else experiment
    if _pooled(runs):
        title += f": {len(runs)} runs ({seed_key} = {', '.join(f'{r.group}/{r.seed}' for r in runs)} as group/seed)"
    else:
        title += f": {len(runs)} seeds ({seed_key} = {', '.join(str(r.seed) for r in runs)})"
    parts = [f"# {title}\n",
             "## Mean ± std over the seeds\n", summary_table(runs, variants)]
    for metric in per_seed:
        if any(metric in r.metrics.get(reference, {}) for r in runs):
            parts += [f"## {metric} per seed\n", per_seed_table(runs, variants, metric)]
    return "\n".join(parts)
