"""Featurize: content addressing, resume, corruption, multi-process, integrity, drops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import cache, pairs
from pipeline.backbone import BackboneConfig, load
from pipeline.featurize import FeaturizeConfig, featurize


def write_prepared(root: Path, rows: list[dict]) -> Path:
    table, dropped = pairs.finalize(rows)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "pairs.parquet")
    (root / "manifest.json").write_text(json.dumps({"dropped": dict(dropped)}))
    return root / "pairs.parquet"


def many_rows(n_prompts: int = 12, per_prompt: int = 3) -> list[dict]:
    rows = []
    for p in range(n_prompts):
        prompt = f"Question number {p}: how should one {'really ' * (p % 4)}handle case {p}?"
        responses = [f"Answer {p}.{k}: " + "detail " * ((p + k) % 5) for k in range(per_prompt + 1)]
        for k in range(1, per_prompt + 1):  # responses[0] is shared by all pairs of the prompt
            rows.append({"prompt": prompt, "chosen": responses[0], "rejected": responses[k],
                         "split": ("train", "validation", "test")[p % 3]})
    return rows


def shard_digests(out: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


def test_shared_sequence_is_computed_once(tiny_llama, tmp_path, monkeypatch):
    shared = "The shared, much-reused answer."
    rows = [{"prompt": "Same prompt?", "chosen": shared, "rejected": f"other {i}", "split": "train"} for i in range(3)]
    prepared = write_prepared(tmp_path / "prep", rows)
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    seen: list[list[int]] = []
    original = backbone.embed_rows

    def counting(rows, padding_side="right"):
        seen.extend(r for _, responses in rows for r in responses)
        return original(rows, padding_side=padding_side)

    monkeypatch.setattr(backbone, "embed_rows", counting)
    manifest = featurize(prepared, tmp_path / "out", backbone, FeaturizeConfig(), show_progress=False)
    shared_tokens = backbone.encode([{"role": "user", "content": "Same prompt?"}], shared).response
    assert sum(r == shared_tokens for r in seen) == 1
    assert manifest["num_pairs"] == 3 and manifest["num_sequences"] == 4 and len(seen) == 4
    # Pairs reference sequences by id, and every id resolves to a stored vector.
    c = cache.FeatureCache(tmp_path / "out")
    p = c.pairs()
    assert len(set(p.column("chosen_id").to_pylist())) == 1
    states = c.states()
    for col in ("chosen_id", "rejected_id", "prompt_state_id"):
        assert all(sid in states for sid in p.column(col).to_pylist())


def test_cached_vectors_equal_model_states(tiny_llama, tmp_path):
    rows = many_rows(4, 2)
    prepared = write_prepared(tmp_path / "prep", rows)
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    featurize(prepared, tmp_path / "out", backbone, FeaturizeConfig(dtype="float32", token_budget=256),
              show_progress=False)
    c = cache.FeatureCache(tmp_path / "out")
    states = c.states()
    prompt_of = {p["rejected_id"]: p["prompt_state_id"] for p in c.pairs().to_pylist()}
    for row in rows:
        messages = pairs.as_messages(row["prompt"])
        enc = backbone.encode(messages, row["rejected"])
        with torch.inference_mode():
            h = backbone.model(input_ids=torch.tensor([enc.prefix + enc.response])).last_hidden_state[0]
        sid = pairs.sequence_id(messages, row["rejected"])
        response_state, prompt_state = states[sid], states[prompt_of[sid]]
        np.testing.assert_allclose(response_state, h[-1].numpy(), atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(prompt_state, h[len(enc.prefix) - 1].numpy(), atol=1e-5, rtol=1e-4)


RUNNER = textwrap.dedent("""
    import sys, time
    from pipeline import cache
    from pipeline.backbone import BackboneConfig, load
    from pipeline.featurize import FeaturizeConfig, featurize
    model, prepared, out, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if delay:
        original = cache.write_shard
        def slow(*a, **k):
            rec = original(*a, **k)
            time.sleep(delay)
            return rec
        cache.write_shard = slow
    featurize(prepared, out, load(BackboneConfig(model=model)),
              FeaturizeConfig(shard_max_sequences=6, token_budget=512), show_progress=False)
