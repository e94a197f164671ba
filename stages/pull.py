"""`smoe pull`: `dvc pull` that names the outputs a remote lacks and who must push them."""

from __future__ import annotations

from pathlib import Path

import typer

from tooling.share import pull


def main(
    targets: list[str] = typer.Argument(None, help="Stages or outputs to pull (default: everything dvc.lock records), "
                                                   "as for `dvc pull`, e.g. featurize@categories."),
    remote: str = typer.Option(None, "--remote", "-r", help="DVC remote to pull from. Default: the default remote."),
    jobs: int = typer.Option(None, "--jobs", "-j", help="Parallel downloads (DVC's default when omitted)."),
    repo: Path = typer.Option(Path("."), help="The project's root."),
) -> None:
    """Pull the shared outputs (backbone, prepared data, feature cache, ...) from the DVC
    remote. If the remote lacks some of them, list each with its stage, its hash and the
    commit (author, date) that recorded it, and the exact `dvc push` that fixes it; exit 1.
    Then `dvc repro` reruns nothing upstream of `train`."""
    pull(repo, targets or None, remote, jobs)
    typer.echo("pulled: every output this commit records is in the workspace; `smoe cache info data/features/<dataset>` "
               "verifies a cache's checksums")
