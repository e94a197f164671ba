"""`smoe bench scale`: the whole pipeline after featurize, at paper scale, on a synthetic cache.

What one run does, in a fresh work folder (:func:`run`):

1. **inputs** (in a child process, so that the launcher's own peak stays small, see
   below): a synthetic feature cache ``data/features/scale/`` with cluster structure
   (:func:`tooling.synthetic_cache.write_synthetic_cache`; the paper's 700K setting is
   hidden 3072 = GRM-Llama3.2-3B and K = 20), and the prepared pairs table
   ``data/prepared/scale/pairs.parquet`` that `interpret` and `evaluate` read prompt texts
   from: one short synthetic prompt per pair that names its cluster's own made-up words,
   so the keywords describer has something to find (:func:`write_prepared`).
2. ``params.yaml``: the project's params with one experiment ``scale`` (K experts,
   ``group_by: category``, the paper's ``lambda_gb: 1.0`` for 700K), ``steer.label:
   category``, a ``train.curve_every`` that gives a few hundred curve rows, the requested
   epochs and ``scratch_dir`` inside the work folder (:func:`scale_params`).
3. The stages, each as a real ``python -m stages.<name>`` process with cwd = the work
   folder and ``PYTHONPATH`` = this repository, exactly what ``dvc repro`` runs
   (:func:`pipeline_stages`): ``stores``, then train x 5, interpret x 3, evaluate x 5,
   steer x 3, personalize x 5. Each one's stdout and stderr go to ``logs/<stage>.log``.

Per stage it measures (:class:`StageResult`):

- ``wall_s``: seconds from the child's start to its exit;
- ``peak_rss_mib``: the child's peak resident memory, ``ru_maxrss`` from ``os.wait4``.
  Linux carries a parent's high-water mark into a child across vfork + exec (a child
  started by a 350 MB ``smoe`` process reports >= 350 MB even if it never uses it), so
  every stage is started by a small stdlib-only wrapper process (:func:`measure`), and the
  figure is the stage's own;
- ``read_bytes``: bytes the stage read from the cache and from the split stores, as
  counted by the readers themselves (:mod:`pipeline.iostats`; the child writes them to
  ``io/<stage>.json`` at exit because ``SMOE_IO_STATS`` points there), with the kernel's
  ``/proc/self/io`` counters beside them (``proc_io``): ``write_bytes``, the bytes the
  stage dirtied for storage (memory-mapped writes included: the stores are written through
  a memory map; scratch deleted before writeback included, see ``cancelled_write_bytes``),
  and ``wchar``, the bytes passed to write() calls (outputs and scratch, no memory-mapped
  writes);
- ``output_bytes``: how much the work folder's ``data/`` grew over the stage (its
  outputs; scratch lives outside ``data/`` and is not counted here).

Then the two targets of issue 16: peak RSS under 3 GiB in every stage, and all stages
together reading at most twice the cache's size from the cache (:func:`check_targets`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError  # one exception class, no imports

# Only the standard library at module level: `python -m tooling.bench_scale measure ...` is
# the wrapper every stage starts from, and its own resident set is the floor of every
# child's ru_maxrss (see the module doc). numpy/pyarrow are imported where inputs are made.

REPO = Path(__file__).resolve().parents[1]
NAME = "scale"                      # the dataset and the experiment
ALL_VARIANTS = ("single", "vanilla", "micro", "sparse", "hyre")
ROUTED = ("vanilla", "micro", "sparse")  # interpret and steer need an input-dependent router
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)   # the synthetic writer's default
PAPER_LAMBDA_GB = 1.0               # App. A: lambda_gb 1.0 for preference-700K
CURVE_ROWS = 300                    # training-curve rows a run should end up with (a few hundred)
RSS_LIMIT_MIB = 3 * 1024            # issue 16: every stage under 3 GiB
CACHE_READ_LIMIT = 2.0              # issue 16: total cache bytes read <= 2 x the cache's size
MIB = 2 ** 20


# ----------------------------------------------------------------------------- the plan


def pipeline_stages() -> list[tuple[str, list[str]]]:
    """(name, ``python -m`` arguments) of every measured stage, in the order they run."""
    stages = [("stores", ["stages.stores", NAME])]
    stages += [(f"train {v}", ["stages.train", NAME, v]) for v in ALL_VARIANTS]
    stages += [(f"interpret {v}", ["stages.interpret", NAME, v]) for v in ROUTED]
    stages += [(f"evaluate {v}", ["stages.evaluate", NAME, v]) for v in ALL_VARIANTS]
    stages += [(f"steer {v}", ["stages.steer", NAME, v]) for v in ROUTED]
    stages += [(f"personalize {v}", ["stages.personalize", NAME, v]) for v in ALL_VARIANTS]
    return stages


def estimated_disk_bytes(pairs: int, hidden: int) -> int:
    """The work folder's size at its fullest: the cache (prompt, chosen and rejected state
    per pair, float16, which zstd barely compresses) plus the split stores (the same
    states again, pair-major), plus 5 % for everything else."""
    return int(pairs * 3 * hidden * 2 * 2 * 1.05)


def curve_every(pairs: int, batch_size: int, epochs: int) -> int:
    """``train.curve_every`` that leaves about :data:`CURVE_ROWS` rows in a training curve."""
    steps = -(-int(pairs * SPLIT_FRACTIONS[0]) // batch_size) * epochs
    return max(1, steps // CURVE_ROWS)


def min_pairs_for(experts: int, params: dict[str, Any], headroom: float = 1.0) -> int:
    """The smallest cache whose test split gives a cluster, on average, ``headroom`` times
    the test pairs that personalize needs of a group (its filter ``min_pairs``, and a pool
    that supplies the largest adaptation set at ``eval_fraction``) and steer of an
    attribute (``min_pairs``). Smaller groups are skipped (and counted) by those stages;
    only when every group is too small do they fail, which at 1.0 is unlikely and below it
    likely. Checked up front: personalize runs last, an hour into a 700K run."""
    personalize, steer = params.get("personalize") or {}, params.get("steer") or {}
    largest = max(personalize.get("sizes") or [50])
    pool_share = 1.0 - float(personalize.get("eval_fraction", 0.5))
    per_group = max(int(personalize.get("min_pairs", 51)), int(steer.get("min_pairs", 51)),
                    int(-(-largest // pool_share)))
    return int(-(-(per_group * experts * headroom) // SPLIT_FRACTIONS[2]))


def scale_params(source: dict[str, Any], *, workdir: Path, pairs: int, experts: int,
                 epochs: int) -> dict[str, Any]:
    """The work folder's params: ``source`` (the project's params) with the ``scale``
    dataset and experiment in place of the project's, and the settings of a paper-scale run."""
    params = copy.deepcopy(dict(source))
    # The synthetic cache records backbone "synthetic" and the default chat-template
    # params (no system prompt); train checks the cache against exactly these keys.
    params["backbone"] = {**(params.get("backbone") or {}), "source": "synthetic", "revision": "synthetic",
                          "system_prompt": None}
    # A valid datasets block (the schema wants a source): the file this benchmark writes.
    params["datasets"] = {NAME: {"source": f"data/prepared/{NAME}/pairs.parquet"}}
    params["experiments"] = {NAME: {"dataset": NAME, "num_experts": experts, "group_by": "category",
                                    "lambda_gb": PAPER_LAMBDA_GB}}
    train = dict(params.get("train") or {})
    train.update(epochs=epochs, curve_every=curve_every(pairs, int(train.get("batch_size", 16)), epochs))
    params["train"] = train
    params["steer"] = {**(params.get("steer") or {}), "label": "category"}
    params["scratch_dir"] = str(workdir / "scratch")
    return params


