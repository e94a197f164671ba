"""Summary of a lambda grid sweep (App. C, Table 8) read from `dvc exp show --json`.

One row per grid point (lambda_ls, lambda_gb, lambda_div): the chosen variant's test
accuracy, routing entropy (Eq. 4), global entropy (Eq. 5), expert correlation (Eq. 6),
purity (Eq. 9-10) and specialization (Eq. 11-13), and whether its router collapsed onto
one expert, uses fewer than half its experts, spreads uniformly, or is healthy. Rendered
as a markdown table, a CSV and heatmaps (rows: lambda_ls x lambda_gb, columns: lambda_div).

Which entries of `dvc exp show --json` become points:
- the `workspace` entry is skipped: it is the baseline commit again, or the last
  experiment applied, or uncommitted edits; none of them is a finished grid point of its own;
- baseline commits (the top-level entries, several with `-A`/`-a`) and their experiments
  are points, so a grid run as queued experiments, one `dvc exp run -S` at a time or as
  commits on branches all summarize the same way;
- entries whose params file lacks one of the three lambdas are not grid points and are skipped;
- queued, running and failed experiments are kept, flagged by `status`, without metrics
  (a running one still shows the metrics of the commit it started from);
- when several entries share the same lambdas (the baseline commit is itself a grid
  point, a point was re-run), one is kept: finished before unfinished, then the newest
  (an experiment is newer than the commit it is based on).
"""

from __future__ import annotations

import csv
import json
import math
import posixpath
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pipeline.errors import UserError

LAMBDAS = ("lambda_ls", "lambda_gb", "lambda_div")

# metric key in data/metrics/<experiment>/<variant>.json -> column header
METRICS = {
    "accuracy": "accuracy",
    "routing_entropy": "routing entropy",
    "global_entropy": "global entropy",
    "expert_correlation": "expert correlation",
    "expert_purity": "purity",
    "expert_specialization": "specialization",
}

# Router health thresholds. Both entropies are already normalized by log K, so they lie
# in [0, 1] whatever the number of experts.
# - Global entropy is the entropy of the MEAN routing over the test split: below 0.3 the
#   router sends (nearly) everything to one expert, e.g. 0.3 for K = 5 is ~90 % of the
#   routing mass on one expert. Table 8 bolds exactly the models that did not collapse.
COLLAPSED_GLOBAL_ENTROPY = 0.3
# - Routing entropy is the MEAN per-example entropy: above 0.95 every example is spread
#   (almost) evenly over all experts, i.e. no expert is chosen for anything. This is what
#   vanilla / HyRe-like dense routing looks like (entropy ~1).
UNIFORM_ROUTING_ENTROPY = 0.95
# The two cannot both hold: the entropy of a mean is at least the mean of the entropies
# (concavity), so routing_entropy <= global_entropy, and a collapsed router (global < 0.3)
# has routing entropy < 0.3 too.
# - Between the two: exp(H) of the mean routing is the number of experts effectively in
#   use, K ** global_entropy once normalized. Below half of K the router has given up on
#   most of its experts ("partial": e.g. global entropy 0.43 at K = 5 is 2 experts) though
#   it has not collapsed onto one. Needs K, so it is only judged when K is known.
PARTIAL_EXPERT_FRACTION = 0.5

# Per-metric colour range of the heatmaps: a fixed [0, 1] for the normalized entropies
# and purity (so that heatmaps of two grids compare), a symmetric one for correlation,
# and the data's own range (None) where the differences are small (accuracy, specialization).
HEATMAP_RANGE: dict[str, tuple[float | None, float | None, str]] = {
    "accuracy": (None, None, "viridis"),
    "routing_entropy": (0.0, 1.0, "viridis"),
    "global_entropy": (0.0, 1.0, "viridis"),
    "expert_correlation": (-1.0, 1.0, "coolwarm"),
    "expert_purity": (0.0, 1.0, "viridis"),
    "expert_specialization": (None, None, "viridis"),
}


class GridError(UserError, ValueError):
    """The `dvc exp show --json` output cannot be read as a grid."""


@dataclass
class GridPoint:
    """One grid point: its lambdas and the chosen variant's metrics (empty unless status is "ok")."""

    name: str                       # experiment name, or branch / short rev of a baseline commit
    lambdas: dict[str, float]       # lambda_ls, lambda_gb, lambda_div
    metrics: dict[str, Any] = field(default_factory=dict)
    rev: str = ""
    status: str = "ok"              # ok | queued | running | failed | no metrics
    baseline: bool = False          # a commit, not an experiment on top of one
    timestamp: str = ""             # ISO 8601 (sorts as text); "" when unknown
    num_experts: int | None = None  # K of the experiment, from params (None: unknown)

    @property
    def key(self) -> tuple[float, float, float]:
        return tuple(self.lambdas[k] for k in LAMBDAS)

    @property
    def router(self) -> str | None:
        """router_health of this point, None when it has no (finite) entropies."""
        g, r = self.metrics.get("global_entropy"), self.metrics.get("routing_entropy")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (g, r)):
            return None
        return router_health(g, r, num_experts=self.num_experts)


