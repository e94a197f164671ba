"""`smoe score`: score (prompt, response) rows of a jsonl file with a trained reward model."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from pipeline import backbone as bb
from pipeline.pairs import as_messages
from pipeline.reward_model import RewardModel
from stages import common as P


def read_rows(path: Path) -> list[dict]:
    """Every row of the jsonl input, checked before the model loads: a bad line is one
    error naming its line number, never a traceback halfway through the output."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise typer.BadParameter(f"{path}: not UTF-8 text (byte {e.start}); is it compressed or binary?") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise typer.BadParameter(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("response"), str) or "prompt" not in row:
            raise typer.BadParameter(f"{path}:{n}: each line needs a 'prompt' (text or messages) and a "
                                     f"'response' (text); got keys {sorted(row) if isinstance(row, dict) else type(row).__name__}")
        try:
            messages = as_messages(row["prompt"])
        except TypeError as e:
            raise typer.BadParameter(f"{path}:{n}: 'prompt': {e}") from None
        if not all(isinstance(m["content"], str) for m in messages):
            raise typer.BadParameter(f"{path}:{n}: 'prompt': every message's content must be text")
        rows.append(row)
    if not rows:
        raise typer.BadParameter(f"{path}: no rows")
    return rows


def parse_weights(weights: str | None) -> list[float] | None:
    """``--weights '0,0,1,0,0'`` as floats summing to 1, checked before the model loads."""
    if not weights:
        return None
    try:
        values = [float(w) for w in weights.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--weights: {weights!r} is not a comma-separated list of numbers") from None
    if any(w < 0 for w in values) or abs(sum(values) - 1.0) > 1e-4:
        raise typer.BadParameter(f"--weights: {weights!r} must be non-negative and sum to 1")
    return values


def main(
    input: Path = typer.Argument(..., exists=True, dir_okay=False, help="jsonl: one {\"prompt\", \"response\"} per line."),
    model: Path = typer.Option(..., "--model", "-m", help="Trained head folder, e.g. data/models/categories/sparse."),
    out: Path = typer.Option(None, "--out", "-o", help="Output jsonl (default: stdout)."),
    backbone: str = typer.Option("data/backbone", help="Backbone folder or hub id the head was trained on."),
    params_file: Path = typer.Option(P.PARAMS, "--params",
                                     help="Params whose `backbone` block (system prompt, template date) featurize used."),
    weights: str = typer.Option(None, help="Override routing weights for every row, e.g. '0,0,1,0,0' (steering)."),
    batch_rows: int = typer.Option(256, min=1, help="Rows scored per call (bounds memory)."),
) -> None:
    """Score responses with backbone + head together. Each output line is the input row plus
    `reward`, `expert_rewards` (one per expert) and `routing_weights`."""
    rows = read_rows(input)
    override = parse_weights(weights)
    config = None
    if params_file.exists():  # the formatting options featurize used (system prompt, template date...)
        config = P.build(bb.BackboneConfig, P.section(P.load(params_file), "backbone"), "backbone",
                        ignore=("source",), model=backbone)
    rm = RewardModel.load(model, config or backbone)
    if override is not None and len(override) != rm.head.num_experts:
        raise typer.BadParameter(f"--weights: {len(override)} values, but {model} has {rm.head.num_experts} experts")
    if out is None:
        for line in score_lines(rm, rows, override, batch_rows):
            sys.stdout.write(line)
        return
    # All or nothing: the output appears under its name only once every row is scored.
    with P.staged(out) as (scratch,), open(scratch, "w") as sink:
        for line in score_lines(rm, rows, override, batch_rows):
            sink.write(line)


def score_lines(rm: RewardModel, rows: list[dict], override: list[float] | None, batch_rows: int) -> Iterator[str]:
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        scores = rm.score([r["prompt"] for r in chunk], [r["response"] for r in chunk], routing_weights=override)
        for row, s in zip(chunk, scores.tolist()):
            yield json.dumps({**row, **s}) + "\n"


if __name__ == "__main__":
    P.run(main)
