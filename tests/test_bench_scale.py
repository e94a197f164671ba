"""`smoe bench scale` (tooling/bench_scale.py): one small run of the whole pipeline after
featurize, whose table and JSON must carry the figures the stages' own I/O counters wrote;
the wrapper's peak-RSS measurement; the refusals and the help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tooling.bench_scale import MIB, NAME, RSS_LIMIT_MIB, StageResult, measure, pipeline_stages

REPO = Path(__file__).resolve().parents[1]
STAGES = [name for name, _ in pipeline_stages()]


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """`smoe bench scale` on 2000 pairs at hidden 16, K = 4, one epoch, through the real
    command line. The project's params with lighter personalize / steer / interpret
    settings (the paper's need ~100 test pairs per cluster, i.e. ~5K pairs and a longer
    run), so the whole run takes about a minute."""
    tmp = tmp_path_factory.mktemp("bench-scale")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["personalize"].update(sizes=[5, 10], seeds=[0], min_pairs=20, epochs=2)
    params["steer"].update(min_pairs=20, random_repeats=2, top_n=20)
    params["interpret"].update(per_stratum=20, top_n=5)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    work, json_out = tmp / "work", tmp / "scale.json"
    proc = subprocess.run([sys.executable, "-m", "stages.cli", "bench", "scale", "--pairs", "2000", "--hidden", "16",
                           "--experts", "4", "--epochs", "1", "--workdir", str(work), "--keep",
                           "--params", str(tmp / "params.yaml"), "--json-out", str(json_out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, work, json.loads(json_out.read_text())


def test_every_stage_runs_and_is_measured(small_run):
    _, work, result = small_run
    assert [s["name"] for s in result["stages"]] == STAGES and result["failed"] is None
    for stage in result["stages"]:
        assert stage["returncode"] == 0 and stage["wall_s"] > 0
        # a Python process that imported torch: tens of MiB at least, and under the target
        assert 50 < stage["peak_rss_mib"] < RSS_LIMIT_MIB, stage
        assert Path(stage["log"]).is_file()
    # the stages really ran in the work folder, from its params
    assert (work / "data/stores" / NAME / "manifest.json").is_file()
    assert sorted(p.name for p in (work / "data/models" / NAME).iterdir()) == \
        ["hyre", "micro", "single", "sparse", "vanilla"]
    assert json.loads((work / "data/metrics" / NAME / "personalize-sparse.json").read_text())
    used = yaml.safe_load((work / "params.yaml").read_text())
    assert used["experiments"][NAME] == {"dataset": NAME, "num_experts": 4, "group_by": "category", "lambda_gb": 1.0}
    assert used["steer"]["label"] == "category" and used["train"]["epochs"] == 1
    assert used["scratch_dir"] == str(work / "scratch")


def test_cache_ratio_comes_from_the_stages_own_counters(small_run):
    _, work, result = small_run
    cache_size = _tree_bytes(work / "data/features" / NAME)
    assert result["cache_bytes"] == cache_size > 0
    io = {s["name"]: json.loads((work / "io" / f"{s['name'].replace(' ', '-')}.json").read_text())
          for s in result["stages"]}
    for stage in result["stages"]:
        assert stage["read_bytes"] == io[stage["name"]]["read_bytes"]
        assert stage["proc_io"] == io[stage["name"]]["proc_io"]
    cache_read = {name: stats["read_bytes"].get("cache", 0) for name, stats in io.items()}
    # one pass over the cache, by the stores stage; every later stage reads the stores only
    assert 0.9 * cache_size < cache_read["stores"] <= cache_size
    assert all(n == 0 for name, n in cache_read.items() if name != "stores"), cache_read
    assert all(io[name]["read_bytes"].get("stores", 0) > 0 for name in STAGES if name != "stores")
    total = sum(cache_read.values())
    assert result["totals"]["cache_bytes_read"] == total == cache_read["stores"]
    assert result["targets"]["cache_read"]["ratio"] == pytest.approx(total / cache_size)
    assert result["targets"]["cache_read"]["pass"] and result["targets"]["peak_rss"]["pass"]
    stores = next(s for s in result["stages"] if s["name"] == "stores")
    assert stores["output_bytes"] == _tree_bytes(work / "data/stores" / NAME)


def test_printed_table_has_the_json_figures(small_run):
    proc, _, result = small_run
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage ") and "peak RSS MiB" in line)
    rows = {line[:20].strip(): line[20:].split() for line in lines[header + 1:header + 2 + len(STAGES)]}
    assert list(rows) == [*STAGES, "total"]
    for stage in result["stages"]:
        r = StageResult(**stage)
        wall, rss, cache, stores, written, wchar, out = rows[r.name]
        assert float(wall) == round(r.wall_s, 1) and float(rss.replace(",", "")) == round(r.peak_rss_mib)
        assert float(cache.replace(",", "")) == round(r.cache_bytes / MIB, 1)
        assert float(stores.replace(",", "")) == round(r.stores_bytes / MIB, 1)
        assert float(wchar.replace(",", "")) == round(r.wchar_bytes / MIB, 1)
        assert float(out.replace(",", "")) == round(r.output_bytes / MIB, 1)
    ratio = result["targets"]["cache_read"]["ratio"]
    assert f"cache bytes read / cache size = {ratio:.3f}" in proc.stdout
    assert "PASS  peak RSS < 3 GiB in every stage" in proc.stdout
    assert "PASS  cache bytes read <= 2 x cache size: " in proc.stdout
    # a line per stage as it finishes, in order
    done = [line.split(":")[0] for line in lines if re.match(r"stage +\d+/\d+ .*: .*peak RSS", line)]
    assert done == [f"stage {i:>2}/{len(STAGES)} {name}" for i, name in enumerate(STAGES, 1)]


def test_wrapper_reports_the_childs_own_peak_not_the_launchers(tmp_path):
    """Linux hands a parent's peak RSS to a child across vfork + exec; the wrapper process
    that every stage is started from keeps that floor small."""
    ballast = b"x" * (400 * MIB)  # this process's peak: > 400 MiB

    def wrapped(code: str) -> float:
        out = tmp_path / "timing.json"
        subprocess.run([sys.executable, "-m", "tooling.bench_scale", "measure", str(out), "--", sys.executable, "-c",
                        code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        return json.loads(out.read_text())["maxrss_kib"] / 1024

    direct = subprocess.Popen([sys.executable, "-c", "pass"])
    _, _, usage = os.wait4(direct.pid, 0)
    direct.returncode = 0
    assert usage.ru_maxrss / 1024 > 400  # the naive measurement: the test process's peak
    assert wrapped("pass") < 100
    assert wrapped("b = b'x' * (200 * 2**20)") > 200
    assert measure(tmp_path / "fail.json", [sys.executable, "-c", "raise SystemExit(7)"]) == 7
    assert json.loads((tmp_path / "fail.json").read_text())["returncode"] == 7
    del ballast


def test_help_and_refusals(tmp_path):
    from stages.cli import app

    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["bench", "scale", "--help"], terminal_width=200).output.split())
    for words in ("stores", "personalize", "3 GiB", "2x the cache", "pairs x 3 x hidden x 2 bytes x 2", "over an hour"):
        assert words in help_text, words
    too_few = runner.invoke(app, ["bench", "scale", "--pairs", "100", "--params", str(REPO / "params.yaml"),
                                  "--workdir", str(tmp_path / "w")])
    assert too_few.exit_code == 2 and "too few" in too_few.output and not (tmp_path / "w").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    busy = runner.invoke(app, ["bench", "scale", "--pairs", "36000", "--params", str(REPO / "params.yaml"),
                               "--workdir", str(tmp_path / "full")])
    assert busy.exit_code != 0 and "not empty" in str(busy.exception or busy.output)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_a_failing_stage_is_named_with_its_log_and_the_work_folder_kept(tmp_path, monkeypatch):
    import tooling.bench_scale as bench_scale
    from stages.cli import app

    broken = ("train sparse", ["stages.train", NAME, "no-such-variant"])
    monkeypatch.setattr(bench_scale, "pipeline_stages", lambda: [broken, ("never runs", ["stages.train"])])
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["personalize"].update(sizes=[5], min_pairs=2)
    params["steer"].update(min_pairs=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    work, json_out = tmp_path / "work", tmp_path / "scale.json"
    result = CliRunner().invoke(app, ["bench", "scale", "--pairs", "200", "--hidden", "8", "--experts", "2",
                                      "--workdir", str(work), "--params", str(tmp_path / "params.yaml"),
                                      "--json-out", str(json_out)])
    assert result.exit_code == 1, result.output
    log = work / "logs" / "train-sparse.log"
    assert f"stage 'train sparse' failed (exit 2); its log: {log}" in result.output
    assert "no-such-variant" in result.output  # the log's last lines are printed
    assert f"work folder kept: {work}" in result.output and log.is_file()
    written = json.loads(json_out.read_text())
    assert written["failed"] == "train sparse" and [s["name"] for s in written["stages"]] == ["train sparse"]
