"""A small real-data slice through the real pipeline (real/dvc.yaml), as CI runs it: prepare
from the published Auto-J file (checksums verified), featurize with a tiny random backbone,
train and evaluate, under `dvc repro` in a temporary copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import real_data
from tests.conftest import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
SHARED = real_data.location()


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "SHA256SUMS").is_file(), reason=f"the shared real datasets are not at {SHARED}")
def test_real_slice_prepare_featurize_train_evaluate(tmp_path):
    repo = tmp_path / "repo"
    for package in ("pipeline", "stages"):  # the stages' code deps, one folder above real/
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "real", repo / "real", ignore=shutil.ignore_patterns("data", "tmp", "cache"))
    params = yaml.safe_load((ROOT / "real" / "params.yaml").read_text())
    params["backbone"].update(source=str(build_tiny_llama(tmp_path / "tiny")), system_prompt=None)
    params["datasets"] = {"auto-j": {**params["datasets"]["auto-j"], "limits": {"train": 48, "validation": 16, "test": 16}}}
    params["experiments"] = {"auto-j": {"dataset": "auto-j", "num_experts": 9}}
    (repo / "real" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, real_data.ENV: str(SHARED), "PYTHONPATH": str(repo)}
    run(["git", "init", "-q"], repo, env)

    out = run(["dvc", "--cd", "real", "repro", "evaluate@auto-j-single", "evaluate@auto-j-sparse"], repo, env)
    for stage in ("prepare@auto-j", "featurize@auto-j", "stores@auto-j", "train-sparse@auto-j", "evaluate@auto-j-sparse"):
        assert f"Running stage '{stage}'" in out, out
    manifest = json.loads((repo / "real/data/prepared/auto-j/manifest.json").read_text())
    assert manifest["num_pairs"] == 48 + 16 + 16 and manifest["dropped"]["tie"] > 0  # ties are counted drops
    cache = json.loads((repo / "real/data/features/auto-j/manifest.json").read_text())
    assert cache["num_pairs"] > 0 and cache["hidden_size"] == 32
    stores = json.loads((repo / "real/data/stores/auto-j/manifest.json").read_text())  # what train/evaluate read
    assert {k: v["pairs"] for k, v in stores["splits"].items()} == cache["pairs_by_split"]
    metrics = json.loads((repo / "real/data/predictions/auto-j/sparse/metrics.json").read_text())
    assert metrics["num_experts"] == 9 and 0.0 <= metrics["accuracy"] <= 1.0
    assert "category_coverage" in metrics  # the scenario groups are the categories
    assert "Running stage" not in run(["dvc", "--cd", "real", "repro", "evaluate@auto-j-sparse"], repo, env)
