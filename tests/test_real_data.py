"""pipeline/real_data.py: the registry of the real datasets, verify, fetch (`smoe data`).

The shared copy (``$SMOE_SHARED_DATASETS`` or ../shared/datasets) is only read, never
modified: corruption tests work on a copy in tmp_path. Fetch runs ``dvc get`` against a
local Git repository built here (no network).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import real_data
from pipeline.errors import UserError
from pipeline.real_data import FILES, RealFile

ROOT = Path(__file__).resolve().parents[1]
SHARED = real_data.location()
needs_shared = pytest.mark.skipif(not (SHARED / "SHA256SUMS").is_file(),
                                  reason=f"no shared real-data folder at {SHARED} (set ${real_data.ENV})")
SMALL = "auto-j/utils_constants.py"  # the smallest registered file


def read_sums(folder: Path) -> dict[str, str]:
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        sums[name.removeprefix("./")] = digest
    return sums


def test_registry_is_well_formed():
    assert len({f.local for f in FILES}) == len(FILES)
    for f in FILES:
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256), f
        assert re.fullmatch(r"[0-9a-f]{40}", f.commit), f
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", f.repo), f
        assert f.url == f"https://github.com/{f.repo}"
    assert real_data.DATASETS == ("auto-j", "hanna", "hh-rlhf-helpful", "rmb", "tldr-comparisons")
    assert sum(f.dataset == "rmb" for f in FILES) == 46


@needs_shared
def test_registry_matches_sha256sums():
    assert {f.local: f.sha256 for f in FILES} == read_sums(SHARED)


@needs_shared
def test_verify_shared_folder():
    paths = real_data.verify(SHARED)
    assert len(paths) == len(FILES) and all(p.is_file() for p in paths)
    assert len(real_data.verify(SHARED, ["hanna"])) == 2


def _copy_small(dest_root: Path) -> Path:
    dest = dest_root / SMALL
    dest.parent.mkdir(parents=True)
    shutil.copyfile(SHARED / SMALL, dest)  # copyfile: a fresh, writable file; the original is untouched
    return dest


@needs_shared
def test_verify_names_a_corrupted_copy(tmp_path):
    copy = _copy_small(tmp_path)
    assert real_data.verify(tmp_path, [SMALL]) == [copy]
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(real_data.ChecksumError) as err:
        real_data.verify(tmp_path, [SMALL])
    msg = str(err.value)
    assert "\n" not in msg and SMALL in msg and "smoe data fetch" in msg and "auto-j" in msg
    assert isinstance(err.value, UserError)


@needs_shared
def test_verify_names_a_missing_file(tmp_path):
    _copy_small(tmp_path)  # auto-j/testdata_pairwise.jsonl, registered before it, is missing
    with pytest.raises(real_data.MissingFileError, match=r"auto-j/testdata_pairwise\.jsonl is missing") as err:
        real_data.verify(tmp_path)
    assert "\n" not in str(err.value) and f"smoe data fetch --location {tmp_path} auto-j" in str(err.value)


def test_verify_errors_without_the_shared_folder(tmp_path):
    with pytest.raises(real_data.MissingFileError, match=r"auto-j/testdata_pairwise\.jsonl is missing"):
        real_data.verify(tmp_path)
    with pytest.raises(real_data.LocationError, match="does not exist"):
        real_data.verify(tmp_path / "nowhere")
    with pytest.raises(real_data.RealDataError, match="known datasets: auto-j"):
        real_data.verify(tmp_path, ["nope"])


def test_location_override_env_default(tmp_path, monkeypatch):
    monkeypatch.delenv(real_data.ENV, raising=False)
    assert real_data.location() == ROOT.parent / "shared" / "datasets"
    monkeypatch.setenv(real_data.ENV, str(tmp_path))
    assert real_data.location() == tmp_path
    assert real_data.location(tmp_path / "x") == tmp_path / "x"
    assert real_data.locate(SMALL) == tmp_path / SMALL


def test_fetch_commands_are_pinned_dvc_gets(tmp_path):
    (line,) = real_data.fetch_commands(tmp_path, ["auto-j/testdata_pairwise.jsonl"])
    assert line == ("dvc get https://github.com/GAIR-NLP/auto-j data/test/testdata_pairwise.jsonl "
                    f"--rev 2ae17a3965d933232e9cd50302aa0f176249c83b -o {tmp_path}/auto-j/testdata_pairwise.jsonl")
    assert len(real_data.fetch_commands(tmp_path)) == len(FILES)


@pytest.fixture
def git_source(tmp_path) -> tuple[Path, str, bytes]:
    """A local Git repository with one committed file: (repo, commit, content)."""
    repo = tmp_path / "upstream"
    (repo / "data").mkdir(parents=True)
    content = b'{"chosen": "a", "rejected": "b"}\n'
    (repo / "data" / "pairs.jsonl").write_bytes(content)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "data"], check=True)
    (repo / "data" / "pairs.jsonl").write_bytes(b"moved on\n")  # the pinned commit, not the work tree, is fetched
    subprocess.run([*git, "commit", "-q", "-am", "later"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD~1"], check=True, capture_output=True, text=True).stdout.strip()
    return repo, first, content


def test_fetch_from_a_git_repository(git_source, tmp_path):
    repo, commit, content = git_source
    entry = RealFile("toy/pairs.jsonl", str(repo), commit, "data/pairs.jsonl", hashlib.sha256(content).hexdigest())
    loc = tmp_path / "datasets"
    seen = []
    assert real_data.fetch(loc, registry=[entry], on_file=lambda e, s: seen.append(s)) == [(entry, "fetched")]
    assert (loc / "toy" / "pairs.jsonl").read_bytes() == content and seen == ["fetched"]
    assert real_data.verify(loc, registry=[entry]) == [loc / "toy" / "pairs.jsonl"]
    assert real_data.fetch(loc, registry=[entry]) == [(entry, "present")]
    # a damaged copy is replaced by a verified download
    (loc / "toy" / "pairs.jsonl").write_bytes(b"damaged")
    assert real_data.fetch(loc, registry=[entry]) == [(entry, "fetched")]
    assert (loc / "toy" / "pairs.jsonl").read_bytes() == content
    assert sorted(p.name for p in (loc / "toy").iterdir()) == ["pairs.jsonl"]


def test_fetch_refuses_a_checksum_mismatch(git_source, tmp_path):
    repo, commit, content = git_source
    entry = RealFile("toy/pairs.jsonl", str(repo), commit, "data/pairs.jsonl", "0" * 64)
    loc = tmp_path / "datasets"
    with pytest.raises(real_data.ChecksumError, match=r"refused toy/pairs\.jsonl: .* \(download deleted\)") as err:
        real_data.fetch(loc, registry=[entry])
    assert "\n" not in str(err.value) and hashlib.sha256(content).hexdigest() in str(err.value)
    assert list((loc / "toy").iterdir()) == []  # nothing kept, not even the scratch download

    missing = RealFile("toy/other.jsonl", str(repo), commit, "data/absent.jsonl", "0" * 64)
    with pytest.raises(real_data.FetchError, match=r"data/absent\.jsonl does not exist"):
        real_data.fetch(loc, registry=[missing])


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.data", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@needs_shared
def test_cli_verify(tmp_path):
    ok = _cli("verify", "--location", str(SHARED))
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {len(FILES)} files under {SHARED}"), ok.stderr
    copy = _copy_small(tmp_path)
    copy.write_bytes(copy.read_bytes() + b"\n")
    bad = _cli("verify", SMALL, env={real_data.ENV: str(tmp_path)})
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith(f"error: real data: {SMALL} under {tmp_path} has sha256")


@needs_shared
def test_shared_source_is_located_and_verified_before_reading(tmp_path, monkeypatch):
    # `shared:<path>` in a dataset block: the path under the configured location, after the
    # sha256 check of every registered file it covers (a folder or a glob covers several)
    assert real_data.resolve("hanna", SHARED) == SHARED / "hanna"
    assert real_data.resolve("tldr-comparisons/batch*.json", SHARED) == SHARED / "tldr-comparisons/batch*.json"
    with pytest.raises(real_data.RealDataError, match="names no registered real-data file"):
        real_data.resolve("nowhere/else.json", SHARED)
    # a modified copy at the location stops prepare with one line naming it, before any row is read
    _copy_small(tmp_path)
    (tmp_path / SMALL).write_bytes((tmp_path / SMALL).read_bytes() + b"\n")
    monkeypatch.setenv(real_data.ENV, str(tmp_path))
    from pipeline.sources import load_rows

    with pytest.raises(real_data.ChecksumError, match=SMALL.replace(".", r"\.")):
        load_rows(f"shared:{SMALL}", columns={"prompt": "question"})
