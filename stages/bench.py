"""`smoe bench featurize | train | sweep | serve`: each against its naive counterpart on the
same pairs, in one run; `smoe bench scale`: the synthetic paper-scale memory check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from pipeline.backbone import BackboneConfig
from pipeline.featurize import FeaturizeConfig
from pipeline.train import TrainConfig
from stages import common as P
from tooling.bench import machine_label


def _backbone(params: dict[str, Any], model_dir: str) -> BackboneConfig:
    return P.build(BackboneConfig, P.section(params, "backbone"), "backbone", ignore=("source",), model=model_dir)


def _featurize(params: dict[str, Any]) -> FeaturizeConfig:
    return P.build(FeaturizeConfig, P.section(params, "featurize"), "featurize")


def _write_json(path: Path | None, device: str, res: dict[str, Any]) -> None:
    if path:
        with P.staged(path) as (new,):
            new.write_text(json.dumps({"device": device, **res}, indent=2) + "\n")


def featurize_cmd(
    dataset: str = typer.Argument("categories", help="Prepared dataset (folder under data/prepared)."),
    limit: int = typer.Option(300, help="Use the first LIMIT pairs (both modes see the same pairs)."),
    backbone_dir: str = typer.Option("data/backbone", "--backbone", help="Materialized backbone folder."),
    prepared: Path = typer.Option(None, help="Prepared folder. Default: data/prepared/<dataset>."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """Featurize throughput: the real featurize against a batch-1 loop, same pairs.

    The naive loop is ArmoRM's extraction: batch size 1, chosen and rejected run
    separately per pair. Each mode runs in its own process. Prints pairs/s, sequences/s,
    forward tokens/s, peak RSS and the wall ratio."""
    from tooling.bench import compare

    params = P.load(params_file)
    res = compare(prepared or Path("data/prepared") / dataset, limit,
                  _backbone(params, backbone_dir), _featurize(params))
    device = machine_label()
    typer.echo(f"featurize benchmark on {device}, {res['real']['pairs']} pairs of {dataset}")
    typer.echo(f"{'mode':<8}{'wall s':>9}{'pairs/s':>10}{'seq/s':>9}{'fwd tok/s':>11}{'fwd tokens':>12}{'peak RSS MB':>13}")
    for mode in ("naive", "real"):
        r = res[mode]
        typer.echo(f"{mode:<8}{r['seconds']:>9.1f}{r['pairs_per_s']:>10.2f}{r['sequences_per_s']:>9.2f}"
                   f"{r['forward_tokens_per_s']:>11.0f}{r['forward_tokens']:>12}{r['peak_rss_mb']:>13.0f}")
    typer.echo(f"speedup (naive wall / real wall, same pairs): {res['speedup_wall']:.2f}x")
    _write_json(json_out, device, res)


def _compare_training(experiment: str, limit: int, epochs: int, backbone_dir: str, prepared: Path | None,
                      params_file: Path, lambda_div: list[float] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shared by `train` (lambda_div None: the experiment's own lambdas) and `sweep`."""
    from tooling.bench_train import compare

    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    lambdas = P.lambdas(params, experiment)
    points = [lambdas] if lambda_div is None else [{**lambdas, "lambda_div": float(v)} for v in lambda_div]
    res = compare(prepared or Path("data/prepared") / spec["dataset"], limit, _backbone(params, backbone_dir),
                  _featurize(params), P.build(TrainConfig, P.section(params, "train"), "train", epochs=epochs),
                  num_experts=int(spec["num_experts"]), points=points)
    return res, {"experiment": experiment, "dataset": spec["dataset"], "num_experts": int(spec["num_experts"]),
                 "points": points}


