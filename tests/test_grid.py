"""Grid-sweep summary (`smoe grid`): parsing `dvc exp show --json`, router health, table, heatmaps."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tooling.grid import (COLLAPSED_GLOBAL_ENTROPY, UNIFORM_ROUTING_ENTROPY, GridError, effective_experts,
                           grid_heatmap, grid_matrix, grid_table, load_points, router_health, write_grid_csv)
from stages import grid as grid_stage

METRICS_FILE = "data/metrics/categories/sparse.json"


def _data(rev: str, lambdas: tuple[float, float, float] | None, metrics: dict | None, *,
          timestamp: str | None = "2025-01-01T00:00:00", metrics_error: bool = False) -> dict:
    """The `data` block of one entry, shaped like DVC 3.67's output."""
    params = {"experiments": {"categories": {"dataset": "categories"}}}
    if lambdas is not None:
        params.update(dict(zip(("lambda_ls", "lambda_gb", "lambda_div"), lambdas)))
    if metrics_error:
        mfiles = {METRICS_FILE: {"error": {"type": "FileNotFoundError", "msg": "[Errno 2] No such file"}}}
    elif metrics is None:
        mfiles = {}
    else:
        mfiles = {METRICS_FILE: {"data": {"dataset": "categories", "per_category": {"A": {"accuracy": 0.6}}, **metrics}},
                  "data/metrics/categories/vanilla.json": {"data": {"accuracy": 0.01, "global_entropy": 0.99,
                                                                     "routing_entropy": 0.99}}}
    return {"rev": rev, "timestamp": timestamp, "params": {"params.yaml": {"data": params}}, "metrics": mfiles,
            "deps": {}, "outs": {}, "meta": {}}


def _m(acc: float, local: float, glob: float, corr: float = 0.1) -> dict:
    return {"accuracy": acc, "routing_entropy": local, "global_entropy": glob, "expert_correlation": corr,
            "expert_purity": 0.9, "expert_specialization": 0.05}


def _exp(name: str, rev: str, data: dict, *, state: str | None = None, error: bool = False) -> dict:
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {"returncode": None}}
    return {"revs": [{"rev": rev, "name": name, "data": data,
                      "error": {"msg": "Experiment run failed", "type": ""} if error else None,
                      "experiments": None}],
            "executor": executor, "name": name}


def exp_show_fixture() -> list:
    """workspace + a baseline commit (a grid point itself) + experiments in every state."""
    workspace = {"rev": "workspace", "name": None, "error": None, "experiments": None,
                 "data": _data("workspace", (0.0, 0.0, 0.0), _m(0.99, 0.5, 0.5), timestamp=None)}
    experiments = [
        # same lambdas as the baseline commit, finished later: replaces it
        _exp("rerun", "b" * 40, _data("b" * 40, (0.5, 0.5, 2.0), _m(0.70, 0.08, 0.93), timestamp="2025-01-02T00:00:00")),
        _exp("collapsed", "c" * 40, _data("c" * 40, (0.0, 0.0, 0.0), _m(0.60, 0.01, 0.05))),
        _exp("dense", "d" * 40, _data("d" * 40, (1.0, 0.0, 0.0), _m(0.74, 0.99, 1.0, corr=math.nan))),
        # lambda_div written as an int in params.yaml: still the same grid value as 1.0
        _exp("intdiv", "e" * 40, _data("e" * 40, (0.0, 0.0, 1), _m(0.65, 0.3, 0.8))),
        _exp("waiting", "f" * 40, _data("f" * 40, (1.0, 1.0, 2.0), None), state="queued"),
        _exp("broken", "9" * 40, _data("9" * 40, (1.0, 1.0, 1.0), None, metrics_error=True), state="failed", error=True),
        # a running experiment shows the metrics of the commit it started from: not its own
        _exp("busy", "8" * 40, _data("8" * 40, (0.0, 1.0, 0.0), _m(0.69, 0.08, 0.93)), state="running"),
        # not a grid point: the lambdas are missing
        _exp("nolambda", "7" * 40, _data("7" * 40, None, _m(0.5, 0.5, 0.5))),
    ]
    baseline = {"rev": "a" * 40, "name": "main", "error": None, "experiments": experiments,
                "data": _data("a" * 40, (0.5, 0.5, 2.0), _m(0.69, 0.077, 0.935))}
    return [workspace, baseline]


