"""How many bytes this process read from the artifacts it consumes, by kind.

The feature cache is the largest thing a run reads (~13 GB at 700K pairs, hidden 3072),
so every reader of it counts what it reads here: ``cache`` (the files featurize wrote,
counted by :mod:`pipeline.cache`) and ``stores`` (the pair-major split stores built once
from it, counted by :mod:`pipeline.split_store`). Stages print the totals when they finish
(:func:`summary`), and with ``SMOE_IO_STATS=<file>`` in the environment they also write
them there as JSON at exit, with the kernel's own counters from ``/proc/self/io`` beside
them as a cross-check (``smoe bench scale`` reads these files).
"""

from __future__ import annotations

import atexit
import json
import os
from collections import Counter
from pathlib import Path

ENV = "SMOE_IO_STATS"
_read: Counter[str] = Counter()


def count_read(kind: str, nbytes: int) -> None:
    _read[kind] += int(nbytes)


def read_bytes() -> dict[str, int]:
    return dict(_read)


def proc_io() -> dict[str, int]:
    """The kernel's I/O counters for this process (Linux; empty elsewhere). ``rchar`` counts
    every byte read by a system call, page cache or not; ``read_bytes`` what hit the disk."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines if ": " in line)}


def summary() -> str | None:
    """One line for a stage's log, or None when it read nothing counted."""
    if not _read:
        return None
    return "read " + ", ".join(f"{n / 2**20:,.1f} MiB from the {kind}" for kind, n in sorted(_read.items()))


@atexit.register
def _dump() -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    tmp = Path(f"{target}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"read_bytes": read_bytes(), "proc_io": proc_io()}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, target)
