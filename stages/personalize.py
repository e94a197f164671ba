"""Stage `personalize`: one head of an experiment + its split stores -> data/personalize/<exp>/<variant>/
(personalization.json: every result; the adapted heads), data/metrics/<exp>/personalize-<variant>.json
(key numbers, what DVC tracks) and data/plots/personalize/<exp>/<variant>.csv (Fig. 8's curve)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from pipeline.adaptation import AdaptConfig
from pipeline.split_store import SplitStores
from pipeline.personalize import PersonalizeConfig, personalize_variant
from stages import common as P

# AdaptConfig.seed orders the pairs within an epoch; personalize sets it to each draw's seed.
PER_DRAW = {"seed"}


def configs(params: dict[str, Any]) -> tuple[PersonalizeConfig, AdaptConfig]:
    """The ``personalize:`` block split between the experiment's settings
    (:class:`PersonalizeConfig`) and the adaptation's (:class:`AdaptConfig`)."""
    values = dict(params.get("personalize") or {})
    own = {f.name for f in fields(PersonalizeConfig)}
    adaptation = {f.name for f in fields(AdaptConfig)} - PER_DRAW
    unknown = sorted(set(values) - own - adaptation)
    if unknown:
        raise typer.BadParameter(f"personalize: unknown key(s) {unknown}; known: {sorted(own | adaptation)}")
    return (P.build(PersonalizeConfig, {k: v for k, v in values.items() if k in own}, "personalize"),
            P.build(AdaptConfig, {k: v for k, v in values.items() if k in adaptation}, "personalize"))


def main(
    experiment: str = typer.Argument(..., help="Experiment name (<exp> below): a key under `experiments` in params.yaml."),
    variant: str = typer.Argument(..., help="Head to personalize: single, vanilla, micro, sparse or hyre."),
    group_by: str = typer.Option(None, help="Pair column naming the group to personalize to (attribute, user). "
                                            "Default: params experiments.<experiment>.group_by."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (reads `experiments.<experiment>` "
                                                                "and the `personalize:` block)."),
    stores: Path = typer.Option(None, help="Split stores (stage `stores`). Default: data/stores/<experiment's dataset>."),
    model: Path = typer.Option(None, help="Trained head. Default: data/models/<exp>/<variant>."),
    out: Path = typer.Option(None, help="personalization.json (every result: per n, per group, settings) and the "
                                        "adapted heads, one folder per group. Replaced as a whole. "
                                        "Default: data/personalize/<exp>/<variant>."),
    metrics_path: Path = typer.Option(None, "--metrics", help="Key numbers, the DVC metrics file. "
                                                              "Default: data/metrics/<exp>/personalize-<variant>.json."),
    curve: Path = typer.Option(None, help="Accuracy per adaptation size (CSV, for `dvc plots`). "
                                          "Default: data/plots/personalize/<exp>/<variant>.csv."),
) -> None:
    """Test-time personalization of one head (paper §6.2, App. G-H): per group (attribute
    or user), adapt it on n in {5, 10, 25, 50} of the group's pairs (3 seeds) -- Hedge
    router adaptation for MoE heads, HyRe reweighting for the ensemble, nothing for the
    single head -- and report accuracy and gain on held-out pairs of the same group. The
    split and the draws depend only on the data and the seeds: every head is adapted on
    the same pairs. Tables 5, 6, 12, 13 and Fig. 8 over all heads are made by `report`."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    config, adapt_config = configs(params)
    group_by = group_by or spec.get("group_by")
    if not group_by:
        raise typer.BadParameter(f"experiments.{experiment} has no group_by (the pair column to personalize to, "
                                 f"e.g. user) and --group-by was not given")
    stores = SplitStores(stores or Path("data/stores") / spec["dataset"])
    out = out or Path("data/personalize") / experiment / variant
    metrics_path = metrics_path or Path("data/metrics") / experiment / f"personalize-{variant}.json"
    curve = curve or Path("data/plots/personalize") / experiment / f"{variant}.csv"
    with P.staged(out, metrics_path, curve) as (new_out, new_metrics, new_curve):
        new_out.mkdir()
        output = personalize_variant(stores, model or Path("data/models") / experiment / variant, variant, group_by,
                                     config=config, adapt_config=adapt_config, adapted_dir=new_out)
        (new_out / "personalization.json").write_text(json.dumps(output.results, indent=2, sort_keys=True) + "\n")
        new_metrics.write_text(json.dumps(output.key_metrics, indent=2, sort_keys=True) + "\n")
        new_curve.write_text(output.curve_csv)
    typer.echo(json.dumps(output.key_metrics, indent=1))


if __name__ == "__main__":
    P.run(main)