def test_load_points_from_dvc3_list():
    points = {p.name: p for p in load_points(exp_show_fixture(), METRICS_FILE)}
    assert set(points) == {"rerun", "collapsed", "dense", "intdiv", "waiting", "broken", "busy"}
    # workspace (0, 0, 0 with accuracy 0.99) was skipped: the (0, 0, 0) point is the experiment's
    assert points["collapsed"].metrics["accuracy"] == 0.60
    assert points["rerun"].metrics["accuracy"] == 0.70 and points["rerun"].rev == "b" * 40
    assert points["intdiv"].lambdas == {"lambda_ls": 0.0, "lambda_gb": 0.0, "lambda_div": 1.0}
    assert {n: p.status for n, p in points.items() if p.status != "ok"} == {
        "waiting": "queued", "broken": "failed", "busy": "running"}
    assert points["busy"].metrics == {} and points["broken"].metrics == {}
    # the chosen variant's file, not another metrics file of the same entry
    assert points["dense"].metrics["accuracy"] == 0.74
    assert not any(p.baseline for p in points.values())
    keys = [p.key for p in load_points(exp_show_fixture(), METRICS_FILE)]
    assert keys == sorted(keys)


def test_baseline_is_a_point_when_no_experiment_has_its_lambdas():
    data = exp_show_fixture()
    data[1]["experiments"] = [e for e in data[1]["experiments"] if e["name"] != "rerun"]
    points = {p.name: p for p in load_points(data, METRICS_FILE)}
    assert points["main"].baseline and points["main"].metrics["accuracy"] == 0.69
    # a single baseline entry (a dict with "rev") is accepted too
    assert [p.name for p in load_points(data[1], METRICS_FILE)][:1] == ["collapsed"]


def test_newest_of_same_lambdas_wins():
    data = exp_show_fixture()
    data[1]["experiments"].append(_exp("older", "5" * 40, _data("5" * 40, (0.5, 0.5, 2.0), _m(0.1, 0.5, 0.5),
                                                                timestamp="2024-06-01T00:00:00")))
    (point,) = [p for p in load_points(data, METRICS_FILE) if p.key == (0.5, 0.5, 2.0)]
    assert point.name == "rerun" and not point.baseline


def test_finished_point_beats_unfinished_rerun():
    data = exp_show_fixture()
    data[1]["experiments"].append(_exp("requeued", "6" * 40, _data("6" * 40, (0.0, 0.0, 0.0), None,
                                                                   timestamp="2026-01-01T00:00:00"), state="queued"))
    points = [p for p in load_points(data, METRICS_FILE) if p.key == (0.0, 0.0, 0.0)]
    assert [p.name for p in points] == ["collapsed"]


def test_other_metrics_file_and_path_spelling():
    points = load_points(exp_show_fixture(), "./data/metrics/categories/vanilla.json")
    assert {p.metrics.get("accuracy") for p in points if p.status == "ok"} == {0.01}


def test_load_points_dvc2_dict():
    data = {
        "workspace": {"baseline": {"data": _data("workspace", (9.0, 9.0, 9.0), _m(0.1, 0.1, 0.1))}},
        "a" * 40: {
            "baseline": {"data": {**_data("a" * 40, (0.5, 0.5, 2.0), _m(0.69, 0.077, 0.935)), "name": "main"}},
            "b" * 40: {"data": {**_data("b" * 40, (0.0, 0.0, 0.0), _m(0.6, 0.01, 0.05)), "name": "exp-1"}},
            "c" * 40: {"data": {**_data("c" * 40, (1.0, 0.0, 0.0), None), "name": "exp-2", "queued": True}},
        },
    }
    points = {p.name: p for p in load_points(data, METRICS_FILE)}
    assert set(points) == {"main", "exp-1", "exp-2"}
    assert points["exp-2"].status == "queued" and points["exp-1"].router == "collapsed"


def test_bad_input_raises():
    with pytest.raises(GridError):
        load_points("not json", METRICS_FILE)


def test_partial_collapse_counts_the_experts_in_use_and_needs_k():
    # K = 5: partial below K/2 = 2.5 experts in use, i.e. global entropy < log 2.5 / log 5
    edge = math.log(2.5) / math.log(5)
    assert effective_experts(0.43, 5) == pytest.approx(1.997, abs=1e-3)
    assert effective_experts(1.0, 5) == pytest.approx(5.0) and effective_experts(0.0, 5) == 1.0
    assert router_health(0.43, 0.1, num_experts=5) == "partial"
    assert router_health(edge - 1e-6, 0.1, num_experts=5) == "partial"
    assert router_health(edge + 1e-6, 0.1, num_experts=5) == "healthy"
    assert router_health(0.43, 0.1) == "healthy"                     # K unknown: not judged
    assert router_health(0.2, 0.1, num_experts=5) == "collapsed"     # collapse wins
    assert router_health(0.43, 0.1, num_experts=20) == "partial"     # 20 ** 0.43 = 3.6 of 20
    assert router_health(0.9, 0.1, num_experts=20) == "healthy"      # 14.8 of 20


