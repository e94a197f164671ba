"""What every stage entry point shares: reading ``params.yaml`` and running as a command.

Deliberately imports nothing from the library but :mod:`pipeline.errors`: each stage
imports the config dataclass it needs itself, so a stage's import closure (and with it
its DVC deps, checked by ``tests/test_dvc_graph.py``) stays its own.

The defaults live in one place, the config dataclasses; ``params.yaml`` states the
values the pipeline runs with, and :func:`build` rejects a key the dataclass lacks.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import typer
import yaml

from pipeline.errors import UserError

T = TypeVar("T")
PARAMS = Path("params.yaml")
LAMBDAS = ("lambda_ls", "lambda_gb", "lambda_div")
EXPERIMENT_KEYS = {"dataset", "num_experts", "group_by", *LAMBDAS}


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise typer.BadParameter(f"params file {path} does not exist")
    return yaml.safe_load(path.read_text()) or {}


def section(params: dict[str, Any], *keys: str) -> Any:
    """``params[k1][k2]...``, or a one-line error naming the missing key and what exists."""
    node: Any = params
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[: i + 1])
            raise typer.BadParameter(f"params has no key {where!r}; available: {sorted(node) if isinstance(node, dict) else node}")
        node = node[key]
    return node


def build(cls: type[T], values: dict[str, Any] | None, where: str, *, ignore: tuple[str, ...] = (),
          **overrides: Any) -> T:
    """Instantiate a config dataclass from a params block, rejecting unknown keys and
    invalid values with one line that names the block. ``ignore``: keys of the block that
    belong to another stage (``backbone.source`` is what `backbone` materializes)."""
    values = {k: v for k, v in (values or {}).items() if k not in ignore}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise typer.BadParameter(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})
    except (TypeError, ValueError) as e:
        raise typer.BadParameter(f"{where}: {e}") from None


def one_of(value: str, allowed: tuple[str, ...], what: str = "variant") -> str:
    """``value`` if it is one of ``allowed``, else click's usage error naming the choices."""
    if value not in allowed:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
    return value


def experiment(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One ``experiments.<name>`` block, checked: a dataset and K, optionally lambda
    overrides and the column personalization groups by."""
    spec = dict(section(params, "experiments", name))
    unknown = sorted(set(spec) - EXPERIMENT_KEYS)
    if unknown:
        raise typer.BadParameter(f"experiments.{name}: unknown key(s) {unknown}; known: {sorted(EXPERIMENT_KEYS)}")
    for key in ("dataset", "num_experts"):
        if key not in spec:
            raise typer.BadParameter(f"experiments.{name} needs {key!r}")
    return spec


def lambdas(params: dict[str, Any], name: str) -> dict[str, float]:
    """Eq. 7's weights: the top-level sweep knobs, overridden by the experiment's own keys
    (e.g. the paper's lambda_gb = 1.0 for preference-700K)."""
    spec = experiment(params, name)
    return {key: float(spec.get(key, section(params, key))) for key in LAMBDAS}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_orphans(target: Path) -> None:
    """Delete the scratch that a killed run (SIGKILL skips every cleanup) left beside
    ``target``: any ``.<name>.staging-<pid>`` / ``.<name>.old-<pid>`` whose process is gone."""
    for path in target.parent.glob(f".{target.name}.*-*"):
        kind, _, pid = path.name[len(target.name) + 2:].rpartition("-")
        if kind not in ("staging", "old") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: the run that owned it is dead
            _remove(path)
        except PermissionError:  # alive, under another user
            pass


@contextmanager
def staged(*targets: Path) -> Iterator[tuple[Path, ...]]:
    """One scratch path beside each output (file or folder) of a stage, swapped in only
    when the block succeeds: each file by ``os.replace``, each folder by moving the old one
    aside, renaming the new one in and deleting the old. On failure every scratch path is
    removed and the previous outputs stay as they were: a failed or killed run never
    leaves a half-written output, or new outputs beside stale ones."""
    tag = f"staging-{os.getpid()}"
    scratch = tuple(t.with_name(f".{t.name}.{tag}") for t in targets)
    for target, path in zip(targets, scratch):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove(path)
        _remove_orphans(target)
    try:
        yield scratch
        for target, new in zip(targets, scratch):
            if new.is_dir():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                if target.exists():
                    target.rename(old)
                new.rename(target)
                _remove(old)
            elif new.exists():
                os.replace(new, target)
    finally:
        for path in scratch:
            _remove(path)


def run(main: Callable[..., Any]) -> None:
    """Run one stage function as a command (``python -m stages.<name>``, what dvc.yaml
    calls). A :class:`UserError` or a missing file is one line on stderr and exit 1."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    exit_with(app)


def exit_with(app: typer.Typer) -> None:
    try:
        # Without standalone mode click RETURNS the code of a `typer.Exit(n)` instead of
        # exiting with it; pass it on, or a failed check would exit 0.
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # bad option or params value: click's own message
        e.show()
        sys.exit(e.exit_code)
    except (UserError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
