"""`smoe adapt`: personalize a trained reward model from a user's own jsonl of labelled pairs."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.adaptation import AdaptConfig
from pipeline.user_prefs import (adapt_model, check_output_dir, default_descriptions_path, load_descriptions,
                               read_preference_file, save_adapted)
from pipeline import backbone as bb
from pipeline.reward_model import RewardModel
from stages import common as P

DEFAULTS = AdaptConfig()


def main(
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False,
                               help="Trained head folder to start from, e.g. data/models/categories/sparse."),
    examples: Path = typer.Option(..., "--examples", "-e", exists=True, dir_okay=False,
                                  help="Your labelled pairs, jsonl: one {\"prompt\", \"chosen\", \"rejected\"} "
                                       "per line; prompt is text or a list of chat messages."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the adapted model and its report "
                                                      "(must not exist or be empty, unless --force)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
    descriptions: Path = typer.Option(None, exists=True, dir_okay=False,
                                      help="Expert descriptions (interpret's experts.json). Default: "
                                           "data/interpret/<exp>/<variant>/experts.json for a model in "
                                           "data/models/<exp>/<variant>, if it exists."),
    min_pairs: int = typer.Option(5, min=1, help="Refuse files with fewer labelled pairs than this."),
    backbone: str = typer.Option("data/backbone", help="Backbone folder or hub id the head was trained on."),
    params_file: Path = typer.Option(P.PARAMS, "--params",
                                     help="Params whose `backbone` block (system prompt, template date) featurize used."),
    tau: float = typer.Option(DEFAULTS.tau, help="Hedge temperature (MoE heads): smaller = targets closer to "
                                                 "each pair's best expert."),
    epochs: int = typer.Option(DEFAULTS.epochs, help="Router training epochs (MoE heads)."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Pairs per router update (MoE heads)."),
    lr: float = typer.Option(DEFAULTS.lr, help="Router learning rate (MoE heads)."),
    seed: int = typer.Option(DEFAULTS.seed, help="Seed for the order of the pairs in each epoch."),
    hyre_temperature: float = typer.Option(DEFAULTS.hyre_temperature, help="HyRe temperature T (hyre heads)."),
    hyre_reduction: str = typer.Option(DEFAULTS.hyre_reduction, help="HyRe: sum or mean of each head's loss over "
                                                                     "your pairs (hyre heads)."),
) -> None:
    """Personalize a trained reward model with your own labelled pairs.

    Only the way the experts are combined is adapted: the router of an MoE
    head (Hedge, MiCRo's stage 2), the ensemble weights of a hyre head
    (HyRe); a single head is copied unchanged. The experts never move.

    --out gets a head folder (model.safetensors + config.json) that loads
    like any trained head (`smoe score --model OUT`, or
    RewardModel.load(OUT, backbone)), plus report.md and report.json: how
    each expert's mean routing weight over your prompts shifted, what the
    experts mean (when descriptions exist), and accuracy on your pairs
    before and after (training-set accuracy: the pairs adapted on).

    A line of --examples:

    {"prompt": "Proof dough?", "chosen": "Knead, rest, bake.", "rejected": "Bake."}
    """
    try:
        config = AdaptConfig(tau=tau, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             hyre_temperature=hyre_temperature, hyre_reduction=hyre_reduction)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    # A PreferenceFileError is reported by the CLI as one line naming the file and line.
    check_output_dir(out, force, keep=[model, examples] + ([descriptions] if descriptions else []))
    pairs = read_preference_file(examples, min_pairs)
    descriptions_file = descriptions or default_descriptions_path(model)
    try:
        texts = load_descriptions(descriptions_file) if descriptions_file else {}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise typer.BadParameter(f"{descriptions_file}: not a valid experts.json ({type(e).__name__}: {e})") from None

    backbone_config = None
    if params_file.exists():  # the formatting options featurize used (system prompt, template date...)
        backbone_config = P.build(bb.BackboneConfig, P.section(P.load(params_file), "backbone"), "backbone",
                        ignore=("source",), model=backbone)
    rm = RewardModel.load(model, backbone_config or backbone)
    head, report = adapt_model(rm, pairs, config, descriptions=texts)
    report = {"model": str(model), "examples": str(examples),
              "descriptions_file": str(descriptions_file) if descriptions_file else None,
              "descriptions_found": bool(descriptions_file and Path(descriptions_file).exists()), **report}
    save_adapted(out, head, report, force=force, adapted_from=str(model), adaptation_examples=str(examples))
    top = report["experts"][0]
    typer.echo(f"adapted {model} on {report['num_pairs']} pairs ({report['method']}) -> {out}\n"
               f"training-set accuracy {report['training_accuracy_before']:.1%} -> "
               f"{report['training_accuracy_after']:.1%}; most upweighted: E{top['id']} ({top['shift']:+.3f})"
               + (f" {top['description']}" if top.get("description") else ""))


if __name__ == "__main__":
    P.run(main)
