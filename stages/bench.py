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


def _backbone(params: dict[str, Any], model_dir: str, **overrides: Any) -> BackboneConfig:
    return P.build(BackboneConfig, P.section(params, "backbone"), "backbone", ignore=("source",), model=model_dir,
                   **overrides)


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
    attention: str = typer.Option(None, help="sdpa | flex: the real mode's backbone.attention. "
                                             "Default: the params file's."),
    json_out: Path = typer.Option(None, help="Also write the results as JSON here."),
) -> None:
    """Featurize throughput: the real featurize against a batch-1 loop, same pairs.

    The naive loop is ArmoRM's extraction: batch size 1, chosen and rejected run
    separately per pair, with sdpa. Each mode runs in its own process. Prints pairs/s,
    sequences/s, forward tokens/s, peak RSS, the wall ratio and, on a GPU with a known
    peak, the model FLOP utilization (MFU = model FLOPs per token x forward tokens/s /
    peak FLOP/s, over the mode's whole wall)."""
    from tooling.bench import compare

    params = P.load(params_file)
    res = compare(prepared or Path("data/prepared") / dataset, limit,
                  _backbone(params, backbone_dir, attention=attention), _featurize(params))
    device = machine_label()
    real = res["real"]
    typer.echo(f"featurize benchmark on {device}, {real['pairs']} pairs of {dataset} "
               f"({real['dtype']}, real mode's attention: {real['attention']})")
    typer.echo(f"{'mode':<8}{'wall s':>9}{'pairs/s':>10}{'seq/s':>9}{'fwd tok/s':>11}{'fwd tokens':>12}"
               f"{'peak RSS MB':>13}{'MFU %':>7}")
    for mode in ("naive", "real"):
        r = res[mode]
        mfu = f"{100 * r['mfu']:>7.1f}" if r["mfu"] is not None else f"{'-':>7}"
        typer.echo(f"{mode:<8}{r['seconds']:>9.1f}{r['pairs_per_s']:>10.2f}{r['sequences_per_s']:>9.2f}"
                   f"{r['forward_tokens_per_s']:>11.0f}{r['forward_tokens']:>12}{r['peak_rss_mb']:>13.0f}{mfu}")
    typer.echo(f"speedup (naive wall / real wall, same pairs): {res['speedup_wall']:.2f}x")
    if real["mfu"] is not None:
        typer.echo(f"real mode: {real['model_flops'] / real['forward_tokens'] / 1e9:.2f} GFLOP per token (mean "
                   f"context {real['mean_context']:.0f}); peak {real['peak_flops'] / 1e12:.0f} TFLOP/s")
    elif real["device_type"] != "cuda":
        typer.echo("MFU is not defined on a CPU (no peak FLOP/s figure): compare forward tokens/s")
    elif real["model_flops"] is None:
        typer.echo("MFU not computed: the FLOP count is for Llama-family decoders")
    else:
        typer.echo(f"MFU not computed: no peak FLOP/s figure for {device} in {real['dtype']}")
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

    Cached: featurize the pairs once, build the split stores once, train the sparse head
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
    typer.echo(f"build split stores {res['build_s']:.1f} s | train {res['train_s']:.1f} s for {epochs} epoch(s) "
               f"= {res['pairs_per_s']:.0f} pairs/s | peak RSS {res['peak_rss_mb']:.0f} MB")
    _write_json(json_out, where, res)


