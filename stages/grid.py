"""`smoe grid`: summarize a lambda grid sweep (App. C, Table 8) from `dvc exp show --json`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tooling.grid import METRICS, GridError, dvc_exp_show, grid_heatmap, grid_table, load_points, write_grid_csv
from stages import common as P

HEATMAP_METRICS = ("accuracy", "expert_purity", "expert_specialization", "routing_entropy")


def main(
    from_json: Path = typer.Option(None, "--from-json", help="A saved `dvc exp show --json` output (e.g. from "
                                   "`dvc exp show --json -A > show.json` for a grid committed on branches). "
                                   "Default: run `dvc exp show --json` in the current directory."),
    metrics: str = typer.Option("data/metrics/categories/sparse.json", "--metrics",
                                help="Metrics file of the variant to summarize, as DVC names it."),
    params_file: str = typer.Option("params.yaml", "--params", help="Params file holding lambda_ls/gb/div."),
    out: Path = typer.Option(Path("data/grid"), "--out", help="Folder for grid.md, grid.csv and the heatmaps."),
) -> None:
    """Summarize the lambda grid (App. C, Table 8): per point (lambda_ls, lambda_gb,
    lambda_div) the accuracy, routing and global entropy, expert correlation, purity and
    specialization, and whether the router collapsed onto one expert, uses fewer than half
    of its K experts (partial), routes uniformly or is healthy. Works on any grid DVC knows
    about: queued (`dvc queue start -j N`), run one `dvc exp run -S ...` at a time, or committed. The workspace entry is skipped;
    queued/running/failed points are listed without metrics. Writes OUT/grid.md,
    OUT/grid.csv and OUT/heatmap_<metric>.png, and prints the table."""
    try:
        raw = json.loads(from_json.read_text()) if from_json is not None else dvc_exp_show()
        points = load_points(raw, metrics, params_file=params_file)
        if not points:
            raise GridError(f"no grid points: no commit or experiment has {', '.join(('lambda_ls', 'lambda_gb', 'lambda_div'))} "
                            f"in {params_file} (run the grid first, see README)")
        if not any(p.status == "ok" for p in points):
            raise GridError(f"no grid point has metrics in {metrics} yet ({len(points)} queued/running/failed)")
    except (GridError, OSError, json.JSONDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    table = grid_table(points)
    targets = [out / "grid.md", out / "grid.csv", *(out / f"heatmap_{m}.png" for m in HEATMAP_METRICS)]
    with P.staged(*targets) as (md, csv, *heatmaps):  # all of them replaced together, or none
        md.write_text(table)
        write_grid_csv(points, csv)
        for metric, png in zip(HEATMAP_METRICS, heatmaps):
            grid_heatmap(points, metric, png, title=f"{METRICS[metric]} ({Path(metrics).stem})")
    typer.echo(table, nl=False)
    unfinished = [p for p in points if p.status != "ok"]
    if unfinished:
        typer.echo(f"{len(unfinished)} of {len(points)} points have no metrics: "
                   + ", ".join(f"{p.name} ({p.status})" for p in unfinished), err=True)
    typer.echo(f"wrote {out}/grid.md, grid.csv, heatmap_*.png", err=True)
