"""pipeline.progress: tqdm bars on a terminal, periodic plain lines under dvc repro / in logs."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tqdm import tqdm

import pipeline.progress as progress_mod
from pipeline.progress import LineProgress, progress

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_mod, "monotonic", fake)
    return fake


def test_log_mode_prints_plain_lines_with_count_rate_and_eta(clock, capsys):
    bar = progress(100, "featurize", "seq", interval=10)
    assert isinstance(bar, LineProgress)  # pytest's captured stderr is not a TTY
    for _ in range(10):
        clock.t += 3
        bar.update(5)
    bar.set_postfix(loss=0.123456)
    clock.t += 3
    bar.update(50)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    # first update, then one per 10 s of the fake clock, then the final line
    assert lines[0] == "featurize: 5/100 seq (5%) 1.67 seq/s, elapsed 00:03, ETA 00:57"
    assert lines[1] == "featurize: 25/100 seq (25%) 1.67 seq/s, elapsed 00:15, ETA 00:45"  # 10 s after 00:03
    assert lines[-1] == "featurize: done 100/100 seq (100%) in 00:33 (3.03 seq/s), loss=0.123"
    for line in lines[:-1]:
        assert re.fullmatch(r"featurize: \d+/100 seq \(\d+%\) [\d.]+ seq/s, elapsed \d\d:\d\d, ETA \d\d:\d\d.*", line)


def test_interval_is_respected_and_unknown_total_omits_eta(clock, capsys):
    bar = LineProgress(None, "reading train states", "batch", interval=30)
    for _ in range(100):  # 100 updates over 99 s of fake time: lines at t=0, 30, 60, 90
        bar.update()
        clock.t += 1
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(":")[1].split()[0] for ln in lines[:-1]] == ["1", "31", "61", "91"]
    assert all("ETA" not in ln and "%" not in ln for ln in lines)
    assert lines[-1] == "reading train states: done 100 batch in 01:40 (1.00 batch/s)"


def test_interval_defaults_to_the_environment(monkeypatch, capsys):
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, "0")
    assert LineProgress(3).interval == 0
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, "soon")
    assert LineProgress(3).interval == progress_mod.DEFAULT_INTERVAL
    assert progress_mod.INTERVAL_ENV in capsys.readouterr().err
    monkeypatch.delenv(progress_mod.INTERVAL_ENV)
    assert LineProgress(3).interval == 30


def test_iterable_and_early_stop(clock, capsys):
    items = []
    for x in progress(desc="rows", unit="row", iterable=[1, 2, 3], interval=0):
        items.append(x)
    assert items == [1, 2, 3]
    with progress(5, "train", "step", interval=0) as bar:
        bar.update(2)
    with pytest.raises(RuntimeError):
        for _ in progress(desc="shards", unit="shard", iterable=iter(range(3)), interval=0):
            raise RuntimeError("corrupt shard")
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("shards: stopped at 0 shard in ")
    lines = lines[:-1]
    assert lines[2:4] == ["rows: 3/3 row (100%) ? row/s, elapsed 00:00, ETA ?",
                          "rows: done 3/3 row (100%) in 00:00 (? row/s)"]
    assert lines[-1].startswith("train: stopped at 2/5 step (40%)")


def test_disabled_is_silent_but_write_still_prints(capsys):
    bar = progress(10, "featurize", "seq", enabled=False, interval=0)
    for _ in range(10):
        bar.update()
    bar.set_postfix(loss=1.0)
    bar.write("epoch 1: accuracy 0.5")  # a message, not progress: tqdm.write prints it too
    bar.close()
    assert list(progress(enabled=False, iterable=range(3))) == [0, 1, 2]
    out, err = capsys.readouterr()
    assert err == ""
    assert out == "epoch 1: accuracy 0.5\n"


def test_tty_gets_a_real_tqdm_bar(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = progress(10, "train single", "step")
    try:
        assert isinstance(bar, tqdm)
        assert bar.total == 10 and bar.unit == "step" and not bar.disable
        bar.update(3)
    finally:
        bar.close()
    assert "\r" in tty.getvalue()  # the interactive bar, redrawn in place
    assert isinstance(progress(10, "x", enabled=False), LineProgress)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_repro_shows_periodic_lines(tmp_path):
    """A stage under `dvc repro` (output not a TTY) reports progress as plain lines in dvc's output."""
    dvc = Path(sys.executable).with_name("dvc")
    if not dvc.exists():
        pytest.skip("dvc is not installed next to this python")
    script = ("from pipeline.progress import progress\n"
              "with progress(5, 'toy stage', 'step') as bar:\n"
              "    for _ in range(5):\n"
              "        bar.update()\n"
              "open('out.txt', 'w').write('ok')\n")
    (tmp_path / "toy.py").write_text(script)
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          toy:
            cmd: SMOE_PROGRESS_INTERVAL=0 {sys.executable} toy.py
            deps: [toy.py]
            outs: [out.txt]
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop(progress_mod.INTERVAL_ENV, None)

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert run("git", "init", "-q").returncode == 0
    init = run(str(dvc), "init", "-q")
    assert init.returncode == 0, init.stderr
    repro = run(str(dvc), "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    output = repro.stdout + repro.stderr
    for i in range(1, 6):
        assert re.search(rf"^toy stage: {i}/5 step \({i * 20}%\) .+ step/s, elapsed \d\d:\d\d, ETA ", output, re.M), output
    assert re.search(r"^toy stage: done 5/5 step \(100%\) in \d\d:\d\d", output, re.M), output
    assert "\r" not in output
    assert (tmp_path / "out.txt").read_text() == "ok"
