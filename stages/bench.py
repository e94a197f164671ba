"""`smoe bench featurize` (real vs naive, same data, one run) and `smoe bench train`."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch
import typer

from pipeline.bench import compare
from pipeline.train import TrainConfig
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


def train_cmd(
    pairs: int = typer.Option(36_000, help="Pairs in the synthetic cache (paper's SHP train set: 36K)."),
    hidden: int = typer.Option(3072, help="State size (GRM-Llama3.2-3B: 3072)."),
    experts: int = typer.Option(20, help="K (the paper's preference-700K setting: 20)."),
    epochs: int = typer.Option(1, help="Epochs to time."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    workdir: Path = typer.Option(Path("/tmp/smoe-bench"), help="Where the synthetic cache is written (and reused)."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file (train block)."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """Time sparse-MoE training from a synthetic cache of paper scale: pairs/s and peak RSS
    of the training process (the cache is streamed, never loaded)."""
    from pipeline.bench_train import bench

    base = vars(P.train_config(P.load(params_file))) if params_file.exists() else {}
    config = P.build(TrainConfig, base, epochs=epochs, device=device)
    res = bench(workdir, num_pairs=pairs, hidden_size=hidden, num_experts=experts, config=config)
    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    typer.echo(f"training benchmark on {where}: sparse MoE, K={experts}, hidden {hidden}, "
               f"{res['train_pairs']} train pairs of a {pairs}-pair cache ({res['cache_gb']:.2f} GB)")
    typer.echo(f"build pair store {res['build_s']:.1f} s | train {res['train_s']:.1f} s for {epochs} epoch(s) "
               f"= {res['pairs_per_s']:.0f} pairs/s | peak RSS {res['peak_rss_mb']:.0f} MB")
    if json_out:
        json_out.write_text(json.dumps({"device": where, **res}, indent=2) + "\n")