def test_load_points_reads_k_of_the_metrics_files_experiment():
    data = _data("d" * 40, (0.5, 0.5, 2.0), _m(0.7, 0.1, 0.43))
    params = data["params"]["params.yaml"]["data"]
    params["experiments"] = {"categories": {"dataset": "categories", "num_experts": 5},
                             "users": {"dataset": "users", "num_experts": 20}}
    show = [{"rev": "d" * 40, "name": "main", "error": None, "experiments": None, "data": data}]
    (point,) = load_points(show, METRICS_FILE)
    assert point.num_experts == 5 and point.router == "partial"
    assert "| partial |" in grid_table([point])
    params["experiments"]["categories"].pop("num_experts")
    (point,) = load_points(show, METRICS_FILE)
    assert point.num_experts is None and point.router == "healthy"


def test_router_health_boundaries():
    eps = 1e-9
    assert router_health(COLLAPSED_GLOBAL_ENTROPY - eps, 0.1) == "collapsed"
    assert router_health(COLLAPSED_GLOBAL_ENTROPY, 0.1) == "healthy"
    assert router_health(0.9, UNIFORM_ROUTING_ENTROPY + eps) == "uniform"
    assert router_health(0.9, UNIFORM_ROUTING_ENTROPY) == "healthy"
    # the real `categories` sparse / micro / 1-expert heads
    assert router_health(0.935, 0.077) == "healthy"
    assert router_health(0.998, 0.99) == "uniform"
    assert router_health(0.0, 0.0) == "collapsed"
    assert router_health(0.5, 0.5, collapsed_below=0.6) == "collapsed"
    with pytest.raises(ValueError):
        router_health(math.nan, 0.5)


def test_grid_table_and_csv(tmp_path):
    points = load_points(exp_show_fixture(), METRICS_FILE)
    table = grid_table(points)
    lines = table.strip().splitlines()
    assert lines[0].split("|")[1:-1] == [f" {h} " for h in (
        "lambda_ls", "lambda_gb", "lambda_div", "accuracy", "routing entropy", "global entropy",
        "expert correlation", "purity", "specialization", "router")]
    assert len(lines) == 2 + 7
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
            for line in lines[2:]}
    assert rows[("0", "0", "0")] == ["0.600", "0.010", "0.050", "0.100", "0.900", "0.050", "collapsed"]
    assert rows[("1", "0", "0")][3] == "n/a" and rows[("1", "0", "0")][-1] == "uniform"
    assert rows[("0.5", "0.5", "2")][0] == "0.700" and rows[("0.5", "0.5", "2")][-1] == "healthy"
    assert rows[("1", "1", "2")] == ["n/a"] * 6 + ["queued"]
    assert rows[("1", "1", "1")][-1] == "failed"
    # sorted by the lambdas
    order = [tuple(float(x) for x in k) for k in rows]
    assert order == sorted(order)

    path = write_grid_csv(points, tmp_path / "out" / "grid.csv")
    with path.open() as f:
        records = list(csv.DictReader(f))
    assert len(records) == 7
    dense = next(r for r in records if r["name"] == "dense")
    assert dense["expert_correlation"] == "" and dense["router"] == "uniform" and float(dense["accuracy"]) == 0.74
    assert next(r for r in records if r["name"] == "waiting")["status"] == "queued"


def test_grid_matrix_and_heatmap(tmp_path):
    points = load_points(exp_show_fixture(), METRICS_FILE)
    matrix, rows, cols = grid_matrix(points, "accuracy")
    assert cols == ["div=0", "div=1", "div=2"]
    assert rows == ["ls=0, gb=0", "ls=0, gb=1", "ls=0.5, gb=0.5", "ls=1, gb=0", "ls=1, gb=1"]
    assert matrix[0, 0] == 0.60 and matrix[0, 1] == 0.65 and matrix[2, 2] == 0.70
    assert np.isnan(matrix[1, 0])  # running: no metrics of its own
    assert np.isnan(matrix[4]).all()  # queued and failed
    assert np.isnan(matrix[0, 2])  # never run
    path = grid_heatmap(points, "expert_purity", tmp_path / "h" / "purity.png")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(GridError):
        grid_heatmap([], "accuracy", tmp_path / "empty.png")


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(grid_stage.main)
    return app


