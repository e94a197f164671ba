"""Checksums of the artifacts we write, verified where they are read.

Two kinds of artifact carry sha256 checksums:

- the feature cache: ``manifest.json`` records one per shard and one for ``pairs.parquet``
  (``pipeline/cache.py``); readers hash the very bytes they parse;
- a head folder (trained, adapted or exported) and the split stores: ``checksums.json``
  records one per file (:func:`write_checksums`), and loading checks them
  (:func:`verify_checksums`, :func:`verify_once`).

A check costs one sequential read of the file, so it is done once per process per file
(:func:`verify_once`), never per batch: a stage that reads a split store for every epoch
hashes it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import UserError

CHECKSUMS = "checksums.json"

# (resolved path, size, mtime_ns, expected digest) of every file verified by this process.
# Size and mtime are part of the key so that a file rewritten after its check is checked
# again; the digest, so that the same bytes checked against another record are too.
_verified: set[tuple[str, int, int, str]] = set()


class ArtifactError(UserError, RuntimeError):
    """An artifact on disk is missing, damaged or not the one its record describes."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_once(path: str | Path, expected: str, recover: str = "") -> bool:
    """Raise :class:`ArtifactError` naming ``path`` (and how to ``recover``) unless the file
    exists and hashes to ``expected``. A file that passed stays trusted for this process
    while its size and mtime are unchanged. Returns whether the file was read (hashed) now."""
    path = Path(path)
    recover = f"; {recover}" if recover else ""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing{recover}") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if key in _verified:
        return False
    if sha256_file(path) != expected:
        raise ArtifactError(f"{path}: checksum mismatch (damaged, truncated or replaced since it was "
                            f"written){recover}")
    _verified.add(key)
    return True


def write_checksums(directory: str | Path, files: Iterable[str]) -> None:
    """Record the sha256 of each of ``files`` (names inside ``directory``) in
    ``checksums.json``, written atomically, last: its presence means the folder is complete."""
    directory = Path(directory)
    record = {name: sha256_file(directory / name) for name in sorted(files)}
    tmp = directory / f".{CHECKSUMS}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, directory / CHECKSUMS)


def read_checksums(directory: str | Path, recover: str) -> dict[str, str]:
    """The ``{file: sha256}`` record of ``directory`` (nothing verified yet)."""
    path = Path(directory) / CHECKSUMS
    if not path.exists():
        raise ArtifactError(f"{path}: missing, so the folder's files cannot be verified (written by an older "
                            f"smoe-rm, or copied without it); {recover}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); {recover}") from None
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        raise ArtifactError(f"{path}: not a {{file: sha256}} record; {recover}")
    return record


def verify_checksums(directory: str | Path, recover: str) -> dict[str, str]:
    """Check every file that ``checksums.json`` lists; return the record."""
    directory = Path(directory)
    record = read_checksums(directory, recover)
    for name, digest in record.items():
        verify_once(directory / name, digest, recover)
    return record