# ----------------------------------------------------------------------------- the inputs


def _cluster_words(rng: Any, clusters: int, per_cluster: int = 6) -> list[list[str]]:
    """Made-up words, distinct across clusters: no English word list is needed, and the
    keywords describer's stop-word list cannot swallow them."""
    syllables = ["ka", "lo", "mi", "ra", "ve", "to", "zu", "ne", "qui", "dar", "sel", "bor", "fin", "gal",
                 "tem", "xo", "pru", "shan", "vel", "om"]
    seen: set[str] = set()
    out = []
    for _ in range(clusters):
        words = []
        while len(words) < per_cluster:
            word = "".join(rng.choice(syllables, size=3))
            if word not in seen:
                seen.add(word)
                words.append(word)
        out.append(words)
    return out


FILLER = ("please", "explain", "how", "would", "you", "describe", "the", "main", "idea", "behind", "a", "short",
          "note", "about", "question", "detail", "example", "in", "simple", "terms", "today", "kindly", "compare")


def write_prepared(pair_ids: list[str], splits: list[str], categories: list[str], out_dir: Path,
                   seed: int = 0) -> Path:
    """``out_dir/pairs.parquet`` in the canonical prepared schema (:data:`pipeline.pairs.SCHEMA`),
    one row per cache pair. Each prompt is three of its cluster's words among filler words
    plus the pair's number (unique texts: interpret judges distinct prompts only; digits
    are no keywords). Columns are built whole with pyarrow, so 700K rows take seconds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.pairs import MESSAGE_TYPE, METADATA_COLUMNS, SCHEMA

    rng = np.random.default_rng(seed)
    n = len(pair_ids)
    names = sorted(set(categories))
    words = _cluster_words(rng, len(names))
    cluster = np.searchsorted(np.array(names), np.array(categories))
    own = rng.integers(len(words[0]), size=(n, 3))
    fill = rng.integers(len(FILLER), size=(n, 4))
    texts = [f"{FILLER[f[0]]} {words[c][o[0]]} {FILLER[f[1]]} {words[c][o[1]]} {FILLER[f[2]]} {FILLER[f[3]]} "
             f"{words[c][o[2]]} (request {i})" for i, (c, o, f) in enumerate(zip(cluster.tolist(), own.tolist(),
                                                                               fill.tolist()))]
    messages = pa.StructArray.from_arrays([pa.repeat(pa.scalar("user"), n), pa.array(texts, pa.string())],
                                          fields=list(MESSAGE_TYPE))
    columns = {
        "pair_id": pa.array(pair_ids, pa.string()),
        "prompt": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), messages),
        "chosen": pa.repeat(pa.scalar("the chosen synthetic response"), n),
        "rejected": pa.repeat(pa.scalar("the rejected synthetic response"), n),
        "split": pa.array(splits, pa.string()),
        **{c: pa.array(categories, pa.string()) if c == "category" else pa.nulls(n, pa.string())
           for c in METADATA_COLUMNS},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".pairs.parquet.tmp"
    pq.write_table(pa.table(columns, schema=SCHEMA), tmp, compression="zstd")
    os.replace(tmp, out_dir / "pairs.parquet")
    return out_dir / "pairs.parquet"


def write_inputs(workdir: str, pairs: int, hidden: int, experts: int, show_progress: bool = True) -> None:
    """The cache and the prepared table (run in a child process: a 50K-pair shard at
    hidden 3072 is ~4 GB of float32 draws, which must not become the launcher's peak)."""
    from pipeline.cache import FeatureCache
    from tooling.synthetic_cache import write_synthetic_cache

    root = Path(workdir) / "data"
    cache = write_synthetic_cache(root / "features" / NAME, num_pairs=pairs, hidden_size=hidden,
                                  num_clusters=experts, split_fractions=SPLIT_FRACTIONS, seed=0,
                                  show_progress=show_progress)
    # The cache's own pairs table names the ids, splits and clusters: the prepared table
    # copies them instead of re-deriving the writer's id scheme.
    table = FeatureCache(cache).pairs(columns=["pair_id", "split", "category"])
    start = time.perf_counter()
    write_prepared(table.column("pair_id").to_pylist(), table.column("split").to_pylist(),
                   table.column("category").to_pylist(), root / "prepared" / NAME)
    print(f"prepared {table.num_rows} pairs in {time.perf_counter() - start:.1f} s", flush=True)


# ----------------------------------------------------------------------------- measuring


def measure(result_path: Path, argv: list[str]) -> int:
    """The wrapper's work (``python -m tooling.bench_scale measure RESULT -- ARGV...``): run
    ``argv`` with this process's stdout/stderr, reap it with ``os.wait4`` and write
    ``{"returncode", "wall_s", "maxrss_kib"}`` to ``result_path``. ``ru_maxrss`` is KiB on
    Linux; it is the child's own peak because this wrapper's is tiny."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen, or it warns
    tmp = result_path.with_name(f".{result_path.name}.tmp")
    tmp.write_text(json.dumps({"returncode": proc.returncode, "wall_s": wall, "maxrss_kib": usage.ru_maxrss}))
    os.replace(tmp, result_path)
    return proc.returncode


@dataclass
class StageResult:
    name: str
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_mib: float
    read_bytes: dict[str, int] | None   # by kind (cache, stores); None: the stage wrote no I/O stats
    proc_io: dict[str, int] | None      # /proc/self/io at the stage's exit (rchar, wchar, read_bytes, ...)
    output_bytes: int                   # growth of the work folder's data/ over the stage
    log: str

    @property
    def cache_bytes(self) -> int | None:
        return None if self.read_bytes is None else int(self.read_bytes.get("cache", 0))

    @property
    def stores_bytes(self) -> int | None:
        return None if self.read_bytes is None else int(self.read_bytes.get("stores", 0))

    @property
    def written_bytes(self) -> int | None:
        return None if not self.proc_io else int(self.proc_io.get("write_bytes", 0))

    @property
    def wchar_bytes(self) -> int | None:
        return None if not self.proc_io else int(self.proc_io.get("wchar", 0))


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_stage(name: str, module_args: list[str], workdir: Path) -> StageResult:
    """One child ``python -m <module_args>`` in ``workdir``, started through :func:`measure`."""
    slug = name.replace(" ", "-")
    log, io_file, timing = (workdir / "logs" / f"{slug}.log", workdir / "io" / f"{slug}.json",
                            workdir / "io" / f".{slug}.timing.json")
    for folder in (log.parent, io_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    io_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", *module_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "SMOE_IO_STATS": str(io_file)}
    before = _tree_bytes(workdir / "data")
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-m", "tooling.bench_scale", "measure", str(timing), "--", *command],
                       cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if timing.exists():
        timed = json.loads(timing.read_text())
    else:  # the wrapper itself failed (its traceback is in the log)
        timed = {"returncode": -1, "wall_s": float("nan"), "maxrss_kib": 0}
    stats = json.loads(io_file.read_text()) if io_file.exists() else None
    return StageResult(name=name, command=command[1:], returncode=int(timed["returncode"]),
                       wall_s=float(timed["wall_s"]), peak_rss_mib=timed["maxrss_kib"] / 1024,
                       read_bytes=None if stats is None else {k: int(v) for k, v in stats["read_bytes"].items()},
                       proc_io=None if stats is None else stats.get("proc_io"),
                       output_bytes=_tree_bytes(workdir / "data") - before, log=str(log))


# ----------------------------------------------------------------------------- reporting


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f}"


HEADER = f"{'stage':<20}{'wall s':>9}{'peak RSS MiB':>14}{'cache MiB read':>16}{'stores MiB read':>17}" \
         f"{'MiB written':>13}{'wchar MiB':>11}{'out MiB':>10}"

LEGEND = """\
columns: wall s = seconds from the stage's start to its exit; peak RSS MiB = the stage process's
peak resident memory (ru_maxrss via wait4, started from a small wrapper so that it is the stage's
own); cache MiB read / stores MiB read = bytes the stage read from the feature cache / from the
split stores, counted by the readers (pipeline.iostats; '-' = the stage wrote no I/O stats);
MiB written = /proc write_bytes, what the stage dirtied for storage: memory-mapped writes (the
stores) included, and scratch deleted before it reached the disk too; wchar MiB = bytes passed to
write() calls (outputs and scratch, but not memory-mapped writes); out MiB = how much the work
folder's data/ grew over the stage (its outputs; scratch is outside data/)"""


def stage_line(result: StageResult) -> str:
    return (f"{result.name:<20}{result.wall_s:>9.1f}{result.peak_rss_mib:>14,.0f}{_mib(result.cache_bytes):>16}"
            f"{_mib(result.stores_bytes):>17}{_mib(result.written_bytes):>13}{_mib(result.wchar_bytes):>11}"
            f"{_mib(result.output_bytes):>10}")


def _total(results: list[StageResult], attr: str) -> int | None:
    values = [getattr(r, attr) for r in results]
    return None if any(v is None for v in values) else sum(values)


def totals(results: list[StageResult]) -> dict[str, Any]:
    """Sums over the stages (None where a stage wrote no I/O stats: an unknown part makes
    the sum unknown), and the largest peak RSS."""
    worst = max(results, key=lambda r: r.peak_rss_mib)
    return {"wall_s": sum(r.wall_s for r in results), "peak_rss_mib": worst.peak_rss_mib,
            "peak_rss_stage": worst.name, "cache_bytes_read": _total(results, "cache_bytes"),
            "stores_bytes_read": _total(results, "stores_bytes"), "written_bytes": _total(results, "written_bytes"),
            "wchar_bytes": _total(results, "wchar_bytes"), "output_bytes": sum(r.output_bytes for r in results)}


def check_targets(results: list[StageResult], cache_bytes: int) -> dict[str, dict[str, Any]]:
    """Issue 16's targets. A target that cannot be measured (a stage without I/O stats)
    FAILS, naming the stages: it never passes unmeasured."""
    over = [r.name for r in results if not r.peak_rss_mib < RSS_LIMIT_MIB]
    worst = max(results, key=lambda r: r.peak_rss_mib)
    rss = {"limit_mib": RSS_LIMIT_MIB, "worst_stage": worst.name, "worst_mib": worst.peak_rss_mib,
           "stages_over": over, "pass": not over}
    unmeasured = [r.name for r in results if r.read_bytes is None]
    total = _total(results, "cache_bytes")
    ratio = None if total is None or cache_bytes == 0 else total / cache_bytes
    cache = {"limit_ratio": CACHE_READ_LIMIT, "cache_bytes": cache_bytes, "cache_bytes_read": total,
             "ratio": ratio, "unmeasured_stages": unmeasured, "pass": ratio is not None and ratio <= CACHE_READ_LIMIT}
    return {"peak_rss": rss, "cache_read": cache}


def target_lines(targets: dict[str, dict[str, Any]]) -> list[str]:
    rss, cache = targets["peak_rss"], targets["cache_read"]
    verdict = {True: "PASS", False: "FAIL"}
    lines = [f"{verdict[rss['pass']]}  peak RSS < {RSS_LIMIT_MIB / 1024:g} GiB in every stage: worst "
             f"{rss['worst_mib']:,.0f} MiB ({rss['worst_stage']})"
             + (f"; over: {', '.join(rss['stages_over'])}" if rss["stages_over"] else "")]
    if cache["ratio"] is None:
        missing = ", ".join(cache["unmeasured_stages"]) or "any stage"
        lines.append(f"FAIL  cache bytes read <= {CACHE_READ_LIMIT:g} x cache size: NOT MEASURED, no I/O stats "
                     f"from {missing} (do they count their reads in pipeline.iostats?)")
    else:
        lines.append(f"{verdict[cache['pass']]}  cache bytes read <= {CACHE_READ_LIMIT:g} x cache size: "
                     f"{_mib(cache['cache_bytes_read'])} MiB read / {_mib(cache['cache_bytes'])} MiB = "
                     f"{cache['ratio']:.3f} x")
    return lines


def report_lines(result: dict[str, Any]) -> list[str]:
    """The table, totals, the cache figures and the targets, as printed at the end."""
    stages = [StageResult(**s) for s in result["stages"]]
    lines = [HEADER, *(stage_line(r) for r in stages)]
    if stages:
        t = result["totals"]
        lines.append(f"{'total':<20}{t['wall_s']:>9.1f}{t['peak_rss_mib']:>14,.0f}{_mib(t['cache_bytes_read']):>16}"
                     f"{_mib(t['stores_bytes_read']):>17}{_mib(t['written_bytes']):>13}{_mib(t['wchar_bytes']):>11}"
                     f"{_mib(t['output_bytes']):>10}"
                     f"   (peak RSS column: the largest)")
    lines.append(LEGEND)
    setup = result.get("inputs")
    if setup:
        lines.append(f"inputs (synthetic cache + prepared table, not a pipeline stage, not in the targets): "
                     f"{setup['wall_s']:.1f} s, peak RSS {setup['peak_rss_mib']:,.0f} MiB")
    lines.append(f"cache: {_mib(result['cache_bytes'])} MiB in data/features/{NAME} ({result['settings']['pairs']:,} "
                 f"pairs, hidden {result['settings']['hidden']}); cache bytes read / cache size = "
                 + ("n/a" if result["targets"]["cache_read"]["ratio"] is None
                    else f"{result['targets']['cache_read']['ratio']:.3f}"))
    if stages:
        lines += target_lines(result["targets"])
    return lines


def git_commit() -> str:
    """HEAD of this repository, with ``+uncommitted`` when the working tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


# ----------------------------------------------------------------------------- the run


def run(params: dict[str, Any], workdir: Path, *, pairs: int, hidden: int, experts: int, epochs: int,
        machine: str, on_stage: Callable[[str], None] = print) -> dict[str, Any]:
    """Make the inputs in ``workdir``, run every stage and return every figure
    (``failed``: the stage that failed, or None; it stops the run). ``params``: the work
    folder's params (:func:`scale_params`), written there. ``on_stage`` gets the progress
    lines (one when a stage starts, one when it ends)."""
    import yaml

    (workdir / "scratch").mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result: dict[str, Any] = {
        "device": machine, "git_commit": git_commit(), "workdir": str(workdir),
        "settings": {"pairs": pairs, "hidden": hidden, "experts": experts, "epochs": epochs,
                     "lambda_gb": params["experiments"][NAME]["lambda_gb"],
                     "curve_every": params["train"]["curve_every"], "batch_size": params["train"].get("batch_size")},
        "limits": {"peak_rss_mib": RSS_LIMIT_MIB, "cache_read_ratio": CACHE_READ_LIMIT},
        "stages": [], "failed": None,
    }
    stages = pipeline_stages()
    inputs = run_stage("inputs", ["tooling.bench_scale", "inputs", json.dumps(
        {"workdir": str(workdir), "pairs": pairs, "hidden": hidden, "experts": experts})], workdir)
    result["inputs"] = asdict(inputs)
    on_stage(f"inputs: {inputs.wall_s:.1f} s, peak RSS {inputs.peak_rss_mib:,.0f} MiB (log: {inputs.log})")
    results: list[StageResult] = []
    if inputs.returncode != 0:
        result["failed"] = "inputs"
    else:
        for i, (name, args) in enumerate(stages, 1):
            on_stage(f"stage {i:>2}/{len(stages)} {name} ...")
            stage = run_stage(name, args, workdir)
            results.append(stage)
            on_stage(f"stage {i:>2}/{len(stages)} {name}: {stage.wall_s:.1f} s, "
                     f"peak RSS {stage.peak_rss_mib:,.0f} MiB, cache {_mib(stage.cache_bytes)} MiB, "
                     f"stores {_mib(stage.stores_bytes)} MiB read, "
                     f"wrote {_mib(stage.written_bytes)} MiB, out {_mib(stage.output_bytes)} MiB"
                     + ("" if stage.returncode == 0 else f"  FAILED (exit {stage.returncode})"))
            if stage.returncode != 0:
                result["failed"] = name
                break
    result["stages"] = [asdict(r) for r in results]
    result["cache_bytes"] = _tree_bytes(workdir / "data" / "features" / NAME)
    result["totals"] = totals(results) if results else {}
    result["targets"] = check_targets(results, result["cache_bytes"]) if results else \
        {"peak_rss": {"pass": False}, "cache_read": {"ratio": None, "pass": False}}
    return result


def log_tail(path: str | Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read {path}: {err})"


def make_workdir(chosen: Path | None, scratch_dir: str | None) -> Path:
    """``chosen`` (created; it must be empty: the run deletes it at the end), else a fresh
    folder under the params' ``scratch_dir`` or the system's temporary folder."""
    if chosen is not None:
        chosen = chosen.expanduser().resolve()
        if chosen.exists() and any(chosen.iterdir()):
            raise UserError(f"--workdir {chosen} is not empty; give a new or empty folder (the benchmark "
                                  f"deletes it at the end unless --keep)")
        chosen.mkdir(parents=True, exist_ok=True)
        return chosen
    parent = Path(scratch_dir).expanduser() if scratch_dir else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="smoe-bench-scale-", dir=parent)).resolve()


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    # Children of the benchmark: `measure RESULT -- ARGV...` (the wrapper every stage runs
    # under) and `inputs JSON` (the synthetic cache and prepared table).
    if sys.argv[1] == "measure":
        if sys.argv[3] != "--":
            raise SystemExit("usage: python -m tooling.bench_scale measure RESULT -- ARGV...")
        sys.exit(measure(Path(sys.argv[2]), sys.argv[4:]))
    elif sys.argv[1] == "inputs":
        write_inputs(**json.loads(sys.argv[2]))
    else:
        raise SystemExit(f"unknown child command {sys.argv[1]!r}")