def _print_comparison(res: dict[str, Any]) -> None:
    typer.echo(f"{'mode':<8}{'featurize s':>12}{'build s':>9}{'train s':>9}{'wall s':>9}{'s/epoch':>9}"
               f"{'pairs/s':>9}{'peak RSS MB':>13}")
    naive, cached = res["naive"], res["cached"]
    typer.echo(f"{'naive':<8}{'-':>12}{'-':>9}{naive['train_s']:>9.1f}{naive['seconds']:>9.1f}{naive['epoch_s']:>9.2f}"
               f"{naive['pairs_per_s']:>9.2f}{naive['peak_rss_mb']:>13.0f}")
    typer.echo(f"{'cached':<8}{cached['featurize_s']:>12.1f}{cached['build_s']:>9.2f}{cached['train_s']:>9.1f}"
               f"{cached['seconds']:>9.1f}{cached['epoch_s']:>9.2f}{cached['pairs_per_s']:>9.2f}"
               f"{cached['peak_rss_mb']:>13.0f}")
    typer.echo(f"(naive wall includes {naive['tokenize_s']:.2f} s tokenizing the pairs once; pairs/s counts "
               f"pairs x epochs x points over the wall)")
    typer.echo(f"speedup (naive wall / cached wall, same pairs, head and epochs): {res['speedup_wall']:.2f}x")
    once = cached["featurize_s"] + cached["build_s"]
    typer.echo(f"each further epoch: naive {naive['epoch_s']:.2f} s, cached {cached['epoch_s']:.2f} s; the cache's "
               f"one-off {once:.1f} s is paid back after "
               + (f"{res['break_even_epochs']:.2f} epoch(s)" if res["break_even_epochs"] is not None else "never"))