def scale_pipeline_cmd(
    pairs: int = typer.Option(36_000, help="Pairs in the synthetic cache (the paper's SHP train set: 36K; "
                                           "issue 16's paper-scale run: 700000)."),
    hidden: int = typer.Option(3072, help="State size (GRM-Llama3.2-3B: 3072; small values for tests)."),
    experts: int = typer.Option(20, help="K: clusters in the cache and experts per head (preference-700K: 20)."),
    epochs: int = typer.Option(3, help="Training epochs of every head (the paper's 3)."),
    workdir: Path = typer.Option(None, help="Work folder, new or empty. Default: a fresh folder under params' "
                                            "scratch_dir, else $TMPDIR. Deleted at the end unless --keep or a "
                                            "stage failed."),
    keep: bool = typer.Option(False, "--keep", help="Keep the work folder (cache, stores, outputs, logs, I/O stats)."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="The project's params: the work folder's "
                                                                "params.yaml starts from them."),
    json_out: Path = typer.Option(None, help="Also write every figure as JSON here (atomically)."),
) -> None:
    """The whole pipeline after featurize at paper scale, on a synthetic cache: time,
    peak memory and I/O of every stage, and issue 16's two targets.

    In a fresh work folder: writes a synthetic cache with cluster structure
    (data/features/scale: PAIRS pairs, HIDDEN-wide float16 states, EXPERTS clusters,
    split 0.8/0.1/0.1) and the prepared prompts interpret and evaluate read
    (data/prepared/scale), a params.yaml with one experiment `scale` (K = EXPERTS,
    group_by category, lambda_gb 1.0 as the paper for 700K, steer.label category), then
    runs, each as its own `python -m stages.<name>` process exactly as `dvc repro` does
    (output in logs/<stage>.log): stores; train single, vanilla, micro, sparse, hyre;
    interpret vanilla, micro, sparse; evaluate x 5; steer vanilla, micro, sparse;
    personalize x 5. A line per stage is printed as it finishes.

    Per stage: wall seconds, peak RSS (the stage process's own, via wait4), MiB read from
    the cache and from the split stores (counted by the readers, pipeline.iostats), MiB
    written (the kernel's write_bytes: memory-mapped writes and deleted scratch included),
    wchar (bytes passed to write()) and the outputs' size. Then totals, the cache's size
    and the ratio cache-bytes-read / cache size; a legend under the table says the same.

    Targets, each printed PASS or FAIL (an unmeasured figure is a FAIL): peak RSS under
    3 GiB in every stage; all stages together read at most 2x the cache's size from the
    cache.

    Disk: about twice the cache, pairs x 3 x hidden x 2 bytes x 2 (cache + split stores):
    ~26 GB at 700000 pairs and hidden 3072, ~1.3 GB at the default 36000; refused up front
    when the work folder's disk has less free. Time: over an hour at 700000 pairs and 3
    epochs on the project's 2-core CPU machine when idle, dominated by the five trainings
    (each 3 x 560K pairs at ~2,400 pairs/s: ~12 min); a machine busy with other jobs is
    several times slower. Follow a stage with `tail -f <work folder>/logs/<stage>.log`.

    Exit status: 0 all stages ran and both targets pass; 1 a stage failed (named, with the
    end of its log; the work folder is kept); 3 all stages ran but a target failed."""
    import shutil

    from pipeline.errors import UserError
    from tooling import bench_scale as S

    source = P.load(params_file)
    least, comfortable = S.min_pairs_for(experts, source), S.min_pairs_for(experts, source, headroom=1.2)
    if pairs < least:
        raise typer.BadParameter(f"--pairs {pairs} is too few for K={experts}: personalize and steer need a "
                                 f"cluster to have enough test pairs (min_pairs, the largest adaptation size), and "
                                 f"on average none would; use at least {least} (better {comfortable}), or fewer "
                                 f"--experts")
    if pairs < comfortable:
        typer.echo(f"warning: with {pairs} pairs and K={experts}, personalize and steer will skip (and count) the "
                   f"clusters with too few test pairs; {comfortable} pairs or more keep nearly all of them", err=True)
    where = S.make_workdir(workdir, source.get("scratch_dir"))
    try:
        params = S.scale_params(source, workdir=where, pairs=pairs, experts=experts, epochs=epochs)
        problem = P.schema_problem(params)
        if problem:
            raise P.ParamsError(f"the benchmark's params.yaml (from {params_file}): {problem}")
        need, free = S.estimated_disk_bytes(pairs, hidden), shutil.disk_usage(where).free
        if free < need:
            raise UserError(f"{where}: {free / 1e9:.1f} GB free, the benchmark needs ~{need / 1e9:.1f} GB "
                            f"(cache + split stores); choose another --workdir or fewer --pairs")
    except BaseException:
        S.remove_workdir(where)  # made by this call and still empty of results
        raise
    device = machine_label("cpu")
    typer.echo(f"scale benchmark on {device}, commit {S.git_commit()}: {pairs:,} pairs, hidden {hidden}, "
               f"K={experts}, {epochs} epoch(s), lambda_gb {S.PAPER_LAMBDA_GB:g}, curve every "
               f"{params['train']['curve_every']} steps")
    typer.echo(f"work folder {where} (needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free); "
               f"each stage's output in {where}/logs/<stage>.log")
    try:
        result = S.run(params, where, pairs=pairs, hidden=hidden, experts=experts, epochs=epochs, machine=device,
                       on_stage=typer.echo)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; work folder kept: {where}", err=True)
        raise
    typer.echo("")
    for line in S.report_lines(result):
        typer.echo(line)
    _write_json(json_out, device, result)
    if result["failed"]:
        failed = next((s for s in result["stages"] if s["name"] == result["failed"]), result.get("inputs"))
        typer.echo(f"error: stage {result['failed']!r} failed (exit {failed['returncode']}); its log: "
                   f"{failed['log']}; last lines:\n{S.log_tail(failed['log'])}", err=True)
        typer.echo(f"work folder kept: {where}", err=True)
        raise typer.Exit(1)
    if keep:
        typer.echo(f"work folder kept: {where}")
    else:
        S.remove_workdir(where)
        typer.echo(f"work folder removed: {where}")
    if not all(t["pass"] for t in result["targets"].values()):
        raise typer.Exit(3)


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
