"""The `smoe` command: one subcommand per pipeline stage, plus tools."""

from __future__ import annotations

import typer

from stages import backbone, bench, cache_info, featurize, prepare

app = typer.Typer(help="smoe-rm: sparse MoE reward models from a cached frozen-backbone feature store.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.command("backbone")(backbone.main)
app.command("prepare")(prepare.main)
app.command("featurize")(featurize.main)

cache_app = typer.Typer(help="Inspect and verify feature caches.", no_args_is_help=True)
cache_app.command("info")(cache_info.main)
app.add_typer(cache_app, name="cache")

bench_app = typer.Typer(help="Benchmarks, each against its naive counterpart in the same run.", no_args_is_help=True)
bench_app.command("featurize")(bench.featurize_cmd)
app.add_typer(bench_app, name="bench")

if __name__ == "__main__":
    app()