def effective_experts(global_entropy: float, num_experts: int) -> float:
    """exp of the (unnormalized) entropy of the mean routing: how many experts are in use."""
    return float(num_experts) ** global_entropy


def router_health(global_entropy: float, routing_entropy: float, *, num_experts: int | None = None,
                  collapsed_below: float = COLLAPSED_GLOBAL_ENTROPY,
                  uniform_above: float = UNIFORM_ROUTING_ENTROPY,
                  partial_below: float = PARTIAL_EXPERT_FRACTION) -> str:
    """"collapsed" (global entropy < collapsed_below), "uniform" (routing entropy >
    uniform_above), "partial" (with ``num_experts`` K: fewer than partial_below * K experts
    effectively in use) or "healthy". Both entropies normalized by log K, in [0, 1]."""
    if not (math.isfinite(global_entropy) and math.isfinite(routing_entropy)):
        raise ValueError(f"router_health needs finite entropies, got {global_entropy}, {routing_entropy}")
    if global_entropy < collapsed_below:
        return "collapsed"
    if routing_entropy > uniform_above:
        return "uniform"
    if num_experts is not None and num_experts > 1 and \
            effective_experts(global_entropy, num_experts) < partial_below * num_experts:
        return "partial"
    return "healthy"


def _num_experts(params: dict, metrics_file: str) -> int | None:
    """K of the experiment whose metrics file this is (data/metrics/<experiment>/<variant>.json)."""
    parts = metrics_file.split("/")
    experiment = parts[-2] if len(parts) >= 2 else None
    k = ((params.get("experiments") or {}).get(experiment) or {}).get("num_experts")
    return int(k) if isinstance(k, int) and not isinstance(k, bool) else None


# ---------------------------------------------------------------------------------------
# reading `dvc exp show --json`

def dvc_exp_show() -> list | dict:
    """`dvc exp show --json` in the current directory, with the dvc of this environment.

    Not ``dvc.api.exp_show``: that returns the rendered table, whose metric columns are
    named by the shortest unique suffix (``accuracy`` while one metrics file has that key,
    ``sparse.json:accuracy`` once two do), so a column's name would change with the set of
    metric files, and it turns integer params into floats (K = 5.0). The JSON keeps each
    value under its file and key (checked on DVC 3.67)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GridError(f"`dvc exp show --json` failed (exit {proc.returncode}): "
                        f"{(proc.stderr or proc.stdout).strip() or 'no output'}")
    # DVC prints NaN for NaN metrics (e.g. expert_correlation of a 1-expert head): json accepts it
    return json.loads(proc.stdout)


def exp_entries(exp_show_json: list | dict) -> list[tuple[dict, bool, dict | None]]:
    """Flatten to (rev entry, is_baseline, executor) for every commit and experiment.
    DVC 3.x prints a list of baseline entries, each with `experiments: [{name, executor,
    revs: [entry]}]`; DVC 2.x printed {baseline rev: {"baseline": ..., exp rev: ...}}."""
    if isinstance(exp_show_json, dict) and "rev" in exp_show_json:
        exp_show_json = [exp_show_json]  # one baseline entry of the 3.x list
    out: list[tuple[dict, bool, dict | None]] = []
    if isinstance(exp_show_json, list):
        for base in exp_show_json:
            if base.get("rev") == "workspace":
                continue
            out.append((base, True, None))
            for exp in base.get("experiments") or []:
                # one rev per experiment since DVC 3 (checkpoints are gone); the last is the tip
                revs = exp.get("revs") or []
                if revs:
                    out.append((revs[-1], False, exp.get("executor")))
        return out
    if isinstance(exp_show_json, dict):
        for base_rev, group in exp_show_json.items():
            if base_rev == "workspace" or not isinstance(group, dict):
                continue
            for rev, entry in group.items():
                data = dict(entry.get("data") or {})
                state = "queued" if data.get("queued") else "running" if data.get("running") else None
                out.append(({"rev": base_rev if rev == "baseline" else rev, "name": data.get("name"),
                             "data": data, "error": entry.get("error")}, rev == "baseline",
                            {"state": state} if state else None))
        return out
    raise GridError(f"expected the list (or dict) that `dvc exp show --json` prints, got {type(exp_show_json).__name__}")


def file_data(files: dict | None, path: str) -> dict | None:
    """The parsed contents of one params/metrics file of an entry, None if absent or unreadable."""
    for name, node in (files or {}).items():
        if posixpath.normpath(name.replace("\\", "/")) == path:
            data = (node or {}).get("data")
            return data if isinstance(data, dict) and not (node or {}).get("error") else None
    return None


def load_points(exp_show_json: list | dict, metrics_file: str = "data/metrics/categories/sparse.json", *,
                params_file: str = "params.yaml") -> list[GridPoint]:
    """Grid points (one per lambda triple, see the module docstring for which entries
    count) from the parsed output of `dvc exp show --json`, sorted by the lambdas."""
    metrics_file = posixpath.normpath(metrics_file.replace("\\", "/"))
    params_file = posixpath.normpath(params_file.replace("\\", "/"))
    points: list[GridPoint] = []
    for entry, baseline, executor in exp_entries(exp_show_json):
        data = entry.get("data") or {}
        params = file_data(data.get("params"), params_file) or {}
        if not all(isinstance(params.get(k), (int, float)) for k in LAMBDAS):
            continue
        rev = str(entry.get("rev") or "")
        point = GridPoint(name=entry.get("name") or rev[:7], rev=rev, baseline=baseline,
                          lambdas={k: float(params[k]) for k in LAMBDAS}, timestamp=data.get("timestamp") or "",
                          num_experts=_num_experts(params, metrics_file))
        state = (executor or {}).get("state")
        metrics = file_data(data.get("metrics"), metrics_file)
        if entry.get("error") or state == "failed":
            point.status = "failed"
        elif state in ("queued", "running"):
            # a queued/running experiment's metrics, if any, are those of its starting commit
            point.status = state
        elif metrics is None:
            point.status = "no metrics"
        else:
            point.metrics = metrics
        points.append(point)
    # one point per lambda triple: finished > unfinished, then newest
    best: dict[tuple, GridPoint] = {}
    for p in points:
        q = best.get(p.key)
        if q is None or (p.status == "ok", p.timestamp) > (q.status == "ok", q.timestamp):
            best[p.key] = p
    return sorted(best.values(), key=lambda p: p.key)


# ---------------------------------------------------------------------------------------
# rendering

def fmt_metric(value: Any) -> str:
    """A metric cell: 3 decimals, "n/a" when missing or not finite."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.3f}" if math.isfinite(value) else "n/a"
    return "n/a" if value is None else str(value)


