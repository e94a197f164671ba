"""Benchmarks: both modes of the train and sweep comparisons run on the same pairs, and the
naive loop feeds the head exactly the states the cache stores."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.backbone import BackboneConfig, load
from tooling.bench import run_isolated, subset_pairs
from tooling.bench_train import _backbone_states, compare
from pipeline.cache import FeatureCache
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.train import TrainConfig
from tests.test_featurize import many_rows, write_prepared

LAMBDAS = {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("prepared"), many_rows(6, 3))  # 18 pairs, mixed splits


def run_compare(tiny_llama, prepared, points):
    config = TrainConfig(epochs=1, batch_size=4, block_pairs=8)
    return compare(prepared, 8, BackboneConfig(model=str(tiny_llama)), FeaturizeConfig(), config,
                   num_experts=3, points=points)


def check_modes(res, points):
    naive, cached = res["naive"], res["cached"]
    assert naive["mode"] == "naive" and cached["mode"] == "cached"
    for r in (naive, cached):
        assert r["pairs"] == 8 and r["points"] == points and r["epochs"] == 1
        assert len(r["point_s"]) == points and all(s > 0 for s in r["point_s"])
        assert r["seconds"] > r["train_s"] > 0 and r["epoch_s"] > 0 and r["pairs_per_s"] > 0
        assert r["peak_rss_mb"] > 0
        assert r["steps"] == 2 * points  # 8 pairs in batches of 4, one epoch, per point
        assert len(r["final_loss"]) == points and np.isfinite(r["final_loss"]).all()
    assert cached["featurize_s"] > 0 and cached["build_s"] > 0
    assert cached["seconds"] == pytest.approx(cached["featurize_s"] + cached["build_s"] + cached["train_s"])
    assert naive["seconds"] == pytest.approx(naive["tokenize_s"] + naive["train_s"])
    assert res["speedup_wall"] == pytest.approx(naive["seconds"] / cached["seconds"])


def test_train_comparison(tiny_llama, prepared):
    res = run_compare(tiny_llama, prepared, [LAMBDAS])
    check_modes(res, 1)


def test_sweep_comparison(tiny_llama, prepared):
    points = [{**LAMBDAS, "lambda_div": v} for v in (0.0, 1.0, 2.0)]
    res = run_compare(tiny_llama, prepared, points)
    check_modes(res, 3)
    # lambda_div reaches the objective: the points train different heads
    assert len(set(res["cached"]["final_loss"])) == 3 and len(set(res["naive"]["final_loss"])) == 3


def test_naive_states_are_the_cached_states(tiny_llama, prepared, tmp_path):
    """The naive loop's padded batches give the head the same inputs as the cache (up to
    the cache's float16 storage): the comparison is between two ways of getting the same
    states, not between different inputs."""
    pairs = subset_pairs(prepared, 6, tmp_path, split="train")
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    featurize(pairs, tmp_path / "cache", backbone, FeaturizeConfig(), show_progress=False)
    cache = FeatureCache(tmp_path / "cache")
    table = cache.pairs()
    assert set(table.column("split").to_pylist()) == {"train"}
    states = cache.states()
    rows = pq.read_table(pairs).to_pylist()
    batch = [(backbone.encode(r["prompt"], r["chosen"]), backbone.encode(r["prompt"], r["rejected"])) for r in rows]
    prompt, chosen, rejected = _backbone_states(backbone, batch, "cpu")
    assert not chosen.is_inference()  # the head's autograd may save it
    by_pair = {p: (c, r, s) for p, c, r, s in zip(*(table.column(k).to_pylist() for k in
                                                      ("pair_id", "chosen_id", "rejected_id", "prompt_state_id")))}
    for i, row in enumerate(rows):
        c, r, s = by_pair[row["pair_id"]]
        assert s != c and s != r  # the router input is its own (prompt) state, not a response's
        np.testing.assert_allclose(chosen[i].numpy(), states[c], rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(rejected[i].numpy(), states[r], rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(prompt[i].numpy(), states[s], rtol=1e-2, atol=1e-2)


def test_featurize_comparison(tiny_llama, prepared):
    from tooling.bench import compare as compare_featurize

    res = compare_featurize(prepared, 8, BackboneConfig(model=str(tiny_llama)), FeaturizeConfig())
    assert res["naive"]["pairs"] == res["real"]["pairs"] == 8
    assert res["naive"]["sequences"] == 16 and res["real"]["sequences"] <= 16  # shared responses run once
    assert res["naive"]["forward_tokens"] > res["real"]["forward_tokens"] > 0
    assert res["speedup_wall"] == pytest.approx(res["naive"]["seconds"] / res["real"]["seconds"])


def test_run_isolated_reports_the_childs_error():
    with pytest.raises(RuntimeError, match="no_such_function"):
        run_isolated("tooling.bench:no_such_function")


def test_bench_commands_are_registered():
    from stages.cli import app

    out = CliRunner().invoke(app, ["bench", "--help"]).output
    for command in ("featurize", "train", "sweep", "scale"):
        assert command in out