def train_cmd(
    experiment: str = typer.Argument("categories", help="Experiment in params.yaml (its dataset, K and lambdas)."),
    limit: int = typer.Option(100, help="Use the first LIMIT pairs of the dataset (both modes train on the same pairs)."),
    epochs: int = typer.Option(2, help="Training epochs (both modes)."),
    backbone_dir: str = typer.Option("data/backbone", "--backbone", help="Materialized backbone folder."),
    prepared: Path = typer.Option(None, help="Prepared folder. Default: data/prepared/<experiment's dataset>."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (backbone, featurize, train)."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """Training from the cache against training with the backbone in the loop, same pairs.

    Naive is MiCRo's public code: every training step runs the frozen backbone over the
    batch's chosen and rejected sequences, then the head. Both modes train the same
    sparse head (the experiment's K and lambdas, params.yaml's train block) on the same
    pairs for the same epochs, each in its own process. The cached wall includes building
    the cache: the real featurize of the same pairs and the pair-store build. Prints
    featurize, build and train seconds, wall, seconds per further epoch, pairs/s and peak
    RSS per mode, the wall ratio naive / cached, and after how many epochs the cache has
    paid for itself."""
    res, setup = _compare_training(experiment, limit, epochs, backbone_dir, prepared, params_file, None)
    device = machine_label()
    lambdas = ", ".join(f"{k} {v:g}" for k, v in setup["points"][0].items())
    typer.echo(f"train benchmark on {device}: sparse MoE K={setup['num_experts']} ({lambdas}), "
               f"{res['cached']['pairs']} pairs of {setup['dataset']}, {epochs} epoch(s)")
    _print_comparison(res)
    _write_json(json_out, device, {**setup, **res})


def sweep_cmd(
    experiment: str = typer.Argument("categories", help="Experiment in params.yaml (its dataset, K and lambdas)."),
    lambda_div: list[float] = typer.Option([0.0, 1.0, 2.0], "--lambda-div",
                                           help="Sweep points (repeat the option); other lambdas from params."),
    limit: int = typer.Option(100, help="Use the first LIMIT pairs of the dataset (both modes train on the same pairs)."),
    epochs: int = typer.Option(1, help="Training epochs per point (both modes; 1 keeps the naive side to minutes)."),
    backbone_dir: str = typer.Option("data/backbone", "--backbone", help="Materialized backbone folder."),
    prepared: Path = typer.Option(None, help="Prepared folder. Default: data/prepared/<experiment's dataset>."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (backbone, featurize, train)."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """A lambda_div sweep (P points) from the cache against P backbone-in-the-loop trainings.

    Cached: featurize the pairs once, build the pair store once, train the sparse head
    for every point from the cache. Naive: every point is a separate training with the
    frozen backbone in the loop (as in `smoe bench train`; there is no cache to reuse).
    Each mode in its own process; prints both walls, per-point train times and the
    ratio."""
    res, setup = _compare_training(experiment, limit, epochs, backbone_dir, prepared, params_file, lambda_div)
    device = machine_label()
    fixed = ", ".join(f"{k} {v:g}" for k, v in setup["points"][0].items() if k != "lambda_div")
    typer.echo(f"sweep benchmark on {device}: sparse MoE K={setup['num_experts']}, lambda_div in "
               f"{{{', '.join(f'{v:g}' for v in lambda_div)}}} ({fixed}), {res['cached']['pairs']} pairs of "
               f"{setup['dataset']}, {epochs} epoch(s) per point")
    typer.echo("naive: each point trains with the backbone in the loop; cached: featurize once, train each point "
               "from the cache")
    _print_comparison(res)
    for mode in ("naive", "cached"):
        typer.echo(f"{mode} train s per point: " + ", ".join(f"{s:.1f}" for s in res[mode]["point_s"]))
    _write_json(json_out, device, {**setup, **res})


def scale_cmd(
    pairs: int = typer.Option(36_000, help="Pairs in the synthetic cache (paper's SHP train set: 36K)."),
    hidden: int = typer.Option(3072, help="State size (GRM-Llama3.2-3B: 3072)."),
    experts: int = typer.Option(20, help="K (the paper's preference-700K setting: 20)."),
    epochs: int = typer.Option(1, help="Epochs to time."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    workdir: Path = typer.Option(Path("/tmp/smoe-bench"), help="Where the synthetic cache is written (and reused)."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (train block)."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """Memory check at paper scale: training from a synthetic 36K- or 200K-pair cache.

    Sparse MoE, hidden 3072, K = 20 by default. Prints the pair-store build time,
    training pairs/s and the training process's peak RSS (the cache is streamed, never
    loaded). No naive counterpart: at this scale it would need the 3B backbone."""
    from tooling.bench_train import bench

    base = P.section(P.load(params_file), "train") if params_file.exists() else {}
    config = P.build(TrainConfig, base, "train", epochs=epochs, device=device)
    res = bench(workdir, num_pairs=pairs, hidden_size=hidden, num_experts=experts, config=config)
    where = machine_label(device)
    typer.echo(f"training benchmark on {where}: sparse MoE, K={experts}, hidden {hidden}, "
               f"{res['train_pairs']} train pairs of a {pairs}-pair cache ({res['cache_gb']:.2f} GB)")
    typer.echo(f"build pair store {res['build_s']:.1f} s | train {res['train_s']:.1f} s for {epochs} epoch(s) "
               f"= {res['pairs_per_s']:.0f} pairs/s | peak RSS {res['peak_rss_mb']:.0f} MB")
    _write_json(json_out, where, res)


def serve_cmd(
    requests: int = typer.Option(128, help="Requests (one pair each) per concurrency level, in each mode."),
    clients: list[int] = typer.Option([1, 16], "--clients", help="Concurrent clients (repeat the option)."),
    experts: int = typer.Option(4, help="K of the randomly initialized head."),
    backbone_dir: str = typer.Option("data/backbone", "--backbone", help="Materialized backbone folder."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file (its backbone block)."),
    workdir: Path = typer.Option(Path("/tmp/smoe-bench-serve"), help="Where the random head is saved."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """`smoe serve` against calling RewardModel.score directly, same pairs, one run.

    Direct: the clients are threads sharing one RewardModel in this process, one score
    call per request, one at a time (plus one call over all of a level's pairs: the
    batching ceiling). Server: `python -m stages.serve` on loopback, each client posting
    one OpenRLHF query per request to /get_reward. Prints sequences/s and p50/p99 latency
    per mode and client count. The head is randomly initialized (rewards do not matter
    for throughput); the server's rewards are checked against the direct ones."""
    from tooling.bench_serve import compare

    params = P.load(params_file)
    res = compare(_backbone(params, backbone_dir), workdir, requests=requests, clients=tuple(clients),
                  num_experts=experts, params_file=params_file)
    device = machine_label()
    typer.echo(f"serve benchmark on {device}: {res['head']} (K={experts}), {requests} requests of one pair "
               f"per level")
    typer.echo(f"{'clients':>7}  {'mode':<17}{'seq/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'wall s':>8}")
    for c, level in res["levels"].items():
        for mode in ("direct", "server"):
            r = level[mode]
            typer.echo(f"{c:>7}  {mode:<17}{r['sequences_per_s']:>8.2f}{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}"
                       f"{r['seconds']:>8.1f}")
        one = level["direct_one_call"]
        typer.echo(f"{c:>7}  {'direct, one call':<17}{one['sequences_per_s']:>8.2f}{'-':>9}{'-':>9}"
                   f"{one['seconds']:>8.1f}")
        typer.echo(f"{'':>7}  server rewards vs direct: max |diff| {level['server']['max_abs_diff_vs_direct']:.2e}")
    before, after = (", ".join(f"{x:.1f}" for x in res[k]) for k in ("load_average_before", "load_average_after"))
    typer.echo(f"machine load average (1/5/15 min): {before} before, {after} after")
    _write_json(json_out, device, res)
