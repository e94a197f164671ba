"""`smoe export`: a trained head + its backbone -> a Hugging Face checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline import backbone as bb
from pipeline.export import FORMATS, ExportError, export
from pipeline.reward_model import RewardModel
from stages import common as P


def parse_weights(text: str | None) -> list[float] | None:
    """'0,0,1,0,0' -> [0.0, 0.0, 1.0, 0.0, 0.0]; one line naming the option otherwise."""
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ExportError(f"--routing-weights must be comma-separated numbers, e.g. '0,0,1,0,0'; got {text!r}") from None


def main(
    model: Path = typer.Argument(..., exists=True, file_okay=False,
                                 help="Trained head folder, e.g. data/models/categories/sparse."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (must not exist unless --force)."),
    fmt: str = typer.Option("auto", "--format", help="linear: fixed routing as the backbone's own "
                            "*ForSequenceClassification (no custom code); moe: the router too, as remote code "
                            "(trust_remote_code=True); auto: moe for an MoE head without fixed routing, else linear."),
    routing_weights: str = typer.Option(None, "--routing-weights",
                                        help="Fix an MoE head's routing, one weight per expert summing to 1, "
                                             "e.g. '0.5,0,0.5,0,0' (implies --format linear)."),
    expert: int = typer.Option(None, "--expert", help="Steer to one expert: all routing weight on expert K "
                                                      "(0-based; the one-hot case of --routing-weights)."),
    backbone: str = typer.Option("data/backbone", help="Backbone folder or hub id the head was trained on."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params whose `backbone` block (system prompt, "
                                                                "template date, max length) featurize used."),
    dtype: str = typer.Option("auto", help="Weights dtype: auto (the backbone checkpoint's) | float32 | "
                                           "bfloat16 | float16."),
    metrics: Path = typer.Option(None, help="Test metrics for the model card. Default: "
                                            "data/metrics/<experiment>/<variant>.json next to the head, if present."),
    experts: Path = typer.Option(None, help="Expert descriptions (interpret's experts.json) for the model card. "
                                            "Default: data/interpret/<experiment>/<variant>/experts.json, if present."),
    check: bool = typer.Option(True, "--check/--no-check", help="Score probe conversations with the written "
                               "folder and compare with smoe-rm's own scores (fails beyond the dtype's tolerance)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Export a trained head with its backbone as a Hugging Face checkpoint, with a model card.

    Fixed routing (a single head, the HyRe ensemble, or an MoE head with --routing-weights
    / --expert) collapses to one linear score head: a standard checkpoint that
    AutoModelForSequenceClassification, pipeline("text-classification"), TRL's
    GRPOTrainer(reward_funcs=PATH) and vLLM load without custom code. Its logit is the
    reward minus one constant per model (config.json: smoe.reward_offset), which changes
    no preference and no group-normalized advantage. An MoE head with its router exports
    with its own modeling file (trust_remote_code=True) and also returns expert rewards
    and routing weights. Input to either: the conversation rendered with the folder's
    chat template."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}")
    config = None
    if params_file.exists():  # the formatting options featurize used (system prompt, template date...)
        config = P.build(bb.BackboneConfig, P.section(P.load(params_file), "backbone"), "backbone",
                         ignore=("source",), model=backbone)
    rm = RewardModel.load(model, config or backbone)
    result = export(rm, out, fmt=fmt, routing_weights=parse_weights(routing_weights), expert=expert, dtype=dtype,
                    head_dir=model, metrics_path=metrics, experts_path=experts, check=check, force=force)
    checked = f"max |diff| vs smoe-rm {result.max_abs_diff:.2g}" if result.max_abs_diff is not None else "not checked"
    if result.format == "linear":
        typer.echo(f"wrote {result.out} (standard checkpoint, routing {result.routing_weights}; "
                   f"reward = logit + {result.reward_offset:.6g}; {checked})")
    else:
        typer.echo(f"wrote {result.out} (MoE with remote code: load with trust_remote_code=True; {checked})")


if __name__ == "__main__":
    P.run(main)
