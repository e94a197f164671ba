"""Fault injection, artifact half: damaged feature caches, split stores and heads, and killed runs.

Every stage and command that reads a cache (stores), split stores (train, evaluate,
interpret, steer, personalize) or loads a head (those four, `smoe score`, `smoe adapt`)
is run for real, in-process through the same runner as `python -m stages.<name>`, against
a corrupt, truncated, missing or foreign file. Each case asserts three things:

1. the exit code is 1 (a user-fixable problem, not a crash);
2. stderr is ONE line, and it names the damaged file;
3. the previous good outputs are byte-for-byte unchanged.

The kill tests SIGKILL a real subprocess mid-run and check that the previous outputs are
intact and that the next run completes.

Input mistakes (bad params, bad rows, bad files) are in ``test_faults_inputs.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import cache, iostats
from pipeline.models import HeadConfig, RewardHead
from tests.faults import assert_refused, invoke, snapshot
from tooling.synthetic_cache import write_synthetic_cache

REPO = Path(__file__).resolve().parents[1]
EXP = "syn"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A project folder: params.yaml, a synthetic cache, its prepared prompts, a trained
    vanilla head and one good run of every downstream stage (the outputs a failure must
    leave untouched)."""
    root = tmp_path_factory.mktemp("faults")
    features = write_synthetic_cache(root / "data/features/syn", num_pairs=600, hidden_size=8, num_clusters=3,
                                     split_fractions=(0.5, 0.2, 0.3), pairs_per_shard=150)
    pairs = pq.read_table(features / cache.PAIRS, columns=["pair_id", "category"]).to_pylist()
    prepared = root / "data/prepared/syn"
    prepared.mkdir(parents=True)
    pq.write_table(pa.table({"pair_id": [p["pair_id"] for p in pairs],
                             "prompt": [[{"role": "user", "content": f"a question about {p['category']} number {i}"}]
                                        for i, p in enumerate(pairs)]}),
                   prepared / "pairs.parquet")
    params = {
        "lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0,
        "backbone": {"source": "synthetic", "revision": "synthetic"},
        "experiments": {EXP: {"dataset": "syn", "num_experts": 3, "group_by": "category"}},
        "train": {"epochs": 1, "batch_size": 16, "block_pairs": 256},
        "interpret": {"top_n": 5, "per_stratum": 10},
        "steer": {"label": "category", "top_n": 10, "random_repeats": 2, "min_pairs": 10},
        "personalize": {"sizes": [5], "seeds": [0], "min_pairs": 10, "epochs": 2},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for module, args in [("stores", ["syn"]), ("train", [EXP, "vanilla"]), ("evaluate", [EXP, "vanilla"]),
                             ("interpret", [EXP, "vanilla"]), ("steer", [EXP, "vanilla"]),
                             ("personalize", [EXP, "vanilla"])]:
            code = subprocess.run([sys.executable, "-m", f"stages.{module}", *args], cwd=root,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
            assert code.returncode == 0, f"{module}: {code.stderr[-3000:]}"
    finally:
        os.chdir(cwd)
    return root


# Each stage after `stores`, the arguments that point it at given split stores and head, and its outputs.
def stage_runs(root: Path, stores: Path, model: Path) -> dict[str, tuple[list[str], list[Path]]]:
    d = root / "data"
    return {
        "train": ([EXP, "vanilla", "--stores", str(stores)],
                  [d / "models" / EXP / "vanilla", d / "plots/train" / EXP / "vanilla"]),
        "evaluate": ([EXP, "vanilla", "--stores", str(stores), "--model", str(model)],
                     [d / "metrics" / EXP / "vanilla.json", d / "predictions" / EXP / "vanilla",
                      d / "plots/eval" / EXP / "vanilla"]),
        "interpret": ([EXP, "vanilla", "--stores", str(stores), "--model", str(model)],
                      [d / "interpret" / EXP / "vanilla", d / "metrics" / EXP / "interpret-vanilla.json"]),
        "steer": ([EXP, "vanilla", "--stores", str(stores), "--model", str(model)],
                  [d / "steer" / EXP / "vanilla.json", d / "metrics" / EXP / "steer-vanilla.json"]),
        "personalize": ([EXP, "vanilla", "--stores", str(stores), "--model", str(model)],
                        [d / "personalize" / EXP / "vanilla", d / "metrics" / EXP / "personalize-vanilla.json"]),
    }


# The splits each stage reads (a vanilla head: it has a router, so evaluate reads validation too).
SPLITS_READ = {"train": ("train", "validation"), "evaluate": ("test", "validation"),
               "interpret": ("validation", "test"), "steer": ("validation", "test"), "personalize": ("test",)}


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rewrite_rows(path: Path) -> None:
    """Valid Parquet with other (finite) values: only the checksum can tell."""
    table = pq.read_table(path)
    state = table.column("state").combine_chunks()
    values = np.asarray(state.flatten().to_numpy(zero_copy_only=False)).copy()
    values[: 8 * 20] = 0.5
    vec = pa.FixedSizeListArray.from_arrays(pa.array(values, type=state.type.value_type), state.type.list_size)
    pq.write_table(table.set_column(table.schema.get_field_index("state"), "state", vec), path)


def foreign_shard(path: Path) -> None:
    other = write_synthetic_cache(path.parent.parent.parent / "other-cache", num_pairs=200, hidden_size=8,
                                  pairs_per_shard=150, seed=7)
    shutil.copy(other / cache.SHARD_DIR / path.name, path)


# fault name -> (file inside the cache to damage, how, the file the message must name)
CACHE_FAULTS = {
    "corrupt shard": ("shards/shard-00001.parquet", flip),
    "truncated shard": ("shards/shard-00001.parquet", lambda p: p.write_bytes(p.read_bytes()[:-100])),
    "missing shard": ("shards/shard-00001.parquet", Path.unlink),
    "foreign shard": ("shards/shard-00001.parquet", foreign_shard),
    "rows rewritten": ("shards/shard-00001.parquet", rewrite_rows),
    "corrupt pairs table": ("pairs.parquet", flip),
    "damaged manifest": ("manifest.json", lambda p: p.write_text(p.read_text()[:-40])),
    "manifest not a record": ("manifest.json", lambda p: p.write_text("[1, 2]")),
    "missing manifest": ("manifest.json", Path.unlink),
}


@pytest.mark.parametrize("fault", sorted(CACHE_FAULTS))
def test_the_cache_reader_refuses_a_damaged_cache(world, tmp_path, capsys, monkeypatch, fault):
    """`stores` is the only stage that reads the cache."""
    monkeypatch.chdir(world)
    member, damage = CACHE_FAULTS[fault]
    features = tmp_path / "features"
    shutil.copytree(world / "data/features/syn", features)
    damage(features / member)
    named = str(features if fault == "missing manifest" else features / member)
    outputs = [world / "data/stores/syn"]
    before = snapshot(*outputs)
    code, err = invoke("stores", ["syn", "--features", str(features)], capsys)
    assert_refused(code, err, named, before, *outputs, only_line=False)
    if fault != "missing manifest":
        assert "featurize" in err or "checkout" in err, f"no way to recover in: {err}"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


# fault name -> (file inside the stores folder to damage, how); "{split}" is a split the stage reads
STORE_FAULTS = {
    "corrupt states": ("{split}.f16", flip),
    "truncated states": ("{split}.f16", truncate),
    "missing states": ("{split}.f16", Path.unlink),
    "corrupt index": ("{split}.parquet", flip),
    "corrupt moments": ("{split}.moments.npy", flip),
    "damaged manifest": ("manifest.json", lambda p: p.write_text(p.read_text()[:-10])),
    "missing checksums": ("checksums.json", Path.unlink),
}


@pytest.mark.parametrize("fault", sorted(STORE_FAULTS))
def test_every_stores_reader_refuses_damaged_stores(world, tmp_path, capsys, monkeypatch, fault):
    monkeypatch.chdir(world)
    template, damage = STORE_FAULTS[fault]
    model = world / "data/models" / EXP / "vanilla"
    for module, (args, outputs) in stage_runs(world, tmp_path / "stores", model).items():
        shutil.rmtree(tmp_path / "stores", ignore_errors=True)
        shutil.copytree(world / "data/stores/syn", tmp_path / "stores")
        member = tmp_path / "stores" / template.format(split=SPLITS_READ[module][0])
        damage(member)
        before = snapshot(*outputs)
        code, err = invoke(module, args, capsys)
        assert_refused(code, err, str(member), before, *outputs, only_line=False)
        assert "dvc repro stores@stores" in err or "checkout" in err, f"{module}: no way to recover in: {err}"


def test_the_cache_is_read_once_and_no_later_stage_reads_it(world, tmp_path, capsys, monkeypatch):
    """Issue 16's bound: `stores` reads every byte of the cache exactly once (each file is
    hashed from the bytes it parses); the stages after it read no byte of the cache, and
    each split store they use at most twice (its checksum, then one pass) -- train once
    per epoch instead (the standardization moments come with the stores)."""
    monkeypatch.chdir(world)
    features = world / "data/features/syn"
    cache_bytes = sum(p.stat().st_size for p in [features / cache.PAIRS, *features.glob("shards/*.parquet")])
    iostats._read.clear()
    code, err = invoke("stores", ["syn", "--out", str(tmp_path / "stores")], capsys)
    assert code == 0, err
    assert iostats.read_bytes() == {"cache": cache_bytes}
    assert f"read {cache_bytes / 2**20:,.1f} MiB from the cache" in err  # the stage says so in its log
    size = {p.name: p.stat().st_size for p in (tmp_path / "stores").iterdir()}
    epochs = yaml.safe_load((world / "params.yaml").read_text())["train"]["epochs"]
    for module, (args, outputs) in stage_runs(world, tmp_path / "stores", world / "data/models" / EXP / "vanilla").items():
        iostats._read.clear()
        code, err = invoke(module, [*args, *(["--out", str(tmp_path / "m"), "--curves", str(tmp_path / "c")]
                                             if module == "train" else [])], capsys)
        assert code == 0, err
        read = iostats.read_bytes()
        assert "cache" not in read, module
        passes = {"train": 1 + epochs, "validation": 1 + epochs} if module == "train" else {}
        bound = sum(passes.get(split, 2) * size[f"{split}.f16"] + size[f"{split}.parquet"]
                    + size[f"{split}.moments.npy"] for split in SPLITS_READ[module])
        assert 0 < read["stores"] <= bound, (module, read, bound)


def test_cache_from_another_chat_template_is_refused_before_training(world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(world)
    params = yaml.safe_load((world / "params.yaml").read_text())
    params["backbone"]["system_prompt"] = "You are a pirate."
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args, outputs = stage_runs(world, world / "data/stores/syn", Path())["train"]
    before = snapshot(*outputs)
    code, err = invoke("train", [*args, "--params", str(tmp_path / "params.yaml")], capsys)
    assert_refused(code, err, "backbone.system_prompt: cache None, params.yaml 'You are a pirate.'", before, *outputs,
                   only_line=False)


# ----------------------------------------------------------------------------- heads


def damaged_config(head: Path) -> None:
    (head / "config.json").write_text((head / "config.json").read_text().replace('"num_experts": 3', '"num_experts": 4'))


def foreign_weights(head: Path) -> None:
    other = RewardHead(HeadConfig(hidden_size=8, num_experts=5))
    other.save(head.parent / "other-head")
    shutil.copy(head.parent / "other-head" / "model.safetensors", head / "model.safetensors")


HEAD_FAULTS = {
    "corrupt weights": ("model.safetensors", lambda h: flip(h / "model.safetensors")),
    "truncated weights": ("model.safetensors", lambda h: (h / "model.safetensors").write_bytes(
        (h / "model.safetensors").read_bytes()[:-64])),
    "foreign weights": ("model.safetensors", foreign_weights),
    "edited config": ("config.json", damaged_config),
    "no checksums": ("checksums.json", lambda h: (h / "checksums.json").unlink()),
    "damaged checksums": ("checksums.json", lambda h: (h / "checksums.json").write_text("{")),
    "missing weights": ("model.safetensors", lambda h: (h / "model.safetensors").unlink()),
}


@pytest.mark.parametrize("fault", sorted(HEAD_FAULTS))
def test_every_head_loader_refuses_a_damaged_head(world, tmp_path, capsys, monkeypatch, fault):
    monkeypatch.chdir(world)
    member, damage = HEAD_FAULTS[fault]
    model = tmp_path / "head"
    shutil.copytree(world / "data/models" / EXP / "vanilla", model)
    damage(model)
    named = str(model / member) if fault != "missing weights" else str(model)
    runs = stage_runs(world, world / "data/stores/syn", model)
    del runs["train"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "hi", "response": "there"}) + "\n")
    scored = tmp_path / "scored.jsonl"
    scored.write_text("previous good output\n")
    runs["score"] = ([str(rows), "--model", str(model), "--out", str(scored), "--backbone", str(tmp_path / "none")],
                     [scored])
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n"
                                for i in range(6)))
    adapted = tmp_path / "adapted"
    adapted.mkdir()
    (adapted / "keep.txt").write_text("previous")
    runs["adapt"] = (["--model", str(model), "--examples", str(examples), "--out", str(adapted), "--force",
                      "--backbone", str(tmp_path / "none")], [adapted])
    for module, (args, outputs) in runs.items():
        before = snapshot(*outputs)
        code, err = invoke(module, args, capsys)
        assert_refused(code, err, named, before, *outputs, only_line=False)


