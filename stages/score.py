"""`smoe score`: score (prompt, response) rows of a jsonl file with a trained reward model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from pipeline import backbone as bb
from pipeline.reward_model import RewardModel
from stages import common as P


def read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise typer.BadParameter(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("response"), str) or "prompt" not in row:
                raise typer.BadParameter(f"{path}:{n}: each line needs a 'prompt' (text or messages) and a "
                                         f"'response' (text); got keys {sorted(row) if isinstance(row, dict) else type(row).__name__}")
            rows.append(row)
    if not rows:
        raise typer.BadParameter(f"{path}: no rows")
    return rows


def main(
    input: Path = typer.Argument(..., exists=True, dir_okay=False, help="jsonl: one {\"prompt\", \"response\"} per line."),
    model: Path = typer.Option(..., "--model", "-m", help="Trained head folder, e.g. data/models/categories/sparse."),
    out: Path = typer.Option(None, "--out", "-o", help="Output jsonl (default: stdout)."),
    backbone: str = typer.Option("data/backbone", help="Backbone folder or hub id the head was trained on."),
    params_file: Path = typer.Option(P.PARAMS, "--params",
                                     help="Params whose `backbone` block (system prompt, template date) featurize used."),
    weights: str = typer.Option(None, help="Override routing weights for every row, e.g. '0,0,1,0,0' (steering)."),
    batch_rows: int = typer.Option(256, help="Rows scored per call (bounds memory)."),
) -> None:
    """Score responses with backbone + head together. Each output line is the input row plus
    `reward`, `expert_rewards` (one per expert) and `routing_weights`."""
    rows = read_rows(input)
    config = None
    if params_file.exists():  # the formatting options featurize used (system prompt, template date...)
        config = P.build(bb.BackboneConfig, P.section(P.load(params_file), "backbone"), "backbone",
                        ignore=("source",), model=backbone)
    rm = RewardModel.load(model, config or backbone)
    override = [float(w) for w in weights.split(",")] if weights else None
    sink = open(out, "w") if out else sys.stdout
    try:
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start:start + batch_rows]
            scores = rm.score([r["prompt"] for r in chunk], [r["response"] for r in chunk], routing_weights=override)
            for row, s in zip(chunk, scores.tolist()):
                sink.write(json.dumps({**row, **s}) + "\n")
    finally:
        if out:
            sink.close()


if __name__ == "__main__":
    P.run(main)
