"""Stage `report`: metrics, interpret, steering, personalization and plots -> data/report/REPORT.md + figures/."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.report import build_report


def main(
    data: Path = typer.Option(Path("data"), "--data", help="The pipeline's data directory (reads metrics/, interpret/, "
                                                            "plots/, predictions/ and grid/ under it)."),
    out: Path = typer.Option(Path("data/report"), "--out", help="Where REPORT.md and its figures/ folder are written."),
    categories: str = typer.Option("categories", "--categories",
                                   help="Experiment with category labels: Tables 1, 9, 10 and the routing heatmaps."),
    interpret: str = typer.Option("users", "--interpret", help="Experiment of Table 4 (interpretability) and "
                                                                    "Table 11 (expert descriptions)."),
    steer: str = typer.Option("attributes", "--steer", help="Experiment whose steering.json gives Figures 2 and 7."),
    attributes: str = typer.Option("attributes", "--attributes", help="Attribute-level personalization: Tables 5, 6, "
                                                                      "12 and Figure 8."),
    users: str = typer.Option("users", "--users", help="User-level personalization: Table 13."),
    variant: str = typer.Option("sparse", "--variant", help="The model of Tables 6, 9, 10 and 11."),
    grid: Path = typer.Option(None, "--grid", help="Table 8's grid CSV (from `smoe grid`). Default: <data>/grid/grid.csv; "
                                                   "when absent the report says how to make it."),
) -> None:
    """Regenerate the paper's tables (1, 4, 5, 6, 9-13, and 8 when a grid has been run) and
    figures (2, 7, 8, routing heatmaps) from the pipeline's outputs into one self-contained
    markdown report. A missing optional input becomes a note naming the file; missing
    metrics for the --categories experiment are an error."""
    path = build_report(data, out, category_experiment=categories, interpret_experiment=interpret,
                        steer_experiment=steer, attribute_experiment=attributes, user_experiment=users,
                        variant=variant, grid_csv=grid)
    typer.echo(f"wrote {path}")
