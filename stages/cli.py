"""The `smoe` command: one subcommand per pipeline stage, plus tools."""

from __future__ import annotations

import sys

import typer

from pipeline.backbone import BackboneError
from pipeline.cache import CacheError
from pipeline.interpret import InterpretError
from pipeline.models import IncompatibleFeaturesError
from pipeline.pairs import SchemaError
from pipeline.train import CacheMismatchError

from pipeline.personal import PreferenceFileError
from pipeline.personalize import PersonalizeError
from pipeline.share import PullError

from stages import (adapt, backbone, bench, cache_info, evaluate, featurize, grid, interpret, personalize, prepare,
                    pull, report, score, seeds, steer, train)

app = typer.Typer(help="smoe-rm: sparse MoE reward models from a cached frozen-backbone feature store.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.command("backbone")(backbone.main)
app.command("prepare")(prepare.main)
app.command("featurize")(featurize.main)
app.command("train")(train.main)
app.command("interpret")(interpret.main)
app.command("evaluate")(evaluate.main)
app.command("steer")(steer.main)
app.command("personalize")(personalize.main)
app.command("report")(report.main)
app.command("grid")(grid.main)
app.command("seeds")(seeds.main)
app.command("score")(score.main)
app.command("adapt")(adapt.main)
app.command("pull")(pull.main)

cache_app = typer.Typer(help="Inspect and verify feature caches.", no_args_is_help=True)
cache_app.command("info")(cache_info.main)
app.add_typer(cache_app, name="cache")

bench_app = typer.Typer(help="Benchmarks, each against its naive counterpart in the same run.", no_args_is_help=True)
bench_app.command("featurize")(bench.featurize_cmd)
bench_app.command("train")(bench.train_cmd)
bench_app.command("sweep")(bench.sweep_cmd)
bench_app.command("scale")(bench.scale_cmd)
app.add_typer(bench_app, name="bench")

# Errors a user can fix (bad input, a cache from another backbone, a missing file) are
# reported as one line naming the problem, not as a traceback. Anything else is a bug and
# keeps its traceback.
USER_ERRORS = (CacheError, CacheMismatchError, IncompatibleFeaturesError, SchemaError, BackboneError,
               InterpretError, PersonalizeError, PreferenceFileError, PullError, FileNotFoundError)


def main() -> None:
    try:
        # Without standalone mode click RETURNS the code of a `typer.Exit(n)` instead of
        # exiting with it; pass it on, or a failed `smoe cache info` would exit 0.
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # bad option or params value: click's own message
        e.show()
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
