"""Stage `report`: every stage's per-variant results -> data/report/ (REPORT.md + figures/, the paper's tables and
figures across variants; personalization-<exp>.md; steering-<exp>.json with the paired t-tests)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer

from pipeline.report import build_report
from stages import common as P


def main(
    data: Path = typer.Option(Path("data"), "--data", help="The pipeline's data directory (reads predictions/, "
                                                            "interpret/, steer/, personalize/, plots/eval/ and grid/ under it)."),
    out: Path = typer.Option(Path("data/report"), "--out", help="Where REPORT.md, figures/, personalization-<exp>.md and "
                                                                "steering-<exp>.json are written (other files there are kept)."),
    categories: str = typer.Option("categories", "--categories",
                                   help="Experiment with category labels: Tables 1, 9, 10 and the routing heatmaps."),
    interpret: str = typer.Option("users", "--interpret", help="Experiment of Table 4 (interpretability) and "
                                                                    "Table 11 (expert descriptions)."),
    steer: str = typer.Option("attributes", "--steer", help="Experiment whose steering results give Figures 2 and 7 "
                                                            "and the paired t-tests."),
    attributes: str = typer.Option("attributes", "--attributes", help="Attribute-level personalization: Tables 5, 6, "
                                                                      "12 and Figure 8."),
    users: str = typer.Option("users", "--users", help="User-level personalization: Table 13."),
    variant: str = typer.Option("sparse", "--variant", help="The model of Tables 6, 9, 10 and 11."),
    grid: Path = typer.Option(None, "--grid", help="Table 8's grid CSV (from `smoe grid`). Default: <data>/grid/grid.csv; "
                                                   "when absent the report says how to make it."),
) -> None:
    """Regenerate the paper's tables (1, 4, 5, 6, 9-13, and 8 when a grid has been run) and
    figures (2, 7, 8, routing heatmaps) from the pipeline's per-variant outputs into one
    self-contained markdown report; what compares variants (the paired t-tests of the
    steering, Fig. 2, 7 and 8) is computed here. A missing optional input becomes a note
    naming the file; missing metrics for the --categories experiment are an error."""
    # Built next to the target and moved into place at the end: a failed run leaves the
    # previous report (or none), never half of one.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build_report(data, staging, category_experiment=categories, interpret_experiment=interpret,
                     steer_experiment=steer, attribute_experiment=attributes, user_experiment=users,
                     variant=variant, grid_csv=grid)
        out.mkdir(exist_ok=True)
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif entry.is_dir() and (target.exists() or target.is_symlink()):
                target.unlink()
            entry.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    typer.echo(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    P.run(main)
