"""The `report` stage: the paper's tables and figures, regenerated from the pipeline's outputs.

Every table is a pure function from already-loaded JSON (plain dicts) to a markdown string,
so each can be tested on a hand-made dict; :func:`build_report` loads the files, copies the
figures next to the report (the folder is self-contained) and writes ``REPORT.md``.

Where each table comes from (paths under the data directory; ``<exp>`` is a parameter,
default in brackets; ``<variant>`` each of single, hyre, vanilla, micro, sparse):

    Table 1          predictions/<exp>/<variant>/metrics.json                    [categories]
    Table 9          predictions/<exp>/sparse/metrics.json "per_category"; the single head's
                     per-category accuracy (the deltas) from its "per_category" or, lacking
                     that, predictions/<exp>/single/predictions.parquet          [categories]
    Table 10         predictions/<exp>/sparse/metrics.json "per_category" and "experts" [categories]
    routing heatmaps plots/eval/<exp>/<variant>/{routing_by_category,expert_correlation}.png
    Figure 2, 7      steer/<exp>/{vanilla,micro,sparse}.json (sparse's holds the random
                     baseline); the paired t-tests across attributes and the PNGs are made here
                                                                                 [attributes]
    Table 4          predictions/<exp>/<variant>/metrics.json; description fidelity from
                     interpret/<exp>/<variant>/experts.json when the metrics lack it [users]
    Table 11         interpret/<exp>/sparse/experts.json                         [users]
    Table 5, 6, 12   personalize/<exp>/<variant>/personalization.json            [attributes]
    Figure 8         personalize/<exp>/<variant>/personalization.json "by_n" (PNG made here)
    Table 13         personalize/<exp>/<variant>/personalization.json            [users]
    Table 8          grid/grid.csv (optional, written by `smoe grid`)

These are the stages' full results; the DVC metrics files under metrics/ hold only the key
numbers (what `dvc exp show` displays) and are not read here. Written into the report
folder: ``REPORT.md``, ``figures/`` (the PNGs it links: copied, or drawn here for Fig. 2, 7
and 8), ``personalization-<exp>.md`` (the personalization tables of each personalization
experiment) and ``steering-<exp>.json`` (the paired t-tests).

Numbers follow the paper: accuracies, purity, specialization, flip rates and personalization
scores in percent with 2 decimals; entropies and correlations with 3 decimals; category
coverage and description fidelity with 2. A "-" is a metric that does not apply (the single
head has no router) or that the metrics file does not hold.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from pipeline import figures as F
from pipeline import metrics as M
from pipeline.errors import UserError

# Row order and display names of the paper's tables; unknown variants follow, sorted.
LABELS = {"single": "Single Reward", "hyre": "HyRe", "vanilla": "Vanilla MoE", "micro": "MiCRo",
          "random": "Random", "sparse": "Sparse MoE"}
# Heads without an input-dependent router. Their routing metrics exist in the files (the
# single head's entropy is 0, HyRe's uniform weights give 1) but mean nothing: "-".
UNROUTED = ("single", "hyre")
ROUTED = ("vanilla", "micro", "sparse")
VARIANTS = ("single", "hyre", "vanilla", "micro", "sparse")
# Table 8 marks (in bold) the models that did not collapse: confident per-input routing
# (low routing entropy) that still spreads over the experts (high global entropy).
COLLAPSE_THRESHOLD = 0.5


class ReportError(UserError, FileNotFoundError):
    """A core input (the Table 1 experiment's metrics) is missing. A FileNotFoundError, so
    the CLI reports it in one line."""


# ---------------------------------------------------------------------------- formatting

def _absent(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: Any, signed: bool = False) -> str:
    """A fraction as percent with 2 decimals (``0.6962`` -> ``69.62``), "-" when absent."""
    if _absent(x):
        return "-"
    return _no_negative_zero(f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}")


def num(x: Any, digits: int = 3) -> str:
    """A plain number with ``digits`` decimals, "-" when absent."""
    return "-" if _absent(x) else _no_negative_zero(f"{x:.{digits}f}")


def _no_negative_zero(text: str) -> str:
    # -0.0004 rounds to "-0.00", which reads as a (tiny) negative result.
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _with_change(value: Any, change: Any) -> str:
    """The paper's "score (change)" cell, e.g. ``74.04 (+43.27)``."""
    if _absent(change):
        return pct(value)
    return f"{pct(value)} ({pct(change, signed=True)})"


def _cell(text: Any) -> str:
    # A "|" would end the cell and a newline the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]], right: int = 1) -> str:
    """A GitHub markdown table; every column from index ``right`` on is right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def label(name: str) -> str:
    return LABELS.get(name, name)


def ordered(names: Any) -> list[str]:
    """Model names in the paper's row order, unknown ones after, sorted."""
    names = list(names)
    return [n for n in LABELS if n in names] + sorted(n for n in names if n not in LABELS)


def natural_key(text: str) -> list[Any]:
    """Sort key under which ``user_10`` follows ``user_9``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def _models(results: dict[str, Any]) -> list[str]:
    # steering.json and personalization.json hold one entry per model plus "settings".
    return ordered(m for m in results if m != "settings")


# ---------------------------------------------------------------------------- tables

def table1(metrics: dict[str, dict[str, Any]]) -> str:
    """Table 1: model behaviour and interpretability on the categories data, one row per
    variant (``metrics``: variant -> its metrics JSON)."""
    header = ["Method", "Accuracy (↑)", "Routing Entropy (↓)", "Expert Correlation (↓)", "Category Coverage (↑)",
              "Expert Purity (↑)", "Expert Specialization (↑)"]
    rows = []
    for name in ordered(metrics):
        m = metrics[name]
        get = (lambda key: None) if name in UNROUTED else m.get
        rows.append([label(name), pct(m.get("accuracy")), num(get("routing_entropy")), num(get("expert_correlation")),
                     num(get("category_coverage"), 2), pct(get("expert_purity")), pct(get("expert_specialization"))])
    return markdown_table(header, rows)


def _categories(metrics: dict[str, Any]) -> list[str]:
    # The paper lists the largest category first; ties by name keep the order stable.
    per = metrics.get("per_category") or {}
    return sorted(per, key=lambda c: (-per[c].get("num_pairs", 0), natural_key(c)))


def table9(metrics: dict[str, Any], single: dict[str, Any] | None = None) -> str:
    """Table 9: per-category accuracy, routing/global entropy and expert correlation of one
    variant, with the change against the single head in parentheses (where ``single``
    holds the accuracy: overall, and per category under ``per_category``)."""
    single = single or {}
    single_per = single.get("per_category") or {}
    header = ["Category", "# Examples", "Accuracy (↑)", "Routing Entropy (↓)", "Global Entropy (↑)",
              "Expert Correlation (↓)"]
    rows = []
    for name, m, base in ([(c, metrics["per_category"][c], single_per.get(c, {}).get("accuracy"))
                           for c in _categories(metrics)] + [("Overall", metrics, single.get("accuracy"))]):
        accuracy = m.get("accuracy")
        change = None if _absent(accuracy) or _absent(base) else accuracy - base
        rows.append([name, str(m.get("num_pairs", "-")), _with_change(accuracy, change), num(m.get("routing_entropy")),
                     num(m.get("global_entropy")), num(m.get("expert_correlation"))])
    return markdown_table(header, rows)


def table10(metrics: dict[str, Any]) -> str:
    """Table 10: per category and expert, "expert accuracy / mean routing weight" (both in
    percent); the header names each expert's assigned category as in the paper's Table 2."""
    experts = metrics.get("experts") or {}
    k = int(metrics.get("num_experts") or len(experts.get("accuracy", [])))
    assigned = experts.get("category") or [None] * k
    header = ["Category"] + [f"Expert {i}" + (f" ({assigned[i]})" if assigned[i] else "") for i in range(k)]

    def cells(accuracy: list[float] | None, weight: list[float] | None) -> list[str]:
        accuracy, weight = accuracy or [None] * k, weight or [None] * k
        return [f"{pct(accuracy[i])} / {pct(weight[i])}" for i in range(k)]

    rows = [[c] + cells(metrics["per_category"][c].get("expert_accuracy"),
                        metrics["per_category"][c].get("expert_routing_weight")) for c in _categories(metrics)]
    rows.append(["Overall"] + cells(experts.get("accuracy"), experts.get("mean_routing_weight")))
    return markdown_table(header, rows)


def table4(metrics: dict[str, dict[str, Any]], random_from: str = "sparse") -> str:
    """Table 4: accuracy, description fidelity and expert specialization per variant, plus
    the random baseline (the ``random_from`` router's weights on shuffled examples)."""
    rows_by_name = {}
    for name, m in metrics.items():
        get = (lambda key: None) if name in UNROUTED else m.get
        rows_by_name[name] = [label(name), pct(m.get("accuracy")), num(get("description_fidelity"), 2),
                              pct(get("expert_specialization"))]
    if random_from in metrics:  # no specialization for the random baseline: it has no experts of its own
        rows_by_name["random"] = [label("random"), "-", num(metrics[random_from].get("description_fidelity_random"), 2), "-"]
    header = ["Method", "Accuracy (↑)", "Description Fidelity (↑)", "Expert Specialization (↑)"]
    return markdown_table(header, [rows_by_name[n] for n in ordered(rows_by_name)])


def table11(experts: dict[str, Any]) -> str:
    """Table 11: every expert's description, description fidelity and specialization, from
    interpret's ``experts.json``, by expert id."""
    rows_in = sorted(experts.get("experts", []), key=lambda e: e["id"])
    with_category = any(e.get("category") for e in rows_in)
    header = ["ID"] + (["Category"] if with_category else []) + [
        "Natural Language Description", "Description Fidelity (↑)", "Expert Specialization (↑)"]
    rows = [[str(e["id"])] + ([e.get("category") or "-"] if with_category else []) +
            [e.get("description", "-"), num(e.get("fidelity"), 2), pct(e.get("specialization"))] for e in rows_in]
    return markdown_table(header, rows, right=len(header) - 2)


def _weights(results: dict[str, Any], key: str) -> list[str]:
    configured = (results.get("settings") or {}).get("weights")
    if configured:
        return [str(w) for w in configured]
    found = {w for m in _models(results) for w in results[m].get(key, {})}
    return sorted(found, key=float)


def _steering_table(steering: dict[str, Any], key: str, arrow: str, t_test: bool) -> str:
    weights = _weights(steering, key + "_by_weight")
    reference = (steering.get("settings") or {}).get("reference", "sparse")
    header = ["Method", f"Average ({arrow})"] + [f"w = {w}" for w in weights]
    if t_test:
        header += [f"t vs {label(reference)}", "p-value"]
    rows = []
    for name in _models(steering):
        r = steering[name]
        row = [label(name), pct(r.get(key))] + [pct(r.get(key + "_by_weight", {}).get(w)) for w in weights]
        if t_test:
            test = r.get("t_test_vs_" + reference) or {}
            row += [num(test.get("t"), 2), "-" if _absent(test.get("p_value")) else f"{test['p_value']:.3g}"]
        rows.append(row)
    return markdown_table(header, rows)


def figure2_table(steering: dict[str, Any]) -> str:
    """Figure 2 as a table: each model's flip rate averaged over attributes and weights
    (the left panel), per target-expert weight (the right panel) and its paired t-test
    against the sparse model across attributes."""
    return _steering_table(steering, "flip_rate", "↑", t_test=True)


def figure7_table(steering: dict[str, Any]) -> str:
    """Figure 7 as a table: the undesired flip rate, averaged and per weight."""
    return _steering_table(steering, "undesired_flip_rate", "↓", t_test=False)


def with_t_tests(steering: dict[str, Any]) -> dict[str, Any]:
    """``steering`` (model -> its results, as merged from the per-variant steer files) with
    each other model's paired t-test across attributes against the reference model
    (``settings.reference``, the paper's sparse) added as ``t_test_vs_<reference>``
    (:func:`pipeline.metrics.paired_t_test` on the per-attribute flip rates). Models without
    per-attribute results keep what they have."""
    reference = (steering.get("settings") or {}).get("reference", "sparse")
    ref = (steering.get(reference) or {}).get("per_attribute")
    out = {name: dict(r) if name != "settings" else r for name, r in steering.items()}
    if ref is not None:
        for name in _models(steering):
            if name != reference and steering[name].get("per_attribute") is not None:
                out[name]["t_test_vs_" + reference] = M.paired_t_test(ref, steering[name]["per_attribute"])
    return out


def t_tests(steering: dict[str, Any]) -> dict[str, Any]:
    """The paired t-tests of :func:`with_t_tests`, for ``steering-<exp>.json``."""
    reference = (steering.get("settings") or {}).get("reference", "sparse")
    key = "t_test_vs_" + reference
    return {"reference": reference, "t_tests": {m: steering[m][key] for m in _models(steering) if key in steering[m]}}


def steering_figure(steering: dict[str, Any], key: str, path: Path) -> Path:
    """Fig. 2 (``key`` flip_rate) or Fig. 7 (undesired_flip_rate): the rate against the
    target expert's weight w, one line per model."""
    weights = _weights(steering, key + "_by_weight")
    series = {label(m): [steering[m].get(key + "_by_weight", {}).get(w, math.nan) for w in weights]
              for m in _models(steering)}
    title = ("Flip rate vs target-expert weight (Fig. 2)" if key == "flip_rate"
             else "Undesired flip rate vs target-expert weight (Fig. 7)")
    return F.line_plot([float(w) for w in weights], series, title, path, xlabel="target expert weight w",
                       ylabel=key.replace("_", " "), ylim=(0, 1))


def _adapted(name: str, r: dict[str, Any]) -> bool:
    # The single head is not adapted (method "none"): the paper prints its score alone.
    return r.get("method", "none" if name == "single" else "hedge") != "none"


def _groups(personalization: dict[str, Any]) -> list[str]:
    found = {g for m in _models(personalization) for g in personalization[m].get("by_group", {})}
    return sorted(found, key=natural_key)


def _score(name: str, r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    return _with_change(r.get("accuracy"), r.get("gain") if _adapted(name, r) else None)


def table5(personalization: dict[str, Any]) -> str:
    """Table 5 (overall): per model, accuracy before and after adapting to each group
    (mean over groups), and the change, each after adaptation +- its std over seeds."""
    header = ["Method", "Before Adaptation", "After Adaptation (↑)", "Change (↑)"]
    rows = []
    for name in _models(personalization):
        r = personalization[name]
        if _adapted(name, r):
            rows.append([label(name), pct(r.get("accuracy_before")), f"{pct(r.get('accuracy'))} ± {pct(r.get('accuracy_std'))}",
                         f"{pct(r.get('gain'), signed=True)} ± {pct(r.get('gain_std'))}"])
        else:
            rows.append([label(name), pct(r.get("accuracy_before", r.get("accuracy"))), "-", "-"])
    return markdown_table(header, rows)


def table12(personalization: dict[str, Any], group_label: str = "Attribute") -> str:
    """Table 12: one row per group (attribute), one column per model, "accuracy (change)"."""
    models = _models(personalization)
    rows = [[g] + [_score(m, personalization[m].get("by_group", {}).get(g)) for m in models]
            for g in _groups(personalization)]
    rows.append(["Overall"] + [_score(m, personalization[m]) for m in models])
    return markdown_table([group_label] + [label(m) for m in models], rows)


def table13(personalization: dict[str, Any]) -> str:
    """Table 13: one row per model, one column per group (user), "accuracy (change)"."""
    groups = _groups(personalization)
    rows = [[label(m)] + [_score(m, personalization[m].get("by_group", {}).get(g)) for g in groups] +
            [_score(m, personalization[m])] for m in _models(personalization)]
    return markdown_table(["Method"] + groups + ["Overall"], rows)


def table6(personalization: dict[str, Any], variant: str = "sparse", group_label: str = "Attribute") -> str:
    """Table 6: per group, the expert of ``variant`` whose mean routing weight rose most
    after adaptation, with its description from interpret."""
    by_group = personalization[variant].get("by_group", {})
    rows = []
    for g in sorted(by_group, key=natural_key):
        r = by_group[g]
        k = r.get("most_upweighted_expert")
        shift = r.get("routing_weight_shift") or []
        rows.append([g, r.get("most_upweighted_description") or "-", "-" if k is None else str(k),
                     "-" if k is None or k >= len(shift) else f"{shift[k]:+.3f}"])
    return markdown_table([group_label, "Most Upweighted Expert", "ID", "Weight Shift"], rows, right=2)


def figure8_table(personalization: dict[str, Any]) -> str:
    """Figure 8 as a table: accuracy after adaptation (change) per adaptation-set size n."""
    sizes, models = _sizes(personalization), _models(personalization)
    rows = [[label(m)] + [_score(m, personalization[m].get("by_n", {}).get(n)) for n in sizes] for m in models]
    return markdown_table(["Method"] + [f"n = {n}" for n in sizes], rows)


def _sizes(personalization: dict[str, Any]) -> list[str]:
    sizes = (personalization.get("settings") or {}).get("sizes")
    if sizes:
        return [str(n) for n in sizes]
    return sorted({n for m in _models(personalization) for n in personalization[m].get("by_n", {})}, key=int)


def figure8(personalization: dict[str, Any], group: str, path: Path) -> Path:
    """Fig. 8: accuracy after adaptation against the adaptation-set size n, one line per
    model, with the std over seeds as error bars."""
    sizes, models = _sizes(personalization), _models(personalization)
    by_n = {m: personalization[m].get("by_n", {}) for m in models}
    return F.line_plot([int(n) for n in sizes],
                       {label(m): [by_n[m].get(n, {}).get("accuracy", math.nan) for n in sizes] for m in models},
                       f"Accuracy after adaptation vs n (Fig. 8), by {group}", path,
                       xlabel="adaptation pairs n", ylabel="accuracy (eval pairs)",
                       errors={label(m): [by_n[m].get(n, {}).get("accuracy_std", math.nan) for n in sizes]
                               for m in models})


GRID_COLUMNS = ("accuracy", "routing_entropy", "global_entropy", "expert_correlation", "expert_purity",
                "expert_specialization")


def read_grid_csv(path: str | Path) -> list[dict[str, Any]]:
    """The grid CSV's rows, numbers as floats (an empty or "nan" cell is None)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    row[key] = value if value not in ("", None) else None
                if isinstance(row[key], float) and math.isnan(row[key]):
                    row[key] = None
            rows.append(row)
    return rows


def table8(rows: list[dict[str, Any]], threshold: float = COLLAPSE_THRESHOLD) -> str:
    """Table 8: the lambda grid, sorted by (router, lambda_ls, lambda_gb, lambda_div). Rows
    that did not collapse (routing entropy < ``threshold`` < global entropy) are bold."""
    routers = sorted({str(r.get("router")) for r in rows if r.get("router") is not None})
    show_router = len(routers) > 1  # one router: the column says nothing

    def key(r: dict[str, Any]) -> tuple:
        return (str(r.get("router")),) + tuple(r.get(k) if r.get(k) is not None else math.inf
                                               for k in ("lambda_ls", "lambda_gb", "lambda_div"))

    header = (["Router"] if show_router else []) + ["λls", "λgb", "λdiv", "Accuracy (↑)", "Routing Entropy (↓)",
                                                    "Global Entropy (↑)", "Expert Correlation (↓)",
                                                    "Expert Purity (↑)", "Expert Specialization (↑)"]
    out = []
    for r in sorted(rows, key=key):
        cells = ([str(r.get("router"))] if show_router else []) + [num(r.get(k), 2) for k in ("lambda_ls", "lambda_gb", "lambda_div")]
        cells += [pct(r.get("accuracy")), num(r.get("routing_entropy")), num(r.get("global_entropy")),
                  num(r.get("expert_correlation")), pct(r.get("expert_purity")), pct(r.get("expert_specialization"))]
        healthy = not _absent(r.get("routing_entropy")) and not _absent(r.get("global_entropy")) and \
            r["routing_entropy"] < threshold < r["global_entropy"]
        out.append([f"**{c}**" for c in cells] if healthy else cells)
    return markdown_table(header, out, right=1 if show_router else 0)


# ---------------------------------------------------------------------------- loading

class DamagedResultError(UserError, ValueError):
    """A stage's output that the report reads is not what the stage writes."""


def _read_json(path: Path) -> dict[str, Any] | None:
    # The pipeline writes NaN for undefined metrics (allow_nan); json reads it back as nan.
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedResultError(f"{path}: damaged, not valid JSON ({e}); re-run the stage that writes it "
                                 f"(`dvc repro`), or restore it with `dvc checkout {path}`") from None


def single_accuracy_by_category(predictions: Path) -> dict[str, dict[str, float]] | None:
    """Per-category accuracy of a head from its per-pair predictions (Parquet with
    ``category`` and ``correct`` columns), as ``{category: {"accuracy": a}}``."""
    if not predictions.exists():
        return None
    import pyarrow.parquet as pq  # only this fallback needs it

    try:
        table = pq.ParquetFile(predictions).read(columns=["category", "correct"], use_threads=False).to_pydict()
    except (OSError, KeyError, ValueError) as e:  # pyarrow's errors subclass these
        raise DamagedResultError(f"{predictions}: unreadable ({type(e).__name__}: {e}); re-run evaluate "
                                 f"(`dvc repro`), or restore it with `dvc checkout {predictions}`") from None
    totals: dict[str, list[int]] = {}
    for category, correct in zip(table["category"], table["correct"]):
        if category is not None:
            t = totals.setdefault(category, [0, 0])
            t[0] += bool(correct)
            t[1] += 1
    return {c: {"accuracy": right / n} for c, (right, n) in totals.items()} or None


def merge_variants(files: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """One results dict (model -> results, plus ``settings``) from the per-variant files of
    a stage (each ``{variant: ..., [other models: ...,] "settings": {..., "variant": v}}``),
    and whether their settings disagree (apart from the variant itself): then the variants
    were not run on the same setup and their comparison is not paired."""
    merged: dict[str, Any] = {}
    settings = []
    for content in files.values():
        settings.append({k: v for k, v in (content.get("settings") or {}).items() if k != "variant"})
        merged.update({m: r for m, r in content.items() if m != "settings"})
    if settings:
        merged["settings"] = settings[0]
    return merged, any(s != settings[0] for s in settings[1:])


class _Builder:
    """Collects the report's markdown and its figures."""

    def __init__(self, data_dir: Path, out_dir: Path):
        self.data_dir, self.out_dir = data_dir, out_dir
        self.figures = out_dir / "figures"
        self.parts: list[str] = []

    def add(self, *blocks: str) -> None:
        self.parts.extend(blocks)

    def missing(self, rel: str, how: str) -> str:
        return f"> **Missing input:** `{self.data_dir / rel}` ({how})."

    def json(self, rel: str) -> dict[str, Any] | None:
        return _read_json(self.data_dir / rel)

    def variants(self, pattern: str, variants: tuple[str, ...]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """``pattern`` (with ``{v}``) read for each variant: (found by variant, missing path by variant)."""
        found, absent = {}, {}
        for v in variants:
            content = self.json(pattern.format(v=v))
            if content is None:
                absent[v] = pattern.format(v=v)
            else:
                found[v] = content
        return found, absent

    def figure(self, rel: str, caption: str, how: str) -> str:
        """Copy ``rel`` into the report folder and return its image link (relative to
        REPORT.md), or the note naming the missing file."""
        source = self.data_dir / rel
        if not source.exists():
            return self.missing(rel, how)
        name = rel.removeprefix("plots/").replace("/", "-")
        self.figures.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.figures / name)
        return f"![{caption}](figures/{name})"

    def plot(self, name: str, caption: str, draw: Callable[[Path], Path]) -> str:
        """Draw a figure into the report folder (``draw(path)``) and return its image link."""
        self.figures.mkdir(parents=True, exist_ok=True)
        draw(self.figures / name)
        return f"![{caption}](figures/{name})"

    def table(self, title: str, render: Callable[[], str], caption: str | None = None, level: int = 3) -> None:
        self.add(self.render_table(title, render, caption, level))

    @staticmethod
    def render_table(title: str, render: Callable[[], str], caption: str | None = None, level: int = 3) -> str:
        return f"{'#' * level} {title}\n\n" + render() + ("\n\n" + f"*{caption}*" if caption else "")


def _load_metrics(b: _Builder, experiment: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    return b.variants(f"predictions/{experiment}/{{v}}/metrics.json", VARIANTS)


def _absent_note(b: _Builder, absent: dict[str, str], how: str) -> list[str]:
    """A note per missing per-variant file; ``how`` (with ``{v}``) says how to make it."""
    return [b.missing(rel, how.format(v=v)) for v, rel in absent.items()]


def _mismatch_note(stage: str, experiment: str) -> str:
    return (f"> **Note:** the `{stage}` results of `{experiment}` were made with different settings per variant "
            f"(see each file's `settings`); rerun `{stage}` for every variant to compare them on the same setup.")


def _heatmaps(b: _Builder, experiment: str, metrics: dict[str, dict[str, Any]]) -> None:
    for v in ordered(v for v in metrics if v in ROUTED):
        how = f"run `smoe evaluate {experiment} {v}`"
        links = []
        if metrics[v].get("per_category"):  # the category heatmap exists only with categories
            links.append(b.figure(f"plots/eval/{experiment}/{v}/routing_by_category.png",
                                  f"{label(v)}: mean routing weight by category", how))
        links.append(b.figure(f"plots/eval/{experiment}/{v}/expert_correlation.png",
                              f"{label(v)}: correlation of expert margins", how))
        b.add(f"**{label(v)}**", "\n".join(links))


def _personalization(b: _Builder, experiment: str, group: str, variant: str) -> tuple[list[str], list[str]]:
    """The personalization section of one experiment: (the blocks REPORT.md shows: the
    paper's selection, Tables 5, 6, 12 by attribute or 13 by user, and Fig. 8; the blocks
    of ``personalization-<exp>.md``: every table, Table 6 for every adapted MoE head)."""
    how = f"run `smoe personalize {experiment} {{v}}`"
    files, absent = b.variants(f"personalize/{experiment}/{{v}}/personalization.json", VARIANTS)
    notes = _absent_note(b, absent, how)
    if not files:
        return notes, notes
    results, mismatched = merge_variants(files)
    if mismatched:
        notes.append(_mismatch_note("personalize", experiment))
    settings = results.get("settings") or {}
    skipped = next((results[m].get("skipped_groups") for m in _models(results) if results[m].get("skipped_groups")), None)
    if skipped:  # the paper's group filter: say how many were left out and why
        notes.append(f"*{len(skipped)} {group}(s) left out by the group filter: "
                     + "; ".join(f"{g} ({why})" for g, why in sorted(skipped.items())) + ".*")
    setup = (f"Adapted on n = {(settings.get('sizes') or ['?'])[-1]} pairs per {group}, "
             f"mean over seeds {settings.get('seeds', '?')}")
    change = f"{setup}; in parentheses: the change against the same model before adaptation."
    g_label = group.capitalize()
    t = _Builder.render_table
    overall = t(f"Table 5: {group}-level personalization (overall)", lambda: table5(results),
                f"{setup} and over {group}s; ± is the std over seeds.", level=4)
    per_group = (t(f"Table 12: personalization per {group}", lambda: table12(results, g_label), change, level=4)
                 if group == "attribute" else
                 t(f"Table 13: personalization per {group}", lambda: table13(results), change, level=4))
    by_size = t("Figure 8: accuracy against adaptation-set size", lambda: figure8_table(results),
                f"Mean over {group}s and seeds; in parentheses: the change against the model before adaptation.", level=4)
    for m in _models(results):  # Table 6's descriptions: interpret's, joined here (personalize never reads them)
        experts = (b.json(f"interpret/{experiment}/{m}/experts.json") or {}).get("experts", [])
        descriptions = {int(e["id"]): str(e["description"]) for e in experts if "id" in e and "description" in e}
        for row in results[m].get("by_group", {}).values():
            k = row.get("most_upweighted_expert")
            row.setdefault("most_upweighted_description", descriptions.get(k) if k is not None else None)
    upweighted = {m: t(f"Table 6: most upweighted expert of {label(m)} per {group}", lambda m=m: table6(results, m, g_label),
                       "The expert whose mean routing weight on the evaluation pairs rose most after adaptation.", level=4)
                  for m in _models(results) if results[m].get("method") == "hedge"}
    image = b.plot(f"personalize-{experiment}-adaptation_size.png", f"accuracy against adaptation-set size, by {group}",
                   lambda path: figure8(results, group, path))
    if group == "attribute":
        shown = [overall] + ([upweighted[variant]] if variant in upweighted else []) + [per_group, by_size]
    else:
        shown = [per_group, by_size]
    return notes + shown + [image], notes + [overall, per_group, *upweighted.values(), by_size, image]


def build_report(data_dir: Path, out_dir: Path, *, category_experiment: str = "categories",
                 interpret_experiment: str = "users", steer_experiment: str = "attributes",
                 attribute_experiment: str = "attributes", user_experiment: str = "users",
                 variant: str = "sparse", grid_csv: Path | None = None) -> Path:
    """Write ``out_dir/REPORT.md``, its PNGs into ``out_dir/figures`` (copied, or drawn here:
    Fig. 2, 7, 8 across variants), ``out_dir/personalization-<exp>.md`` per personalization
    experiment and ``out_dir/steering-<exp>.json`` (the paired t-tests); returns the
    report's path. ``variant`` is the model of Tables 6, 9, 10 and 11 (the paper: sparse).
    Absent optional inputs become a note naming the file; a missing Table 1 experiment
    (no metrics at all) raises :class:`ReportError` before anything is written."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    grid_csv = Path(grid_csv) if grid_csv is not None else data_dir / "grid" / "grid.csv"
    b = _Builder(data_dir, out_dir)

    categories, absent = _load_metrics(b, category_experiment)
    if not categories:
        raise ReportError(f"no metrics under {data_dir / 'predictions' / category_experiment}: expected "
                          f"{', '.join(v + '/metrics.json' for v in VARIANTS)}; run `smoe evaluate {category_experiment} <variant>` first")
    out_dir.mkdir(parents=True, exist_ok=True)

    b.add("# Sparse MoE reward models: results",
          f"Regenerated by `smoe report` from `{data_dir}`: the paper's tables and figures on this pipeline's "
          f"experiments. Category recovery on `{category_experiment}`, interpretability on `{interpret_experiment}`, "
          f"steering on `{steer_experiment}`, attribute-level personalization on `{attribute_experiment}`, "
          f"user-level on `{user_experiment}`. Scores are percentages except entropies, correlations, category "
          "coverage and description fidelity; \"-\" marks a metric that does not apply or was not measured.")

    # ---- §5.1 category recovery
    b.add(f"## 1. Category recovery (`{category_experiment}`)", *_absent_note(b, absent, f"run `smoe evaluate {category_experiment} {{v}}`"))
    b.table("Table 1: model behaviour and interpretability", lambda: table1(categories),
            "Expert purity and specialization are on each expert's assigned category (the majority category of its "
            "top validation examples).")
    b.add("### Routing heatmaps")
    _heatmaps(b, category_experiment, categories)
    chosen = categories.get(variant)
    if chosen is None or not chosen.get("per_category"):
        b.add("### Tables 9 and 10", b.missing(f"predictions/{category_experiment}/{variant}/metrics.json", "with per-category metrics; "
                                                f"run `smoe evaluate {category_experiment} {variant}` on data with categories"))
    else:
        single = dict(categories.get("single") or {})
        if not single.get("per_category"):  # the single head's metrics carry no per-category table
            single["per_category"] = single_accuracy_by_category(
                data_dir / "predictions" / category_experiment / "single" / "predictions.parquet") or {}
        b.table(f"Table 9: category-level results of {label(variant)}", lambda: table9(chosen, single),
                "In parentheses: the change in accuracy against the single-head reward model." +
                ("" if single["per_category"] else " (Per category unavailable: no single-head predictions.)"))
        b.table(f"Table 10: expert accuracy / routing weight of {label(variant)}", lambda: table10(chosen),
                "Each cell: the expert's accuracy on the category / its mean routing weight there (percent). "
                "In the header: the category assigned to each expert.")

    # ---- §5.2 attribute steering
    b.add(f"## 2. Attribute steering (`{steer_experiment}`)")
    files, absent = b.variants(f"steer/{steer_experiment}/{{v}}.json", ROUTED)
    b.add(*_absent_note(b, absent, f"run `smoe steer {steer_experiment} {{v}}`"))
    if files:
        merged, mismatched = merge_variants(files)
        if mismatched:
            b.add(_mismatch_note("steer", steer_experiment))
        steering = with_t_tests(merged)
        (out_dir / f"steering-{steer_experiment}.json").write_text(
            json.dumps(t_tests(steering), indent=2, sort_keys=True) + "\n")
        b.table("Figure 2: flip rate", lambda: figure2_table(steering),
                "Flip rate: the share of pairs wrong with the target expert removed that setting its weight to w "
                "makes right, averaged over attributes (Eq. 16); the t-test is paired across attributes.")
        b.add(b.plot(f"steer-{steer_experiment}-flip_rate.png", "Figure 2: flip rate against w",
                     lambda path: steering_figure(steering, "flip_rate", path)))
        b.table("Figure 7: undesired flip rate", lambda: figure7_table(steering),
                "The share of pairs right with the target expert removed that steering makes wrong (lower is better).")
        b.add(b.plot(f"steer-{steer_experiment}-undesired_flip_rate.png", "Figure 7: undesired flip rate against w",
                     lambda path: steering_figure(steering, "undesired_flip_rate", path)))

    # ---- §6.1 interpretability
    b.add(f"## 3. Interpretability (`{interpret_experiment}`)")
    if interpret_experiment == category_experiment:  # already loaded, its absent files already noted
        interp = categories
    else:
        interp, absent = _load_metrics(b, interpret_experiment)
        b.add(*_absent_note(b, absent, f"run `smoe evaluate {interpret_experiment} {{v}}`"))
    experts = {v: b.json(f"interpret/{interpret_experiment}/{v}/experts.json") for v in ROUTED}
    if interp:
        # description fidelity is interpret's (its experts.json), joined to evaluate's metrics here
        interp = {v: ({**{k: experts[v][k] for k in ("description_fidelity", "description_fidelity_random")
                          if experts.get(v) and k in experts[v]}, **m}) for v, m in interp.items()}
        kind = (experts.get(variant) or {}).get("specialization_kind")
        b.table("Table 4: interpretability", lambda: table4(interp, random_from=variant),
                "Description fidelity: correlation between the judge's match verdicts and the router's weights "
                "(Eq. 20); Random: the same router on shuffled examples. Expert specialization: " +
                ("on each expert's assigned category." if kind == "category" else
                 "each expert's accuracy on its top 10% test examples minus all experts' mean there."))
    if experts.get(variant) is None:
        b.add(b.missing(f"interpret/{interpret_experiment}/{variant}/experts.json", f"run `smoe interpret {interpret_experiment} {variant}`"))
    else:
        e = experts[variant]
        b.table(f"Table 11: the experts of {label(variant)}", lambda: table11(e),
                f"Described by `{e.get('describer', '?')}`, judged by `{e.get('judge', '?')}`. Description fidelity "
                f"{num(e.get('description_fidelity'), 3)} overall (random baseline {num(e.get('description_fidelity_random'), 3)}).")
    if interpret_experiment != category_experiment:  # otherwise shown in section 1
        b.add("### Expert correlation")
        _heatmaps(b, interpret_experiment, interp)

    # ---- §6.2 personalization
    b.add("## 4. Personalization")
    for experiment, group in ((attribute_experiment, "attribute"), (user_experiment, "user")):
        shown, everything = _personalization(b, experiment, group, variant)
        b.add(f"### By {group} (`{experiment}`)", *shown)
        (out_dir / f"personalization-{experiment}.md").write_text(
            "\n\n".join([f"# Personalization by {group} (`{experiment}`)", *everything]) + "\n")

    # ---- App. C ablation grid
    b.add("## 5. Ablation of the regularization weights")
    if grid_csv.exists():
        b.table("Table 8: lambda grid", lambda: table8(read_grid_csv(grid_csv)),
                f"Bold: models that did not collapse (routing entropy < {COLLAPSE_THRESHOLD} < global entropy).")
    else:
        b.add(f"Table 8 is not included: `{grid_csv}` does not exist. Run `smoe grid` (the lambda_ls x lambda_gb "
              "x lambda_div ablation on the categories experiment), then `smoe report` again.")

    report = out_dir / "REPORT.md"
    report.write_text("\n\n".join(b.parts) + "\n")
    return report
