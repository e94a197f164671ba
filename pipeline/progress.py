"""Progress reporting for long loops: a tqdm bar on a terminal, periodic lines in a log.

Why not tqdm everywhere: under ``dvc repro`` a stage's stdout/stderr usually go to a
pipe or a log file, not a terminal. A tqdm bar there is a stream of carriage-return
redraws that a log viewer shows either as one ever-growing line or as thousands of
near-identical lines, and the ``--no-progress`` workaround left featurize silent for
21 minutes, which looks exactly like a hang. So :func:`progress` looks at where the
output goes:

* stderr is a TTY (an interactive run): a real ``tqdm.auto.tqdm`` bar, as before;
* anything else (``dvc repro``, CI, ``> log 2>&1``): a :class:`LineProgress` that
  prints one plain line, flushed, at most every ``interval`` seconds, plus the first
  update and a final line at close, e.g.::

      featurize: 1200/2640 seq (45%) 10.3 seq/s, elapsed 01:56, ETA 02:20

  The interval defaults to ``$SMOE_PROGRESS_INTERVAL`` (seconds), else 30 s: often
  enough to show the stage is alive, rare enough to keep the log readable.
* ``enabled=False`` (``--no-progress``): silent.

Both objects offer the part of tqdm's API the pipeline uses: ``update(n)``,
``set_postfix(...)``, ``write(msg)``, ``close()``, iteration when built with an
``iterable``, and use as a context manager. Times and rates are formatted with tqdm's
own helpers (``format_interval``, ``format_sizeof``), so both modes read alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from time import monotonic
from typing import IO, Any, Protocol

from tqdm.auto import tqdm

INTERVAL_ENV = "SMOE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0

__all__ = ["progress", "Progress", "LineProgress", "INTERVAL_ENV", "DEFAULT_INTERVAL"]


class Progress(Protocol):
    """What the call sites may rely on (``tqdm`` and :class:`LineProgress` both satisfy it)."""

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> Any: ...

    def write(self, s: str, file: IO[str] | None = None, end: str = "\n", nolock: bool = False) -> Any: ...

    def close(self) -> Any: ...


def default_interval() -> float:
    """Seconds between log lines: ``$SMOE_PROGRESS_INTERVAL`` if set and valid, else 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
        print(f"warning: ignoring {INTERVAL_ENV}={raw!r} (want seconds >= 0); using {DEFAULT_INTERVAL:g}",
              file=sys.stderr, flush=True)
    return DEFAULT_INTERVAL


def _isatty(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress(total: int | None = None, desc: str = "", unit: str = "it", *, iterable: Iterable | None = None,
             enabled: bool = True, interval: float | None = None, file: IO[str] | None = None) -> Any:
    """A progress reporter for a loop of ``total`` steps (``None``: unknown).

    ``file`` defaults to the current ``sys.stderr``; a TTY gets a tqdm bar, anything
    else a :class:`LineProgress` printing every ``interval`` seconds (default
    :func:`default_interval`). ``enabled=False`` reports nothing. With ``iterable``
    the result can be iterated like ``tqdm(iterable)``, counting one step per item.
    """
    out = sys.stderr if file is None else file
    if enabled and _isatty(out):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=out, dynamic_ncols=True)
    return LineProgress(total, desc, unit, iterable=iterable, interval=interval, file=file, disable=not enabled)


class LineProgress:
    """tqdm's API for logs: plain, flushed, rate-limited one-line updates (no ``\\r``)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *,
                 iterable: Iterable | None = None, interval: float | None = None,
                 file: IO[str] | None = None, disable: bool = False):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.interval = default_interval() if interval is None else max(0.0, float(interval))
        self.file = file
        self.disable = disable
        self.n = 0
        self.postfix = ""
        self.start_t = monotonic()
        self.last_print_t: float | None = None  # None until the first line
        self.closed = False
        self.aborted = False  # left early (an exception, a break): the final line says "stopped at"

    # ------------------------------------------------------------------ tqdm API

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress was built without an iterable")
        finished = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            finished = True
        finally:
            self.aborted = self.aborted or not finished
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress total is unknown")
        return self.total

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.aborted = self.aborted or exc_type is not None
        self.close()

    def update(self, n: float = 1) -> bool:
        """Count ``n`` more steps; print a line if it is the first or ``interval`` has passed."""
        self.n += n
        if self.disable or self.closed:
            return False
        now = monotonic()
        if self.last_print_t is None or now - self.last_print_t >= self.interval:
            self._emit(self.status_line(now))
            self.last_print_t = now
            return True
        return False

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Extra ``key=value`` fields shown at the end of the next lines (as tqdm does)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={tqdm.format_num(v) if isinstance(v, (int, float)) else str(v).strip()}"
                                 for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, s: str, file: IO[str] | None = None, end: str = "\n", nolock: bool = False) -> None:
        """Print a message, like ``tqdm.write``: to stdout by default, even when disabled."""
        out = sys.stdout if file is None else file
        out.write(f"{s}{end}")
        out.flush()

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        """Print the status line now (tqdm redraws its bar)."""
        if not (self.disable or self.closed):
            now = monotonic()
            self._emit(self.status_line(now))
            self.last_print_t = now

    def close(self) -> None:
        """Print the final line (steps done, total elapsed, mean rate) once."""
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self._emit(self.final_line(monotonic()))

    # ------------------------------------------------------------------ formatting

    def _rate(self, elapsed: float) -> str:
        if elapsed <= 0 or self.n <= 0:
            return f"? {self.unit}/s"
        rate = self.n / elapsed
        if rate < 1:  # slow steps read better as seconds per step, as tqdm shows them
            return f"{tqdm.format_sizeof(1 / rate)}s/{self.unit}"
        return f"{tqdm.format_sizeof(rate)} {self.unit}/s"

    def _count(self) -> str:
        n = int(self.n) if float(self.n).is_integer() else self.n
        if self.total is None:
            return f"{n} {self.unit}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        return f"{n}/{self.total} {self.unit}{percent}"

    def _prefix(self) -> str:
        return f"{self.desc}: " if self.desc else ""

    def status_line(self, now: float) -> str:
        elapsed = max(0.0, now - self.start_t)
        line = f"{self._prefix()}{self._count()} {self._rate(elapsed)}, elapsed {tqdm.format_interval(elapsed)}"
        if self.total is not None:
            if self.n > 0 and elapsed > 0:
                remaining = max(0.0, (self.total - self.n) * elapsed / self.n)
                line += f", ETA {tqdm.format_interval(remaining)}"
            else:
                line += ", ETA ?"
        return f"{line}, {self.postfix}" if self.postfix else line

    def final_line(self, now: float) -> str:
        elapsed = max(0.0, now - self.start_t)
        # Closed early (an exception, a break, fewer steps than announced): don't claim it finished.
        early = self.aborted or (self.total is not None and self.n < self.total)
        word = "stopped at" if early else "done"
        line = (f"{self._prefix()}{word} {self._count()} in {tqdm.format_interval(elapsed)} "
                f"({self._rate(elapsed)})")
        return f"{line}, {self.postfix}" if self.postfix else line

    def _emit(self, line: str) -> None:
        # One write per line so concurrent writers (other ranks, the logging module) don't interleave mid-line.
        out = sys.stderr if self.file is None else self.file  # looked up late: follows redirection
        try:
            out.write(line.replace("\r", " ") + "\n")
            out.flush()
        except (ValueError, OSError):  # the stream was closed under us (interpreter shutdown): not worth a crash
            pass

    def __repr__(self) -> str:
        return f"<LineProgress {self.status_line(monotonic())!r}>"