""")


def run_featurize(tiny_llama, prepared, out, tmp_path, delay=0.0, torchrun=0):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = [str(script), str(tiny_llama), str(prepared), str(out), str(delay)]
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["-m", "torch.distributed.run", f"--nproc-per-node={torchrun}", f"--master-port={port}", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_and_resume_equals_uninterrupted(tiny_llama, tmp_path):
    prepared = write_prepared(tmp_path / "prep", many_rows())
    clean = run_featurize(tiny_llama, prepared, tmp_path / "clean", tmp_path)
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode()[-2000:]

    victim = run_featurize(tiny_llama, prepared, tmp_path / "killed", tmp_path, delay=1.0)
    shard_dir = tmp_path / "killed" / cache.SHARD_DIR
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shard_dir.glob("*.sha256"))) < 2:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = len(list(shard_dir.glob("*.sha256")))
    assert 2 <= done_before < len(shard_digests(tmp_path / "clean")), "the kill must land mid-run"
    assert not (tmp_path / "killed" / "manifest.json").exists()

    resumed = run_featurize(tiny_llama, prepared, tmp_path / "killed", tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert shard_digests(tmp_path / "killed") == shard_digests(tmp_path / "clean")
    assert (tmp_path / "killed" / "pairs.parquet").read_bytes() == (tmp_path / "clean" / "pairs.parquet").read_bytes()
    assert sorted(p.name for p in shard_dir.iterdir()) == sorted(p.name for p in (tmp_path / "clean" / "shards").iterdir())


def test_corrupt_shard_is_detected_and_recomputed(tiny_llama, tmp_path):
    prepared = write_prepared(tmp_path / "prep", many_rows())
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    config = FeaturizeConfig(shard_max_sequences=6, token_budget=512)
    featurize(prepared, tmp_path / "out", backbone, config, show_progress=False)
    good = shard_digests(tmp_path / "out")
    victim = tmp_path / "out" / cache.SHARD_DIR / cache.shard_name(1)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data[: len(data) - 10]))  # flipped byte and truncated
    problems = cache.FeatureCache(tmp_path / "out").verify()
    assert len(problems) == 1 and cache.shard_name(1) in problems[0]

    computed = []
    original = backbone.embed_rows
    backbone.embed_rows = lambda rows, padding_side="right": computed.append(len(rows)) or original(rows, padding_side)
    featurize(prepared, tmp_path / "out", backbone, config, show_progress=False)
    assert computed, "the corrupt shard must be recomputed"
    assert shard_digests(tmp_path / "out") == good
    assert cache.FeatureCache(tmp_path / "out").verify() == []
    computed.clear()
    featurize(prepared, tmp_path / "out", backbone, config, show_progress=False)
    assert computed == [], "an intact cache must not be recomputed"


def test_two_gloo_processes_equal_one(tiny_llama, tmp_path):
    prepared = write_prepared(tmp_path / "prep", many_rows())
    one = run_featurize(tiny_llama, prepared, tmp_path / "one", tmp_path)
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()[-2000:]
    two = run_featurize(tiny_llama, prepared, tmp_path / "two", tmp_path, torchrun=2)
    assert two.wait(timeout=300) == 0, two.stderr.read().decode()[-3000:]
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert len(m1["shards"]) >= 4
    assert m1 == m2  # same shards, same checksums, same everything


def test_integrity_check_on_score_head_backbone(tiny_grm, tmp_path):
    prepared = write_prepared(tmp_path / "prep", many_rows(4, 2))
    backbone = load(BackboneConfig(model=str(tiny_grm)))
    manifest = featurize(prepared, tmp_path / "ok", backbone, FeaturizeConfig(integrity_samples=8), show_progress=False)
    assert manifest["integrity"]["passed"] and manifest["integrity"]["samples"] == 8
    # A cache that does not hold the model's last-token states (here: a pooling bug that
    # stores the prompt-boundary state instead) must fail the check.
    original = backbone.embed_rows

    def wrong_token(rows, padding_side="right"):
        prompt, _ = original(rows, padding_side=padding_side)
        return prompt, torch.repeat_interleave(prompt, torch.tensor([len(r) for _, r in rows]), dim=0)

    backbone.embed_rows = wrong_token
    with pytest.raises(cache.CacheError, match="integrity check failed"):
        featurize(prepared, tmp_path / "bad", backbone, FeaturizeConfig(integrity_samples=8), show_progress=False)


def test_integrity_check_needs_a_score_head(tiny_llama, tmp_path):
    prepared = write_prepared(tmp_path / "prep", many_rows(2, 1))
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    with pytest.raises(cache.CacheError, match="score head"):
        featurize(prepared, tmp_path / "out", backbone, FeaturizeConfig(integrity_samples=2), show_progress=False)


@pytest.mark.parametrize("policy,expected", [("drop", {"over_length": 2}),
                                             ("truncate_prompt_left", {"response_too_long": 1})])
def test_over_length_follows_policy_with_counts(tiny_llama, tmp_path, policy, expected):
    rows = [{"prompt": "long " * 100, "chosen": "a", "rejected": "b", "split": "train"},
            {"prompt": "short", "chosen": "c", "rejected": "d", "split": "train"},
            {"prompt": "short", "chosen": "e" * 300, "rejected": "f", "split": "train"}]
    prepared = write_prepared(tmp_path / "prep", rows)
    backbone = load(BackboneConfig(model=str(tiny_llama), max_length=200, truncation=policy))
    m = featurize(prepared, tmp_path / "out", backbone, FeaturizeConfig(), show_progress=False)
    assert m["dropped"]["counts"] == expected
    assert {d["reason"] for d in m["dropped"]["pairs"]} == set(m["dropped"]["counts"])
    assert m["num_pairs"] == 3 - sum(m["dropped"]["counts"].values())
    assert m["truncated"]["count"] == (2 if policy == "truncate_prompt_left" else 0)


def test_manifest_has_required_fields_and_verifies(tiny_llama, tmp_path):
    prepared = write_prepared(tmp_path / "prep", many_rows(3, 1))
    m = featurize(prepared, tmp_path / "out", load(BackboneConfig(model=str(tiny_llama))), FeaturizeConfig(),
                  show_progress=False)
    for key in cache.REQUIRED_MANIFEST_KEYS:
        assert key in m
    assert m["hidden_size"] == 32 and m["dtype"] == "float16" and m["pooling"] == "last"
    c = cache.FeatureCache(tmp_path / "out")
    assert c.verify() == []
    t = pq.read_table(c.shard_paths()[0])
    assert t.schema.equals(cache.shard_schema(32, "float16"))


def test_prompt_states_are_stored_once_per_prompt(tiny_llama, tmp_path):
    """12 prompts with 4 responses each (3 pairs per prompt); at most 2 responses per row
    and small shards, so each prompt is computed in 2 rows, some across shards: still one
    stored prompt state per prompt, shared by all its pairs, equal to the standalone
    forward pass at the end of the prompt."""
    rows = many_rows(12, 3)
    prepared = write_prepared(tmp_path / "prep", rows)
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    config = FeaturizeConfig(dtype="float32", max_responses_per_row=2, shard_max_sequences=7)
    m = featurize(prepared, tmp_path / "out", backbone, config, show_progress=False)
    c = cache.FeatureCache(tmp_path / "out")
    assert len(m["shards"]) > 2 and m["num_sequences"] == 48 and m["num_prompt_states"] == 12
    kinds = pa.concat_tables(pq.read_table(p, columns=["state_id", "kind"]) for p in c.shard_paths())
    prompt_ids = [s for s, k in zip(kinds.column("state_id").to_pylist(), kinds.column("kind").to_pylist())
                  if k == "prompt"]
    assert len(prompt_ids) == len(set(prompt_ids)) == 12
    by_prompt: dict[str, set[str]] = {}
    table = c.pairs().to_pylist()
    prepared_rows = pq.read_table(prepared).to_pylist()
    text = {r["pair_id"]: r["prompt"] for r in prepared_rows}
    for pair in table:
        by_prompt.setdefault(json.dumps(text[pair["pair_id"]]), set()).add(pair["prompt_state_id"])
    assert len(by_prompt) == 12 and all(len(ids) == 1 for ids in by_prompt.values())
    assert {i for ids in by_prompt.values() for i in ids} == set(prompt_ids)
    states = c.states()
    for pair in table[:6]:
        messages = pairs.as_messages(text[pair["pair_id"]])
        enc = backbone.encode(messages, "x")
        with torch.inference_mode():
            h = backbone.model(input_ids=torch.tensor([enc.prefix])).last_hidden_state[0]
        np.testing.assert_allclose(states[pair["prompt_state_id"]], h[-1].numpy(), atol=1e-5, rtol=1e-4)


def test_a_cache_of_the_old_format_is_refused_and_featurize_rebuilds_it(tiny_llama, tmp_path, monkeypatch):
    prepared = write_prepared(tmp_path / "prep", many_rows(3, 1))
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    featurize(prepared, tmp_path / "out", backbone, FeaturizeConfig(), dataset="tiny", show_progress=False)
    manifest_path = tmp_path / "out" / "manifest.json"
    old = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**old, "format_version": 1}))
    with pytest.raises(cache.CacheError, match=r"cache format 1, this code reads format 2 .*rebuild it with "
                                               r"`dvc repro --force featurize@tiny` or `smoe featurize`"):
        cache.FeatureCache(tmp_path / "out")
    calls = []
    original = backbone.embed_rows
    monkeypatch.setattr(backbone, "embed_rows", lambda rows, **kw: calls.append(rows) or original(rows, **kw))
    featurize(prepared, tmp_path / "out", backbone, FeaturizeConfig(), dataset="tiny", show_progress=False)
    assert calls  # nothing of the old format was trusted
    assert cache.FeatureCache(tmp_path / "out").manifest["format_version"] == cache.FORMAT_VERSION


def test_smoe_cache_info_exit_code_names_a_corrupt_shard(tmp_path, monkeypatch, capsys):
    """`smoe cache info` exits non-zero on a bad checksum (typer.Exit's code must survive
    the CLI wrapper), naming the shard."""
    from tooling.synthetic_cache import write_synthetic_cache
    from stages import cli

    out = write_synthetic_cache(tmp_path / "c", num_pairs=40, hidden_size=4, pairs_per_shard=20)

    def run() -> int:
        monkeypatch.setattr("sys.argv", ["smoe", "cache", "info", str(out)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        return exit_.value.code

    assert run() == 0
    shard = sorted((out / "shards").glob("*.parquet"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(data)
    capsys.readouterr()
    assert run() == 1
    assert f"BAD {shard}" in capsys.readouterr().err


def test_verify_catches_a_corrupt_pairs_table(tmp_path):
    """The pairs table is checksummed too: a flipped byte in it is not a silent pass."""
    from tooling.synthetic_cache import write_synthetic_cache

    out = write_synthetic_cache(tmp_path / "c", num_pairs=40, hidden_size=4, pairs_per_shard=20)
    assert cache.FeatureCache(out).verify() == []
    pairs = out / cache.PAIRS
    data = bytearray(pairs.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pairs.write_bytes(data)
    assert cache.FeatureCache(out).verify() == [f"{pairs}: checksum mismatch (damaged, truncated or replaced since it was written)"]
