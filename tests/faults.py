"""What both halves of the fault-injection suite share (``test_faults_inputs.py``,
``test_faults_artifacts.py``): run a command as its entry point does, snapshot outputs,
and assert a refusal's three properties."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer

from stages import common as P


def invoke(module: str, args: list[str], capsys) -> tuple[int, str]:
    """``python -m stages.<module> args`` in this process, through the same runner
    (:func:`stages.common.exit_with`): (exit code, stderr)."""
    mod = __import__(f"stages.{module}", fromlist=["main", "app"])
    app = getattr(mod, "app", None)
    if app is None:
        app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        app.command()(mod.main)
    capsys.readouterr()
    old = sys.argv
    sys.argv = [f"stages.{module}", *args]
    try:
        with pytest.raises(SystemExit) as exit_:
            P.exit_with(app)
    finally:
        sys.argv = old
    return exit_.value.code, capsys.readouterr().err


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (files or folders; absent ones are empty), by path."""
    files = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        files.update({str(p): p.read_bytes() for p in paths})
    return files


def assert_refused(code: int, err: str, names: str, before: dict[str, bytes], *roots: Path, exit_code: int = 1,
                   only_line: bool = True) -> None:
    """The refusal's three properties: the exit code; ONE error line naming ``names`` and
    no traceback (``only_line``: nothing else on stderr either; off where the command
    legitimately printed progress before the check failed); ``roots`` unchanged and no
    scratch left beside them."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == exit_code, err
    assert len(errors) == 1 and "Traceback" not in err, f"expected one error line, got:\n{err}"
    assert not only_line or len(lines) == 1, f"expected stderr to be one line, got:\n{err}"
    assert names in errors[0], f"{names!r} not named in: {errors[0]}"
    assert snapshot(*roots) == before, "a refused run changed its outputs"
    leftovers = [p for root in roots for p in root.parent.glob(f".{root.name}.*")]
    assert not leftovers, f"scratch left behind: {leftovers}"
