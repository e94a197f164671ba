"""`smoe data`: fetch and verify the real, public preference datasets (pipeline/real_data.py).

Nothing of them is committed: ``fetch`` downloads each file from its public Git repository
at a pinned commit (``dvc get``) and checks its sha256; ``verify`` checks a copy that is
already there (offline: ``../shared/datasets``). Also runnable as ``python -m stages.data``.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline import real_data
from stages import common

LOCATION_HELP = (f"Folder holding the real datasets. Default: ${real_data.ENV} if set, else ../shared/datasets "
                 f"beside the repository ({real_data.DEFAULT_LOCATION}).")
NAMES_HELP = (f"Datasets ({', '.join(real_data.DATASETS)}) or single files (their path under the location, "
              "e.g. auto-j/testdata_pairwise.jsonl). Default: all.")

app = typer.Typer(help="The real, public preference datasets: fetch them from their pinned public sources, or verify "
                       "a copy against the pinned sha256s. Nothing of them is committed to the project.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("verify")
def verify(
    names: list[str] = typer.Argument(None, help=NAMES_HELP, show_default=False),
    location: Path = typer.Option(None, "--location", help=LOCATION_HELP, show_default=False),
) -> None:
    """Check the real datasets against their pinned sha256s (offline).

    Every registered file (of NAMES, default all) under the location is hashed; exit 1 with
    one line naming the first missing or different file and the command that fetches it."""
    start = time.perf_counter()
    paths = real_data.verify(location, names or None)
    typer.echo(f"ok: {len(paths)} files under {real_data.location(location)} match their sha256 "
               f"({time.perf_counter() - start:.2f} s)")


@app.command("fetch")
def fetch(
    names: list[str] = typer.Argument(None, help=NAMES_HELP, show_default=False),
    location: Path = typer.Option(None, "--location", help=LOCATION_HELP, show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", 
                                 help="Print the `dvc get` command of each file; download nothing."),
) -> None:
    """Download the real datasets from their public sources (online), checked by sha256.

    Each file comes from its public Git repository at the pinned commit via DVC's
    `dvc get` (what --dry-run prints), into the location; a download whose sha256 differs
    from the pinned one is deleted and refused. Files already there with the right sha256
    are kept."""
    if dry_run:
        for line in real_data.fetch_commands(location, names or None):
            typer.echo(line)
        return

    def report(entry: real_data.RealFile, status: str) -> None:
        if status == "fetched":
            typer.echo(f"fetched {entry.local}", err=True)

    done = real_data.fetch(location, names or None, on_file=report)
    fetched = sum(status == "fetched" for _, status in done)
    typer.echo(f"ok: {len(done)} files under {real_data.location(location)} match their sha256 "
               f"({fetched} fetched, {len(done) - fetched} already present)")


if __name__ == "__main__":
    common.exit_with(app)
