"""`smoe pull`: a teammate's pull from a DVC remote that lacks part of what the commit records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tooling.share import missing_outputs, recorded_outputs

DVC = [sys.executable, "-m", "dvc"]
SMOE = [sys.executable, "-c", "from stages.cli import main; main()"]
ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    if ok:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _env() -> dict:
    import os
    return {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1"}


@pytest.fixture
def shared(tmp_path) -> tuple[Path, Path]:
    """Alice's repo with two stages run and committed, a local remote holding only `small`'s
    output (she forgot to push `big`), and Bob's fresh clone of it."""
    alice, remote = tmp_path / "alice", tmp_path / "remote"
    alice.mkdir()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.name", "Alice"],
                ["git", "config", "user.email", "alice@example.com"]):
        sh(cmd, alice)
    sh(DVC + ["init", "-q"], alice)
    (alice / "dvc.yaml").write_text(
        "stages:\n"
        "  small:\n    cmd: mkdir -p out && echo small > out/small.txt\n    outs: [out/small.txt]\n"
        "  big:\n    cmd: mkdir -p feats && echo 1 > feats/a && echo 2 > feats/b\n    outs: [feats]\n")
    sh(DVC + ["repro", "-q"], alice)
    sh(DVC + ["remote", "add", "-d", "store", str(remote)], alice)
    sh(["git", "add", "-A"], alice)
    sh(["git", "commit", "-qm", "run both stages"], alice)
    sh(DVC + ["push", "small"], alice)
    bob = tmp_path / "bob"
    sh(["git", "clone", "-q", str(alice), str(bob)], tmp_path)
    return alice, bob


def test_recorded_outputs_maps_paths_to_stages(shared):
    alice, _ = shared
    outputs = recorded_outputs(alice)
    assert outputs["feats"][0] == "big" and outputs["feats"][1].endswith(".dir")
    assert outputs["out/small.txt"][0] == "small" and outputs["out/small.txt"][2] == "dvc.lock"


def test_pull_names_the_missing_output_its_stage_and_who_must_push(shared):
    alice, bob = shared
    missing = missing_outputs(bob)
    assert [m.path for m in missing] == ["feats"] and missing[0].stage == "big"
    assert missing[0].recorded_by.split()[1:4] == ["Alice", "<alice@example.com>", missing[0].recorded_by.split()[3]]

    proc = sh(SMOE + ["pull"], bob, ok=False)
    assert proc.returncode == 1
    err = proc.stderr
    assert "error: the DVC remote 'store'" in err and "lacks 1 output(s)" in err
    assert "feats  (stage big, md5 " in err and "recorded by " in err and "Alice <alice@example.com>" in err
    assert "dvc push big" in err and "--allow-missing" in err
    assert "Traceback" not in err
    assert (bob / "out" / "small.txt").read_text() == "small\n"  # what the remote has was pulled

    # Alice pushes; Bob's pull now succeeds and checks out everything
    sh(DVC + ["push", "big"], alice)
    done = sh(SMOE + ["pull"], bob)
    assert "pulled:" in done.stdout
    assert (bob / "feats" / "b").read_text() == "2\n"


def test_pull_without_a_remote_is_one_clear_line(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh(DVC + ["init", "-q"], repo)
    (repo / "x.txt").write_text("x")
    sh(DVC + ["add", "-q", "x.txt"], repo)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=A", "-c", "user.email=a@example.com", "commit", "-qm", "x"],
                ["git", "clone", "-q", str(repo), str(tmp_path / "clone")]):
        sh(cmd, repo)
    proc = sh(SMOE + ["pull"], tmp_path / "clone", ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: no DVC remote is set as the default (configured: none)")
    assert "dvc remote add -d store <url>" in proc.stderr
    assert not (tmp_path / "clone" / "x.txt").exists()
