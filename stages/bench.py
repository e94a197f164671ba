"""`smoe bench featurize`: real featurize vs a naive batch-size-1 loop, same data, one run."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
import typer

from pipeline.bench import compare
from stages import params as P


def featurize_cmd(
    dataset: str = typer.Argument("categories", help="Prepared dataset (folder under data/prepared)."),
    limit: int = typer.Option(300, help="Use the first LIMIT pairs (both modes see the same pairs)."),
    backbone_dir: str = typer.Option("data/backbone", "--backbone", help="Materialized backbone folder."),
    prepared: Path = typer.Option(None, help="Prepared folder. Default: data/prepared/<dataset>."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """Measure featurize throughput (pairs/s, sequences/s, forward tokens/s, peak RSS) for
    the real implementation and an ArmoRM-style batch-size-1 loop; print the ratio."""
    params = P.load(params_file)
    res = compare(prepared or Path("data/prepared") / dataset, limit,
                  P.backbone_config(params, backbone_dir), P.featurize_config(params))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    typer.echo(f"featurize benchmark on {device}, {res['real']['pairs']} pairs of {dataset}")
    typer.echo(f"{'mode':<8}{'wall s':>9}{'pairs/s':>10}{'seq/s':>9}{'fwd tok/s':>11}{'fwd tokens':>12}{'peak RSS MB':>13}")
    for mode in ("naive", "real"):
        r = res[mode]
        typer.echo(f"{mode:<8}{r['seconds']:>9.1f}{r['pairs_per_s']:>10.2f}{r['sequences_per_s']:>9.2f}"
                   f"{r['forward_tokens_per_s']:>11.0f}{r['forward_tokens']:>12}{r['peak_rss_mb']:>13.0f}")
    typer.echo(f"speedup (naive wall / real wall, same pairs): {res['speedup_wall']:.2f}x")
    if json_out:
        json_out.write_text(json.dumps({"device": device, **res}, indent=2) + "\n")
