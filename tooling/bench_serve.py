"""`smoe bench serve`: the HTTP reward server against calling ``RewardModel.score`` directly.

Both modes score the same (prompt, response) pairs with the same backbone and head, in one
run, at each client concurrency (default 1 and 16), one pair per request (OpenRLHF sends
one query per request):

- direct: the clients are threads of this process sharing one ``RewardModel``; each
  request is one ``score`` call, one at a time (a lock: the model is shared, and there is
  no cross-request batching). A ``direct, one call`` row scores all the level's pairs in a
  single call: what batching could reach at best.
- server: ``python -m stages.serve`` in its own process on loopback; each client is a
  thread with its own keep-alive HTTP connection posting OpenRLHF-style queries to
  ``/get_reward``; the server batches concurrent requests into shared forward passes.

The head is randomly initialized and saved by this script (reward values do not matter for
throughput); the server's rewards are checked against the direct ones all the same.
Pairs come from the embedded ``categories`` generator (test split).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import backbone as bb
from pipeline.generators import categories
from pipeline.models import HeadConfig, RewardHead
from pipeline.reward_model import RewardModel

ROOT = Path(__file__).resolve().parents[1]


def bench_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, response) pairs from the embedded categories data."""
    seen, out = set(), []
    for row in categories(seed=seed):
        for response in (row["chosen"], row["rejected"]):
            if (row["prompt"], response) not in seen:
                seen.add((row["prompt"], response))
                out.append((row["prompt"], response))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct pairs available, asked for {n}")
    rng = np.random.default_rng(seed)
    return [out[i] for i in rng.permutation(len(out))[:n]]


def random_head(backbone: bb.Backbone, directory: Path, num_experts: int, seed: int = 0) -> Path:
    """A randomly initialized sparse-MoE head for ``backbone``, saved to ``directory``."""
    torch.manual_seed(seed)
    head = RewardHead(HeadConfig(kind="moe", hidden_size=backbone.hidden_size, num_experts=num_experts,
                                 backbone=backbone.identity.get("backbone") or "",
                                 template_hash=backbone.template_hash))
    head.save(directory, variant="random-init (benchmark)")
    return directory


def _stats(latencies: list[float], pairs: int, wall: float) -> dict[str, float]:
    lat = np.array(latencies) * 1000
    return {"pairs": pairs, "requests": len(latencies), "seconds": wall, "sequences_per_s": pairs / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _load(clients: int, requests: list[Any], call) -> tuple[dict[str, float], list[Any]]:
    """Run ``requests`` from ``clients`` threads (request i goes to client i % clients);
    returns the stats and each request's result, in request order."""
    results: list[Any] = [None] * len(requests)
    latencies: list[float] = [0.0] * len(requests)

    def client(c: int) -> None:
        state: dict[str, Any] = {}
        for i in range(c, len(requests), clients):
            t = time.perf_counter()
            results[i] = call(requests[i], state)
            latencies[i] = time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    return _stats(latencies, len(requests), wall), results


def _post(port: int, path: str, body: dict, state: dict[str, Any]) -> dict:
    for attempt in (0, 1):
        conn = state.get("conn") or http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        state["conn"] = conn
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            break
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            state.pop("conn")
            if attempt:
                raise
    if resp.status != 200:
        raise RuntimeError(f"server answered {resp.status}: {payload}")
    return payload


def _start_server(head_dir: Path, backbone_dir: str, params_file: Path | None, port: int,
                  extra_args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stages.serve", "--model", f"bench={head_dir}", "--backbone", backbone_dir,
           "--port", str(port), "--log-level", "warning", *extra_args]
    cmd += ["--params", str(params_file)] if params_file else ["--params", "/nonexistent-params.yaml"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 300
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the server did not come up (`{' '.join(cmd)}`)")
        time.sleep(0.3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compare(backbone_config: bb.BackboneConfig, workdir: str | Path, *, requests: int = 128,
            clients: tuple[int, ...] = (1, 16), num_experts: int = 4, params_file: Path | None = None,
            server_args: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Sequences/s and p50/p99 latency, direct vs server, per client count; ``requests``
    requests (one pair each) per level, distinct pairs across levels and modes' warm-up."""
    workdir = Path(workdir)
    backbone = bb.load(backbone_config)
    head_dir = random_head(backbone, workdir / "random-head", num_experts, seed)
    rm = RewardModel(backbone, RewardHead.load(head_dir))
    warm = 8
    pairs = bench_pairs(warm + requests * len(clients), seed)
    levels = {c: pairs[warm + i * requests: warm + (i + 1) * requests] for i, c in enumerate(clients)}
    results: dict[str, Any] = {"levels": {}, "pairs_per_request": 1, "num_experts": num_experts,
                               "head": "randomly initialized sparse MoE, saved by the benchmark"}

    # Direct: RewardModel.score in this process, one call per request, one at a time.
    lock = threading.Lock()

    def direct(pair: tuple[str, str], state: dict[str, Any]) -> float:
        with lock:
            return float(rm.score([pair[0]], [pair[1]]).reward[0])

    # Server: the same pairs as OpenRLHF queries (rendered with the backbone's template).
    def query(pair: tuple[str, str]) -> str:
        return backbone.render([{"role": "user", "content": pair[0]}], True) + pair[1] + \
            (backbone.tokenizer.eos_token or "")

    port = _free_port()
    proc = _start_server(head_dir, backbone_config.model, params_file, port, server_args or [])
    results["load_average_before"] = os.getloadavg()
    try:
        def served(q: str, state: dict[str, Any]) -> float:
            return float(_post(port, "/get_reward", {"query": [q]}, state)["rewards"][0])

        for p in pairs[:warm]:
            direct(p, {})
        _load(min(8, max(clients)), [query(p) for p in pairs[:warm]], served)
        # The modes alternate level by level, so a change in the machine's load (it is
        # shared) hits both alike rather than one mode's whole run.
        for c, level in levels.items():
            direct_stats, direct_rewards = _load(c, level, direct)
            server_stats, server_rewards = _load(c, [query(p) for p in level], served)
            server_stats["max_abs_diff_vs_direct"] = float(np.max(np.abs(np.array(server_rewards)
                                                                         - np.array(direct_rewards))))
            t = time.perf_counter()
            rm.score([p for p, _ in level], [r for _, r in level])
            one_call = time.perf_counter() - t
            results["levels"][c] = {"direct": direct_stats, "server": server_stats,
                                    "direct_one_call": {"pairs": len(level), "seconds": one_call,
                                                        "sequences_per_s": len(level) / one_call}}
    finally:
        results["load_average_after"] = os.getloadavg()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return results