def _lam(value: float) -> str:
    return f"{value:g}"


def grid_table(points: list[GridPoint]) -> str:
    """A markdown table, one row per point sorted by the lambdas. The router column says
    collapsed / partial / uniform / healthy, or the status of a point without metrics (queued, failed...)."""
    header = [*LAMBDAS, *METRICS.values(), "router"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header[:-1]) + "|:---|"]
    for p in sorted(points, key=lambda p: p.key):
        cells = [_lam(v) for v in p.key] + [fmt_metric(p.metrics.get(k)) for k in METRICS]
        cells.append((p.router or "n/a") if p.status == "ok" else p.status)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_grid_csv(points: list[GridPoint], path: str | Path) -> Path:
    """The table as CSV (full precision, empty cells for missing values), plus name, rev, status."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "rev", "status", *LAMBDAS, *METRICS, "router"])
        for p in sorted(points, key=lambda p: p.key):
            values = [p.metrics.get(k) for k in METRICS]
            w.writerow([p.name, p.rev, p.status, *p.key,
                        *("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values),
                        p.router or ""])
    return path


def grid_matrix(points: list[GridPoint], metric: str) -> tuple[np.ndarray, list[str], list[str]]:
    """metric laid out as rows (lambda_ls, lambda_gb) x columns lambda_div; NaN where a
    point is missing, unfinished or lacks the metric."""
    rows = sorted({p.key[:2] for p in points})
    cols = sorted({p.key[2] for p in points})
    matrix = np.full((len(rows), len(cols)), np.nan)
    for p in points:
        v = p.metrics.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            matrix[rows.index(p.key[:2]), cols.index(p.key[2])] = v
    return (matrix, [f"ls={_lam(ls)}, gb={_lam(gb)}" for ls, gb in rows], [f"div={_lam(d)}" for d in cols])


def grid_heatmap(points: list[GridPoint], metric: str, path: str | Path, *, title: str | None = None) -> Path:
    """A PNG heatmap of one metric over the grid (see grid_matrix for the layout)."""
    from pipeline.figures import heatmap  # matplotlib only when a figure is drawn

    if not points:
        raise GridError("no grid points to draw")
    matrix, rows, cols = grid_matrix(points, metric)
    vmin, vmax, cmap = HEATMAP_RANGE.get(metric, (None, None, "viridis"))
    return heatmap(matrix, rows, cols, title or f"{METRICS.get(metric, metric)} over the lambda grid", path,
                   vmin=vmin, vmax=vmax, cmap=cmap, fmt="{:.3f}")
