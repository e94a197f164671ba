"""The `smoe` command: one subcommand per pipeline stage, plus tools."""

from __future__ import annotations

import typer

from stages import common
from stages import (adapt, backbone, bench, cache_info, evaluate, featurize, grid, interpret, personalize, prepare,
                    pull, report, score, seeds, serve, steer, stores, train)
from stages import export, rewardbench
from stages import data
from stages import params_schema

app = typer.Typer(help="smoe-rm: sparse MoE reward models from a cached frozen-backbone feature store.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.command("backbone")(backbone.main)
app.command("prepare")(prepare.main)
app.command("featurize")(featurize.main)
app.command("stores")(stores.main)
app.command("train")(train.main)
app.command("interpret")(interpret.main)
app.command("evaluate")(evaluate.main)
app.command("steer")(steer.main)
app.command("personalize")(personalize.main)
app.command("report")(report.main)
app.command("grid")(grid.main)
app.command("seeds")(seeds.main)
app.command("score")(score.main)
app.command("serve")(serve.main)
app.command("adapt")(adapt.main)
app.command("pull")(pull.main)
app.command("export")(export.main)
app.command("rewardbench")(rewardbench.main)

cache_app = typer.Typer(help="Inspect and verify feature caches.", no_args_is_help=True)
cache_app.command("info")(cache_info.main)
app.add_typer(cache_app, name="cache")

bench_app = typer.Typer(help="Benchmarks, each against its naive counterpart in the same run.", no_args_is_help=True)
bench_app.command("featurize")(bench.featurize_cmd)
bench_app.command("train")(bench.train_cmd)
bench_app.command("sweep")(bench.sweep_cmd)
bench_app.command("scale")(bench.scale_pipeline_cmd)
bench_app.command("scale-train")(bench.scale_cmd)
bench_app.command("serve")(bench.serve_cmd)
app.add_typer(bench_app, name="bench")
app.add_typer(data.app, name="data")
app.add_typer(params_schema.app, name="params")

def main() -> None:
    # A user's mistake (pipeline.errors.UserError, a missing file) is one line, not a
    # traceback; anything else is a bug and keeps its traceback.
    common.exit_with(app)


if __name__ == "__main__":
    main()