def test_a_saved_head_verifies_and_a_resaved_one_too(tmp_path):
    head = RewardHead(HeadConfig(hidden_size=8, num_experts=3))
    head.save(tmp_path / "h")
    assert json.loads((tmp_path / "h/checksums.json").read_text()).keys() == {"config.json", "model.safetensors"}
    RewardHead.load(tmp_path / "h")
    head.save(tmp_path / "h", note="again")  # overwriting refreshes the record
    assert RewardHead.load(tmp_path / "h").config.extra == {"note": "again"}


# ----------------------------------------------------------------------------- kills


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "never reached the moment to kill"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _command(module: str, args: list[str], root: Path) -> list[str]:
    return [sys.executable, "-m", f"stages.{module}", *args]


def _kill_at_line(proc: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as a line containing ``marker`` appears on its stderr (a
    progress line: the stage is mid-run, its outputs not yet swapped in)."""
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "never reached the moment to kill"
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"finished before it could be killed (exit {proc.returncode})"


# The moment to kill: train mid-epoch (a progress line; many epochs, so that it cannot
# finish first), evaluate while it writes its outputs under their scratch names (it prints
# no progress: its figures take the longest).
KILL_AT = {"train": ("train vanilla: ", {"epochs": 400}), "evaluate": (None, {})}


@pytest.mark.parametrize("module", sorted(KILL_AT))
def test_sigkill_mid_stage_keeps_the_previous_outputs_and_the_next_run_completes(world, tmp_path, module):
    args, outputs = stage_runs(world, world / "data/stores/syn", world / "data/models" / EXP / "vanilla")[module]
    marker, train_overrides = KILL_AT[module]
    params = yaml.safe_load((world / "params.yaml").read_text())
    params["train"].update(train_overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(*outputs)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SMOE_PROGRESS_INTERVAL": "0"}
    proc = subprocess.Popen(_command(module, [*args, "--params", str(tmp_path / "params.yaml")], world), cwd=world,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if marker:
        _kill_at_line(proc, marker)
    else:
        _kill_when(proc, lambda: any(p.is_file() or (p.is_dir() and any(p.rglob("*")))
                                     for o in outputs for p in o.parent.glob(f".{o.name}.staging-*")))
    assert snapshot(*outputs) == before
    done = subprocess.run(_command(module, args, world), cwd=world, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(o.exists() for o in outputs)
    assert not [p for o in outputs for p in o.parent.glob(f".{o.name}.staging-*")], "the next run left scratch"


def test_sigkill_mid_score_keeps_the_previous_output(tiny_llama, tmp_path):
    from pipeline import backbone as bb

    hidden = bb.load(bb.BackboneConfig(model=str(tiny_llama))).hidden_size
    RewardHead(HeadConfig(hidden_size=hidden, num_experts=2)).save(tmp_path / "head")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"question {i} " * 20, "response": f"answer {i} " * 30}) + "\n"
                            for i in range(400)))
    out = tmp_path / "scored.jsonl"
    out.write_text("previous good output\n")
    args = [str(rows), "--model", str(tmp_path / "head"), "--out", str(out), "--backbone", str(tiny_llama),
            "--params", str(tmp_path / "none.yaml"), "--batch-rows", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_command("score", args, tmp_path), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _kill_when(proc, lambda: any(p.stat().st_size > 0 for p in tmp_path.glob(".scored.jsonl.staging-*")))
    assert out.read_text() == "previous good output\n"
    small = tmp_path / "rows-small.jsonl"
    small.write_text("".join(rows.read_text().splitlines(keepends=True)[:5]))
    done = subprocess.run(_command("score", [str(small), *args[1:]], tmp_path), cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 5
    assert not list(tmp_path.glob(".scored.jsonl.staging-*"))


def test_scratch_dir_param_places_train_scratch_and_a_missing_one_is_refused(world, tmp_path, capsys,
                                                                             monkeypatch):
    from stages import train as train_stage

    monkeypatch.chdir(world)
    params = yaml.safe_load((world / "params.yaml").read_text())
    args, outputs = stage_runs(world, world / "data/stores/syn", Path())["train"]
    params["scratch_dir"] = str(tmp_path / "absent")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = snapshot(*outputs)
    code, err = invoke("train", [*args, "--params", str(tmp_path / "params.yaml")], capsys)
    assert_refused(code, err, f"scratch_dir: {tmp_path / 'absent'} is not a folder", before, *outputs)

    (tmp_path / "scratch").mkdir()
    params["scratch_dir"] = str(tmp_path / "scratch")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    used = []
    train = train_stage.train_experiment
    monkeypatch.setattr(train_stage, "train_experiment",
                        lambda stores, models, curves, **kw: used.append(Path(models)) or train(stores, models, curves, **kw))
    code, err = invoke("train", [*args, "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "head"),
                                 "--curves", str(tmp_path / "curves")], capsys)
    assert code == 0, err
    assert used and all(tmp_path / "scratch" in p.parents for p in used)
    assert not any((tmp_path / "scratch").iterdir()), "scratch is removed when the stage ends"
