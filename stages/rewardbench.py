"""`smoe rewardbench` / stage `rewardbench`: RewardBench-style accuracy of reward models
on a local file in RewardBench's schema (prompt, chosen, rejected, subset)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline import backbone as bb
from pipeline.reward_model import RewardModel
from pipeline.rewardbench import (RewardBenchConfig, RewardBenchFileError, evaluate, file_sha256, hf_scorer,
                                  markdown, model_kind, needs_remote_code, read_pairs, smoe_scorer)
from stages import common as P


def main(
    file: Path = typer.Argument(None, help="RewardBench-schema file: .jsonl/.json/.parquet/.csv (optionally "
                                           "compressed). Not with --from-params."),
    model: list[Path] = typer.Option(None, "--model", "-m",
                                     help="A smoe head folder (data/models/<experiment>/<variant>) or a Hugging "
                                          "Face checkpoint (e.g. from `smoe export`). Repeat to compare models."),
    from_params: str = typer.Option(None, "--from-params", metavar="NAME",
                                    help="What the DVC stage runs: evaluate params rewardbench.files[NAME] with "
                                         "the heads in rewardbench.models, into data/metrics/rewardbench/NAME.json."),
    out: Path = typer.Option(None, "--out", "-o", help="Results JSON (default: print only the tables)."),
    backbone: str = typer.Option("data/backbone", help="Backbone of smoe heads (folder or hub id)."),
    params_file: Path = typer.Option(P.PARAMS, "--params",
                                     help="Params: the `backbone` formatting featurize used, and `rewardbench`."),
    batch_size: int = typer.Option(None, help="Responses per forward call (default: rewardbench.batch_size, "
                                              "64; Hugging Face checkpoints: 8)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                           help="Allow checkpoints with their own modeling code (the MoE export)."),
) -> None:
    """Accuracy per subset (chosen scored strictly above rejected), overall accuracy, and
    RewardBench's section scores (Chat, Chat Hard, Safety, Reasoning) with the
    maintainers' published example-count weighting (allenai/reward-bench, see
    pipeline/rewardbench.py for the commit and files). Prints a table per model."""
    params = P.load(params_file) if params_file.exists() else {}
    config = P.build(RewardBenchConfig, params.get("rewardbench"), "rewardbench")
    if from_params is not None:
        if file is not None or model:
            raise typer.BadParameter("--from-params takes the file and models from params; drop FILE and --model")
        if from_params not in config.files:
            raise typer.BadParameter(f"rewardbench.files has no {from_params!r}; configured: {sorted(config.files)}")
        file = Path(config.files[from_params])
        model = [Path("data/models") / m for m in config.models]
        out = out or Path("data/metrics/rewardbench") / f"{from_params}.json"
    if file is None or not model:
        raise typer.BadParameter("give a FILE and at least one --model (or --from-params NAME)")
    rows = read_pairs(file)
    backbone_config = None
    if "backbone" in params:  # the formatting options featurize used (system prompt, template date...)
        backbone_config = P.build(bb.BackboneConfig, P.section(params, "backbone"), "backbone",
                                  ignore=("source",), model=backbone)
    results = {}
    for path in model:
        if model_kind(path) == "smoe":
            scorer = smoe_scorer(RewardModel.load(path, backbone_config or backbone), batch_size or config.batch_size)
        else:
            if needs_remote_code(path) and not trust_remote_code:
                raise RewardBenchFileError(f"{path}: ships its own modeling code (auto_map); pass --trust-remote-code "
                                           f"to run it")
            scorer = hf_scorer(path, trust_remote_code=trust_remote_code, batch_size=batch_size or 8)
        results[str(path)] = evaluate(rows, scorer)
    typer.echo(markdown(results))
    if out is not None:
        report = {"file": str(file), "sha256": file_sha256(file), "num_pairs": len(rows), "models": results}
        with P.staged(out) as (tmp,):
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    P.run(main)
