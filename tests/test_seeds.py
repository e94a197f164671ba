"""Seed-robustness summary (`smoe seeds`): which `dvc exp show --json` entries count, mean ± std, per-seed wins."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tooling.grid import GridError
from tooling.seeds import by_group, flatten, load_seed_runs, per_seed_table, seeds_report, summary_table, wins
from stages.cli import app  # the registered `smoe seeds`


def _entry(rev: str, seed: int | None, metrics: dict[str, dict] | None, *, lambda_div: float = 2.0,
           timestamp: str = "2026-01-01T00:00:00", name: str | None = None) -> dict:
    params = {"lambda_div": lambda_div, "train": {"epochs": 3, **({} if seed is None else {"seed": seed})}}
    files = {f"data/metrics/categories/{v}.json": {"data": m} for v, m in (metrics or {}).items()}
    files["data/metrics/users/sparse.json"] = {"data": {"accuracy": 0.1}}  # another experiment: ignored
    return {"rev": rev, "name": name, "data": {"rev": rev, "timestamp": timestamp,
                                              "params": {"params.yaml": {"data": params}}, "metrics": files}}


def _m(coverage: float, purity: float, accuracy: float) -> dict:
    return {"category_coverage": coverage, "expert_purity": purity, "accuracy": accuracy}


def _show() -> list:
    """HEAD (seed 0) with five experiments: seed 1 twice (the newer wins), seed 2, a lambda
    grid point (other params: skipped), a queued seed 3 and a failed seed 4."""
    head = _entry("a" * 40, 0, {"sparse": _m(1.0, 0.9, 0.70), "vanilla": _m(1.0, 0.7, 0.72), "single": {"accuracy": 0.71}})
    exps = [
        _entry("b" * 40, 1, {"sparse": _m(0.5, 0.1, 0.1), "vanilla": _m(0.5, 0.1, 0.1)}, name="old1",
               timestamp="2026-01-01T00:01:00"),
        _entry("c" * 40, 1, {"sparse": _m(0.75, 0.8, 0.68), "vanilla": _m(1.0, 0.9, 0.74), "single": {"accuracy": 0.70}},
               name="new1", timestamp="2026-01-01T00:02:00"),
        _entry("d" * 40, 2, {"sparse": _m(1.0, 1.0, 0.66), "vanilla": _m(0.75, 0.6, 0.70), "single": {"accuracy": 0.69}},
               name="s2"),
        _entry("e" * 40, 0, {"sparse": _m(0.25, 0.2, 0.5)}, lambda_div=1.0, name="grid"),
        _entry("f" * 40, 3, {"sparse": _m(0.0, 0.0, 0.0)}, name="queued3"),
        _entry("0" * 40, 4, {"sparse": _m(0.0, 0.0, 0.0)}, name="failed4"),
    ]
    executors = [None, None, None, None, {"state": "queued"}, {"state": "failed"}]
    head["experiments"] = [{"name": e["name"], "executor": x, "revs": [e]} for e, x in zip(exps, executors)]
    workspace = _entry("workspace", 9, {"sparse": _m(0.0, 0.0, 0.0)})
    return [workspace, head]


def test_flatten_gives_the_dotted_keys_of_dvc_exp_run_S():
    assert flatten({"a": 1, "train": {"seed": 0, "opt": {"lr": 0.1}}}) == {"a": 1, "train.seed": 0, "train.opt.lr": 0.1}


def test_load_seed_runs_keeps_the_reference_configuration_one_run_per_seed():
    runs, skipped = load_seed_runs(_show(), "categories")
    assert [(r.seed, r.name) for r in runs] == [(0, "aaaaaaa"), (1, "new1"), (2, "s2")]
    assert skipped == 1  # the lambda grid point; queued/failed/workspace are not runs at all
    assert runs[1].metrics["sparse"] == _m(0.75, 0.8, 0.68)
    assert set(runs[0].metrics) == {"sparse", "vanilla", "single"}


def test_mean_std_and_strict_wins_computed_by_hand():
    runs, _ = load_seed_runs(_show(), "categories")
    table = summary_table(runs, ["sparse", "vanilla", "single"], ("category_coverage", "accuracy"))
    # sparse coverage 1.0, 0.75, 1.0: mean 0.9167, sample std sqrt(0.041667 / 2) = 0.1443
    assert "| sparse | 0.917 ± 0.144 | 0.680 ± 0.020 |" in table
    assert "| vanilla | 0.917 ± 0.144 | 0.720 ± 0.020 |" in table
    assert "| single | n/a | 0.700 ± 0.010 |" in table
    # ties (seed 0: 1.0 vs 1.0) are not wins
    assert wins(runs, "sparse", "vanilla", "category_coverage") == (1, 3)
    assert wins(runs, "sparse", "vanilla", "expert_purity") == (2, 3)
    assert wins(runs, "sparse", "single", "category_coverage") == (0, 0)
    per_seed = per_seed_table(runs, ["sparse", "vanilla", "single"], "category_coverage")
    assert "single" not in per_seed  # a variant without the metric gets no column
    assert per_seed.splitlines()[-1] == "| sparse higher | — | 1/3 |"
    assert "| 1 | 0.750 | 1.000 |" in per_seed


def test_report_needs_the_reference_variant_and_the_seed_key():
    runs, _ = load_seed_runs(_show(), "categories")
    assert "# categories: 3 seeds (train.seed = 0, 1, 2)" in seeds_report(runs, "categories")
    with pytest.raises(GridError, match="hyre"):
        seeds_report(runs, "categories", reference="hyre")
    no_seed = [_entry("a" * 40, None, {"sparse": _m(1, 1, 1)})]
    with pytest.raises(GridError, match="no train.seed"):
        load_seed_runs(no_seed, "categories")
    assert len(load_seed_runs(_show(), "users")[0]) == 3  # users/sparse.json in every entry


def test_cli_prints_and_writes_the_summary_and_fails_in_one_line(tmp_path):
    show = tmp_path / "show.json"
    show.write_text(json.dumps(_show()))
    out = tmp_path / "seeds.md"
    result = CliRunner().invoke(app, ["seeds", "categories", "--from-json", str(show), "--out", str(out), "-m", "expert_purity"])
    assert result.exit_code == 0, result.output
    assert "## expert_purity per seed" in result.stdout and "category_coverage per seed" not in result.stdout
    assert "| sparse higher | — | 2/3 |" in result.stdout
    assert "skipped 1 finished run(s)" in result.stderr
    assert out.read_text() == result.stdout
    result = CliRunner().invoke(app, ["seeds", "attributes", "--from-json", str(show)])
    assert result.exit_code == 1 and result.stderr.startswith("error: no finished run has data/metrics/attributes")


def test_by_groups_runs_that_also_differ_in_a_second_param():
    # lambda_div stands in for the data seed: the grid point (lambda_div 1.0) is now a group
    runs, skipped = load_seed_runs(_show(), "categories", group_key="lambda_div")
    assert skipped == 0
    assert [(r.group, r.seed, r.name) for r in runs] == [(1.0, 0, "grid"), (2.0, 0, "aaaaaaa"), (2.0, 1, "new1"),
                                                         (2.0, 2, "s2")]
    groups = by_group(runs)
    assert [(value, [r.name for r in rs]) for value, rs in groups] == [(1.0, ["grid"]), (2.0, ["aaaaaaa", "new1", "s2"])]
    pooled = per_seed_table(runs, ["sparse", "vanilla"], "category_coverage")
    assert pooled.startswith("| group/seed |") and "| 1.0/0 | 0.250 | n/a |" in pooled and "| 2.0/1 | 0.750 | 1.000 |" in pooled
    with pytest.raises(GridError, match="no datasets.categories.seed"):
        load_seed_runs(_show(), "categories", group_key="datasets.categories.seed")


def test_cli_by_prints_one_summary_per_value_then_pooled(tmp_path):
    show = tmp_path / "show.json"
    show.write_text(json.dumps(_show()))
    result = CliRunner().invoke(app, ["seeds", "categories", "--from-json", str(show), "--by", "lambda_div"])
    assert result.exit_code == 0, result.output
    titles = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert titles == ["# categories, lambda_div = 1.0: 1 seeds (train.seed = 0)",
                      "# categories, lambda_div = 2.0: 3 seeds (train.seed = 0, 1, 2)",
                      "# categories, all 2 values of lambda_div pooled: 4 runs (train.seed = 1.0/0, 2.0/0, 2.0/1, 2.0/2 "
                      "as group/seed)"]
    assert "skipped" not in result.stderr
