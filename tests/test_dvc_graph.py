"""dvc.yaml's code deps are exactly what each stage's command imports.

A stage's command is ``python -m stages.<name> ...``. Its code deps must be the project
modules that entry point imports, transitively (lazy imports inside functions count: they
run; ``if TYPE_CHECKING:`` imports do not). A dep too few and DVC reports a stale stage as
up to date; one too many and an unrelated edit reruns it. The stages are read through
DVC's own parser (``dvc.repo.Repo``), so ``foreach``/``matrix`` are expanded exactly as
``dvc repro`` expands them.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "tooling")
ENTRY = re.compile(r"^python -m (stages\.\w+)\b")
PIPELINES = (ROOT, ROOT / "real")  # the real-data pipeline is a DVC project of its own (`dvc init --subdir`)


def module_path(name: str) -> Path | None:
    """The file of a project module (or package ``__init__``), None for anything else."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """Project modules one file imports (at any depth of the file, TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pipeline import metrics` imports the module pipeline.metrics
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    out = set()
    for name in names:
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for i in range(1, len(parts) + 1):
            if module_path(".".join(parts[:i])) is not None:
                out.add(".".join(parts[:i]))
    return out


def import_closure(module: str) -> set[str]:
    """Files (repo-relative, posix) of every project module ``module`` imports, itself included."""
    seen: set[str] = set()
    todo = [module, *[".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_path(name)) - seen)
    return {module_path(name).relative_to(ROOT).as_posix() for name in seen}


def dvc_stages(roots: tuple[Path, ...] = PIPELINES) -> dict[str, tuple[str, set[str]]]:
    """Every expanded stage of both pipelines (the embedded default at the root, the real-data
    one in real/, its own DVC project): name -> (cmd, its deps that are project .py files,
    as paths from the repository root)."""
    from dvc.repo import Repo

    out = {}
    for root in roots:
        with Repo(str(root)) as repo:
            for stage in repo.index.stages:
                code = set()
                for dep in stage.deps:
                    path = Path(os.path.relpath(Path(stage.wdir) / dep.def_path, ROOT)).as_posix()
                    if path.endswith(".py") and path.split("/")[0] in PACKAGES:
                        code.add(path)
                out[stage.addressing] = (stage.cmd, code)  # real/dvc.yaml:<name> for the real pipeline
    return out


def test_import_closure_follows_lazy_imports_and_skips_type_checking(tmp_path):
    # the walker itself, on the real tree: models.py names SplitStore only for type
    # checking (running a head never reads the cache), and the prepare stage imports
    # pipeline.prepare inside its function
    assert "pipeline/split_store.py" not in import_closure("pipeline.models")
    assert "pipeline/prepare.py" in import_closure("stages.prepare")
    assert "pipeline/__init__.py" in import_closure("stages.train")


def test_every_stage_lists_exactly_its_import_closure():
    problems = []
    stages = dvc_stages()
    assert len(stages) > 20, stages  # the matrix stages were expanded
    for name, (cmd, deps) in stages.items():
        match = ENTRY.match(cmd)
        if match is None:
            problems.append(f"{name}: command {cmd!r} is not `python -m stages.<name> ...`")
            continue
        closure = import_closure(match.group(1))
        if missing := sorted(closure - deps):
            problems.append(f"{name}: imports but does not list {missing}")
        if extra := sorted(deps - closure):
            problems.append(f"{name}: lists but does not import {extra}")
    assert not problems, "\n".join(problems)


def test_no_stage_imports_tooling_or_the_cli():
    # tooling (benchmarks, summaries) and the `smoe` CLI sit outside the method: editing
    # them must never make a pipeline stage stale
    for name, (cmd, _) in dvc_stages().items():
        closure = import_closure(ENTRY.match(cmd).group(1))
        assert not {p for p in closure if p.startswith("tooling/") or p == "stages/cli.py"}, name


def test_report_edit_cannot_invalidate_featurize():
    closure = import_closure("stages.featurize")
    assert "pipeline/report.py" not in closure and "pipeline/train.py" not in closure


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.mark.slow
def test_editing_an_imported_module_makes_its_stages_stale(tmp_path):
    """In a clone with a fully recorded dvc.lock (faked: `dvc commit` of stub outputs),
    editing pipeline/models.py makes `dvc status` name the stages that import it, and
    only those."""
    repo = tmp_path / "clone"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".venv", "data", ".dvc/cache", ".dvc/tmp",
                                                               "__pycache__", "*.egg-info", ".pytest_cache"))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    # Stub every output so `dvc commit` can record the current code hashes as built.
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            for out in stage.outs:
                path = repo / out.def_path
                if out.def_path.endswith((".json", ".csv", ".md", ".parquet", ".tsv")):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stub").write_text("x")
            for dep in stage.deps:
                path = repo / dep.def_path
                if not path.exists():
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "stub").write_text("x")
    subprocess.run(["dvc", "commit", "-f", "-q"], cwd=repo, check=True, capture_output=True, env=env)
    clean = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, env=env)
    assert clean.returncode == 0 and clean.stdout.strip() in ("{}", ""), clean.stdout
    models = repo / "pipeline" / "models.py"
    models.write_text(models.read_text() + "\n# an edit\n")
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, env=env)
    import json

    stale = set(json.loads(status.stdout))
    expected = {name for name, (cmd, _) in dvc_stages((ROOT,)).items()
                if "pipeline/models.py" in import_closure(ENTRY.match(cmd).group(1))}
    assert "train@categories-vanilla" in expected and "featurize@categories" not in expected
    assert stale == expected
