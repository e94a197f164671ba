"""`smoe seeds`: is a result robust to the training seed? Mean ± std and per-seed wins from `dvc exp show --json`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tooling.grid import GridError, dvc_exp_show
from tooling.seeds import DEFAULT_PER_SEED, by_group, load_seed_runs, seeds_report
from stages import common as P


def main(
    experiment: str = typer.Argument("categories", help="Experiment in params.yaml whose "
                                     "data/metrics/<experiment>/<variant>.json to summarize."),
    seed_key: str = typer.Option("train.seed", "--seed-key", help="The param the runs differ in, as `-S` names it."),
    group_key: str = typer.Option(None, "--by", help="A second param the runs may differ in, e.g. "
                                  "datasets.categories.seed (the data draw): one summary per value, then all pooled."),
    reference: str = typer.Option("sparse", "--reference", help="Variant compared against every other one."),
    metric: list[str] = typer.Option(list(DEFAULT_PER_SEED), "--metric", "-m",
                                     help="Metric to tabulate per seed (repeatable)."),
    from_json: Path = typer.Option(None, "--from-json", help="A saved `dvc exp show --json` output. "
                                   "Default: run `dvc exp show --json` in the current directory."),
    params_file: str = typer.Option("params.yaml", "--params", help="Params file holding the seed key."),
    out: Path = typer.Option(None, "--out", help="Also write the markdown summary to this file."),
) -> None:
    """Summarize one configuration trained under several seeds, e.g. after
    `dvc exp run --queue -S 'train.seed=0,1,2,3,4' evaluate@categories-{single,vanilla,micro,sparse,hyre} && dvc queue start -j 2`.
    Runs are the commit and experiments whose params equal HEAD's in everything but the
    seed key (a lambda grid beside them is skipped). Prints, per variant, mean ± std of the
    key metrics over the seeds, and per seed the chosen metrics side by side with how many
    seeds the reference variant is strictly higher in. With --by, the runs may also differ
    in that param (e.g. the data seed): one summary per value, then all runs pooled."""
    try:
        raw = json.loads(from_json.read_text()) if from_json is not None else dvc_exp_show()
        runs, skipped = load_seed_runs(raw, experiment, seed_key=seed_key, group_key=group_key,
                                       params_file=params_file)
        if not runs:
            raise GridError(f"no finished run has data/metrics/{experiment}/*.json with HEAD's params "
                            f"(queue seeds with `dvc exp run --queue -S '{seed_key}=0,1,2' evaluate@{experiment}-{{single,vanilla,micro,sparse,hyre}}`)")
        options = dict(reference=reference, seed_key=seed_key, per_seed=tuple(metric))
        if group_key is None:
            report = seeds_report(runs, experiment, **options)
        else:
            groups = by_group(runs)
            parts = [seeds_report(group_runs, experiment, group=f"{group_key} = {value}", **options)
                     for value, group_runs in groups]
            if len(groups) > 1:  # rows of the pooled tables are labelled group/seed
                parts.append(seeds_report(runs, experiment, group=f"all {len(groups)} values of {group_key} pooled",
                                          **options))
            report = "\n".join(parts)
    except (GridError, OSError, json.JSONDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(report, nl=False)
    if skipped:
        typer.echo(f"skipped {skipped} finished run(s) whose params differ from HEAD's in more than {seed_key}", err=True)
    if len(runs) == 1:
        typer.echo("only one seed: nothing to compare yet", err=True)
    if out is not None:
        with P.staged(out) as (new,):
            new.write_text(report)
        typer.echo(f"wrote {out}", err=True)
