"""End to end: the real dvc.yaml on a tiny backbone, in a temporary git repo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("single", "vanilla", "micro", "sparse", "hyre")
EXPERIMENTS = ("categories", "attributes", "users")
# one progress line of pipeline/progress.py in log mode: "<what>: done/total <unit> ..."
PROGRESS_LINE = r"featurize[^\n]*: \d+/\d+ "


def sh(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout and stderr interleaved as a log shows them."""
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}"
    return proc.stdout


@pytest.mark.slow
def test_repro_share_pull_sweep_and_verify(tmp_path):
    """The issue's workflow: repro (long stages log progress lines); push to a local
    remote; a fresh clone pulls; repro there reruns nothing; a lambda sweep reruns only
    sparse's stages and the report; cache info passes, then fails on a corrupted shard,
    naming it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    model = build_tiny_llama(tmp_path / "tiny")
    for package in ("pipeline", "stages"):  # the stages' code deps
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"]["source"] = str(model)
    params["backbone"]["system_prompt"] = None
    params["datasets"]["categories"]["params"] = {"n_train_prompts": 12, "n_validation_prompts": 6, "n_test_prompts": 6}
    params["datasets"]["attributes"]["params"] = {"n_train_examples": 12, "n_validation_examples": 8,
                                                  "n_test_examples": 24, "n_attributes": 4}
    params["datasets"]["users"]["params"] = {"n_prompts": 24, "n_users": 3, "users_per_prompt": 3, "test_fraction": 0.5}
    params["steer"].update(top_n=4, min_pairs=2)
    params["personalize"].update(sizes=[2, 4], seeds=[0, 1], epochs=2, min_pairs=4)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["git", "config", "user.email", "ci@example.com"], repo)
    sh(["git", "config", "user.name", "ci"], repo)
    sh(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")

    # Under dvc repro stderr is not a terminal: progress comes as periodic lines (every
    # line here, with the interval at 0), not as a carriage-return bar.
    out = sh(["dvc", "repro"], repo, env={**os.environ, "SMOE_PROGRESS_INTERVAL": "0"})
    for stage in ("backbone", "prepare@categories", "featurize@users", *(f"stores@{d}" for d in EXPERIMENTS)):
        assert f"Running stage '{stage}'" in out
    featurize_log = out[out.index("Running stage 'featurize@categories'"):out.index("Running stage 'featurize@attributes'")]
    progress_lines = re.findall(PROGRESS_LINE, featurize_log)
    assert len(progress_lines) >= 2 and "\r" not in featurize_log, featurize_log
    for dataset in ("categories", "attributes", "users"):
        manifest = json.loads((repo / "data" / "features" / dataset / "manifest.json").read_text())
        assert manifest["num_pairs"] > 0 and manifest["hidden_size"] == 32
        assert sh(["smoe", "cache", "info", f"data/features/{dataset}"], repo).count("ok:") == 1
        # the stores stage laid out every split of the cache; the stages after it read only these
        stores = json.loads((repo / "data" / "stores" / dataset / "manifest.json").read_text())
        assert {k: v["pairs"] for k, v in stores["splits"].items()} == manifest["pairs_by_split"]
        assert stores["cache"]["pairs_sha256"] == manifest["pairs_sha256"]

    again = sh(["dvc", "repro"], repo)
    assert "Running stage" not in again and "up to date" in again

    for variant in VARIANTS:
        metrics = json.loads((repo / "data" / "predictions" / "categories" / variant / "metrics.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["variant"] == variant
        assert (repo / "data" / "models" / "categories" / variant / "model.safetensors").exists()
    assert (repo / "data" / "plots" / "train" / "categories" / "sparse" / "train" / "div.tsv").exists()
    assert (repo / "data" / "interpret" / "categories" / "sparse" / "experts.md").exists()  # offline default
    interpreted = json.loads((repo / "data" / "metrics" / "categories" / "interpret-sparse.json").read_text())
    assert "description_fidelity" in interpreted
    steering = json.loads((repo / "data" / "steer" / "attributes" / "sparse.json").read_text())
    assert set(steering["sparse"]["flip_rate_by_weight"]) == {"0.25", "0.5", "0.75", "1.0"}
    for experiment in ("attributes", "users"):
        for variant in VARIANTS:
            path = repo / "data" / "personalize" / experiment / variant / "personalization.json"
            assert variant in json.loads(path.read_text()), path
    report = (repo / "data" / "report" / "REPORT.md").read_text()
    assert "### Table 1:" in report and "### Table 13:" in report

    # ---- share: push to a remote; a teammate's fresh clone pulls and reruns nothing upstream of train
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "store", str(remote)], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)
    sh(["dvc", "push"], repo)
    clone = tmp_path / "teammate"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    sh(["dvc", "pull"], clone)
    for dataset in ("categories", "attributes", "users"):
        assert sh(["smoe", "cache", "info", f"data/features/{dataset}"], clone).count("ok:") == 1
    pulled = sh(["dvc", "repro"], clone)
    assert "Running stage" not in pulled and "up to date" in pulled, pulled

    # key metrics are dvc exp show columns (flat), the curves load in dvc plots show
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], clone))
    files = next(iter(shown.values()))["data"]
    sparse = files["data/metrics/categories/sparse.json"]["data"]
    assert {"accuracy", "routing_entropy", "global_entropy", "expert_correlation"} <= set(sparse)
    assert all(isinstance(v, (int, float)) for f in files.values() for row in f["data"].values()
               for v in (row.values() if isinstance(row, dict) else [row]))  # nothing nested deeper than a model
    assert "data/metrics/attributes/steer-sparse.json" in files
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], clone))
    assert not plots.get("errors"), plots.get("errors")
    assert {"Fig. 2 flip rate (attributes)", "Fig. 8 personalization by user"} <= set(plots["data"])

    # the sweep knob reaches training and what follows it, never the cache
    before = json.loads((clone / "data" / "metrics" / "categories" / "sparse.json").read_text())
    sweep = sh(["dvc", "exp", "run", "-S", "lambda_div=1.0"], clone)
    ran = set(re.findall(r"Running stage '([^']+)'", sweep))
    sparse_stages = {f"train-sparse@{e}" for e in EXPERIMENTS} | {f"{stage}@{e}-sparse" for stage in ("interpret", "evaluate")
                                                                  for e in EXPERIMENTS}
    readers = {"steer@attributes-sparse", "personalize@attributes-sparse", "personalize@users-sparse", "report"}
    assert ran == sparse_stages | readers, sweep
    after = json.loads((clone / "data" / "metrics" / "categories" / "sparse.json").read_text())
    assert after != before

    # a corrupted pulled shard: cache info fails and names it. Written as a new file: the
    # pulled one is a link into DVC's cache, which must stay intact.
    shard = sorted((clone / "data" / "features" / "users" / "shards").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.unlink()
    shard.write_bytes(bytes(data))
    bad = subprocess.run(["smoe", "cache", "info", "data/features/users"], cwd=clone, capture_output=True, text=True)
    assert bad.returncode == 1 and shard.name in bad.stderr, bad.stderr