def test_cli_from_json(tmp_path):
    src = tmp_path / "show.json"
    src.write_text(json.dumps(exp_show_fixture()))
    out = tmp_path / "grid"
    result = CliRunner().invoke(_cli(), ["--from-json", str(src), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| 0 | 0 | 0 | 0.600 |" in result.stdout
    assert {p.name for p in out.iterdir()} == {
        "grid.md", "grid.csv", "heatmap_accuracy.png", "heatmap_expert_purity.png",
        "heatmap_expert_specialization.png", "heatmap_routing_entropy.png"}
    assert (out / "grid.md").read_text() == grid_table(load_points(exp_show_fixture(), METRICS_FILE))


def test_cli_errors(tmp_path, monkeypatch):
    src = tmp_path / "show.json"
    src.write_text(json.dumps([exp_show_fixture()[0]]))  # the workspace alone: no grid points
    result = CliRunner().invoke(_cli(), ["--from-json", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no grid points" in result.output
    # not a DVC repository: dvc's own message, exit 1
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_cli(), ["--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "dvc exp show --json` failed" in result.output


STAGE = """\
import json, os, sys, yaml
p = yaml.safe_load(open("params.yaml"))
if p["lambda_div"] < 0:
    sys.exit(3)
os.makedirs("data/metrics/categories", exist_ok=True)
m = {"accuracy": 0.5 + 0.1 * p["lambda_ls"], "routing_entropy": 0.1, "global_entropy": 0.2 * p["lambda_div"],
     "expert_correlation": float("nan"), "expert_purity": 0.9, "expert_specialization": 0.01 * p["lambda_gb"]}
json.dump(m, open("data/metrics/categories/sparse.json", "w"))
"""

DVC_YAML = """\
stages:
  evaluate:
    cmd: python stage.py
    deps: [stage.py]
    params: [lambda_ls, lambda_gb, lambda_div]
    metrics:
      - data/metrics/categories/sparse.json:
          cache: false
"""


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_real_dvc_exp_show(tmp_path, monkeypatch):
    """A scratch git+DVC repo, three `dvc exp run -S` (one failing), then `smoe grid`."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=check)

    def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(sys.executable, "-m", "dvc", *args, check=check)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@example.com")
    sh("git", "config", "user.name", "t")
    dvc("init", "-q")
    (tmp_path / "params.yaml").write_text("lambda_ls: 0.5\nlambda_gb: 0.5\nlambda_div: 2.0\n")
    (tmp_path / "stage.py").write_text(STAGE)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    dvc("repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline")
    dvc("exp", "run", "-q", "-S", "lambda_div=1.0", "-n", "div1")
    dvc("exp", "run", "-q", "-S", "lambda_ls=0.0", "-S", "lambda_div=0.0", "-n", "collapse")
    # fails in the workspace: leaves only the (skipped) workspace entry changed
    assert dvc("exp", "run", "-q", "-S", "lambda_div=-1", "-n", "bad", check=False).returncode != 0
    sh("git", "checkout", "-q", "--", ".")
    dvc("exp", "run", "-q", "--queue", "-S", "lambda_gb=1.0", "-n", "later")

    show = json.loads(dvc("exp", "show", "--json").stdout)
    points = {p.name: p for p in load_points(show, METRICS_FILE)}
    assert set(points) == {"div1", "collapse", "later"} | {p.name for p in points.values() if p.baseline}
    assert points["div1"].lambdas == {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 1.0}
    assert points["div1"].metrics["global_entropy"] == pytest.approx(0.2) and points["div1"].router == "collapsed"
    assert points["collapse"].metrics["accuracy"] == pytest.approx(0.5)
    assert math.isnan(points["collapse"].metrics["expert_correlation"])
    assert points["later"].status == "queued"
    baseline = next(p for p in points.values() if p.baseline)
    assert baseline.key == (0.5, 0.5, 2.0) and baseline.router == "healthy"

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_cli(), ["--out", "summary"])
    assert result.exit_code == 0, result.output
    assert "| 0.5 | 0.5 | 2 | 0.550 | 0.100 | 0.400 | n/a | 0.900 | 0.005 | healthy |" in result.stdout
    assert "| 0.5 | 1 | 2 |" in result.stdout and "queued" in result.stdout
    assert (tmp_path / "summary" / "heatmap_accuracy.png").exists()
