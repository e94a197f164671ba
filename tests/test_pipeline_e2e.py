"""End to end: the real dvc.yaml on a tiny backbone, in a temporary git repo."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_then_nothing_reruns(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    model = build_tiny_llama(tmp_path / "tiny")
    shutil.copytree(ROOT / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"]["source"] = str(model)
    params["backbone"]["system_prompt"] = None
    params["datasets"]["categories"]["params"] = {"n_train_prompts": 12, "n_validation_prompts": 6, "n_test_prompts": 6}
    params["datasets"]["attributes"]["params"] = {"n_train_examples": 12, "n_validation_examples": 8,
                                                  "n_test_examples": 24, "n_attributes": 4}
    params["datasets"]["users"]["params"] = {"n_prompts": 24, "n_users": 3, "users_per_prompt": 3, "test_fraction": 0.5}
    params["steer"]["top_n"] = 4
    params["personalize"].update(sizes=[2, 4], seeds=[0, 1], epochs=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["git", "config", "user.email", "ci@example.com"], repo)
    sh(["git", "config", "user.name", "ci"], repo)
    sh(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")

    out = sh(["dvc", "repro"], repo)
    for stage in ("backbone", "prepare@categories", "featurize@users"):
        assert f"Running stage '{stage}'" in out
    for dataset in ("categories", "attributes", "users"):
        manifest = json.loads((repo / "data" / "features" / dataset / "manifest.json").read_text())
        assert manifest["num_pairs"] > 0 and manifest["hidden_size"] == 32
        assert sh(["smoe", "cache", "info", f"data/features/{dataset}"], repo).count("ok:") == 1

    again = sh(["dvc", "repro"], repo)
    assert "Running stage" not in again and "up to date" in again

    for variant in ("single", "vanilla", "micro", "sparse", "hyre"):
        metrics = json.loads((repo / "data" / "metrics" / "categories" / f"{variant}.json").read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["variant"] == variant
        assert (repo / "data" / "models" / "categories" / variant / "model.safetensors").exists()
    assert (repo / "data" / "plots" / "train" / "categories" / "sparse" / "train" / "div.tsv").exists()
    assert (repo / "data" / "interpret" / "categories" / "sparse" / "experts.md").exists()  # offline default
    assert "description_fidelity" in json.loads((repo / "data" / "metrics" / "categories" / "sparse.json").read_text())
    steering = json.loads((repo / "data" / "metrics" / "attributes" / "steering.json").read_text())
    assert set(steering["sparse"]["flip_rate_by_weight"]) == {"0.25", "0.5", "0.75", "1.0"}
    for experiment in ("attributes", "users"):
        personalization = json.loads((repo / "data" / "metrics" / experiment / "personalization.json").read_text())
        assert set(personalization) == {"single", "vanilla", "micro", "sparse", "hyre", "settings"}
        assert (repo / "data" / "personalize" / experiment / "personalization.md").exists()
    report = (repo / "data" / "report" / "REPORT.md").read_text()
    assert "### Table 1:" in report and "### Table 13:" in report
    shown = sh(["dvc", "metrics", "show", "--json"], repo)
    assert "data/metrics/categories/sparse.json" in shown and "data/metrics/attributes/steering.json" in shown

    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)
    before = json.loads((repo / "data" / "metrics" / "categories" / "sparse.json").read_text())
    sweep = sh(["dvc", "exp", "run", "-S", "lambda_div=1.0"], repo)
    ran = set(re.findall(r"Running stage '([^']+)'", sweep))
    # the sweep knob reaches training and what follows it, never the cache
    downstream = {f"{stage}@{e}" for stage in ("train", "interpret", "evaluate") for e in ("categories", "attributes", "users")}
    assert ran == downstream | {"steer", "personalize@attributes", "personalize@users", "report"}, sweep
    after = json.loads((repo / "data" / "metrics" / "categories" / "sparse.json").read_text())
    assert after != before
