"""Attribute steering: Eq. 14-18 on hand-computed cases, target selection, the stage's outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from pipeline import metrics
from pipeline.cache import FeatureCache
from pipeline.steer import paired_t_test, random_baseline, steer_attributes, steer_experiment, summarize
from pipeline.synthetic import write_synthetic_cache
from pipeline.train import TrainConfig, train_experiment


def test_target_experts_pick_the_largest_share_with_ties_to_the_lower_index():
    # expert 0 ranks x1,x2,x3 top; expert 1 ranks x3,x4,x5; expert 2 ranks x0,x1,x2
    weights = np.array([[0.1, 0.1, 0.8], [0.5, 0.0, 0.5], [0.6, 0.0, 0.4], [0.4, 0.5, 0.1],
                        [0.0, 0.9, 0.1], [0.0, 0.7, 0.3]])
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    # top-3: expert 0 -> rows 2,1,3 (a,a,b): a 2/3; expert 1 -> 4,5,3 (b,b,b); expert 2 -> 0,1,2 (a,a,a)
    assert metrics.target_experts(weights, labels, top_n=3) == {"a": 2, "b": 1}
    # top-6 (everything): every expert holds 1/2 of each label -> the tie goes to expert 0
    assert metrics.target_experts(weights, labels, top_n=6) == {"a": 0, "b": 0}


def test_steered_weights_set_the_target_and_rescale_the_rest():
    weights = np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    out = metrics.steered_weights(weights, expert=2, w=0.25)
    np.testing.assert_allclose(out[0], [0.75 * 0.4, 0.75 * 0.6, 0.25])
    np.testing.assert_allclose(out[1], [0.375, 0.375, 0.25])  # all mass was on the target: split evenly
    np.testing.assert_allclose(metrics.steered_weights(weights, 0, 1.0), [[1, 0, 0], [1, 0, 0]])
    removed = metrics.steered_weights(weights, 2, 0.0)
    np.testing.assert_allclose(removed[0], [0.4, 0.6, 0.0])
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_flip_rates_by_hand():
    removed = np.array([False, False, False, False, True, True])   # 4 wrong, 2 right at w = 0
    steered = np.array([True, True, True, False, True, False])
    assert metrics.flip_rate(removed, steered) == 3 / 4                     # Eq. 15
    assert metrics.undesired_flip_rate(removed, steered) == 1 / 2           # Eq. 18
    assert math.isnan(metrics.flip_rate(np.ones(3, bool), np.ones(3, bool)))  # M_a empty
    assert math.isnan(metrics.undesired_flip_rate(np.zeros(3, bool), np.ones(3, bool)))


def test_steer_attributes_and_summary_follow_eq_14_to_16():
    # two experts with opposite margins; the router prefers the wrong one for attribute "a"
    margins = np.array([[-1.0, 1.0], [-1.0, 1.0], [-1.0, 3.0], [2.0, -1.0]])
    weights = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.5, 0.5]])
    labels = np.array(["a", "a", "a", "b"])
    out = steer_attributes(weights, margins, labels, {"a": 1, "b": 1}, (0.25, 0.5, 1.0))
    a = out["a"]
    # removed (all weight on expert 0): all three "a" pairs are wrong
    assert a["num_wrong_removed"] == 3 and a["target_expert"] == 1
    # w = 0.25: margins -0.75+0.25, -0.75+0.25, -0.75+0.75=0 (a tie is wrong) -> 0 flips
    # w = 0.5: 0, 0, +1 -> 1/3; w = 1.0: all right -> 1
    assert a["flip_rate_by_weight"] == {"0.25": 0.0, "0.5": 1 / 3, "1.0": 1.0}
    assert math.isclose(a["flip_rate"], (0 + 1 / 3 + 1) / 3)
    b = out["b"]  # right when expert 1 is removed (margin 2); 0.5*2 - 0.5*1 > 0, only w = 1 breaks it
    assert math.isnan(b["flip_rate"]) and b["undesired_flip_rate_by_weight"] == {"0.25": 0.0, "0.5": 0.0, "1.0": 1.0}
    summary = summarize(out, (0.25, 0.5, 1.0))
    assert math.isclose(summary["flip_rate"], a["flip_rate"])  # Eq. 16 over the defined values
    assert summary["flip_rate_by_weight"]["1.0"] == 1.0
    assert math.isnan(a["undesired_flip_rate"])  # no pair of "a" is right at w = 0
    assert math.isclose(summary["undesired_flip_rate"], 1 / 3)


def test_paired_t_test_matches_scipy_and_skips_undefined_attributes():
    ref = {a: {"flip_rate": v} for a, v in zip("abcde", [0.9, 0.8, 0.7, 0.95, 0.6])}
    other = {a: {"flip_rate": v} for a, v in zip("abcde", [0.5, 0.6, 0.65, 0.5, math.nan])}
    result = paired_t_test(ref, other)
    expected = stats.ttest_rel([0.9, 0.8, 0.7, 0.95], [0.5, 0.6, 0.65, 0.5])
    assert result["num_attributes"] == 4
    assert math.isclose(result["p_value"], expected.pvalue) and math.isclose(result["t"], expected.statistic)
    assert math.isclose(result["mean_difference"], np.mean([0.4, 0.2, 0.05, 0.45]))


def test_random_baseline_is_seeded():
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(4), size=40)
    margins = rng.normal(size=(40, 4))
    labels = np.array(list("abcd") * 10)
    one = random_baseline(weights, margins, labels, repeats=5, seed=1)
    assert one == random_baseline(weights, margins, labels, repeats=5, seed=1)
    assert one != random_baseline(weights, margins, labels, repeats=5, seed=2)


def test_steer_experiment_writes_metrics_and_figures(tmp_path):
    cache = FeatureCache(write_synthetic_cache(tmp_path / "cache", num_pairs=900, hidden_size=12, num_clusters=3,
                                               split_fractions=(0.6, 0.2, 0.2), seed=7))
    train_experiment(cache, tmp_path / "models", tmp_path / "curves", variants=["vanilla", "sparse"], num_experts=3,
                     lambdas={"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0},
                     config=TrainConfig(epochs=2, batch_size=32), scratch=tmp_path / "s", show_progress=False)
    results = steer_experiment(cache, tmp_path / "models", ["vanilla", "sparse"], out_path=tmp_path / "steering.json",
                               figures_dir=tmp_path / "fig", scratch=tmp_path / "s2", label="category", top_n=30,
                               random_repeats=3, metrics_path=tmp_path / "m" / "steering.json")
    saved = json.loads((tmp_path / "steering.json").read_text())
    assert set(saved) == {"vanilla", "sparse", "random", "settings"}
    for model in ("vanilla", "sparse", "random"):
        assert set(saved[model]["flip_rate_by_weight"]) == {"0.25", "0.5", "0.75", "1.0"}
        assert set(saved[model]["per_attribute"]) == {"cluster0", "cluster1", "cluster2"}
        assert 0.0 <= saved[model]["flip_rate"] <= 1.0
    assert "p_value" in saved["vanilla"]["t_test_vs_sparse"] and "t_test_vs_sparse" not in saved["sparse"]
    key = json.loads((tmp_path / "m" / "steering.json").read_text())  # the DVC metrics file: flat key numbers
    assert set(key) == {"vanilla", "sparse", "random"}
    assert key["sparse"]["flip_rate"] == saved["sparse"]["flip_rate"]
    assert key["vanilla"]["flip_rate_at_max_weight"] == saved["vanilla"]["flip_rate_by_weight"]["1.0"]
    p = saved["vanilla"]["t_test_vs_sparse"]["p_value"]
    assert key["vanilla"].get("p_value_vs_sparse") == (p if np.isfinite(p) else None)
    assert all(isinstance(v, float) for row in key.values() for v in row.values())
    assert results["sparse"]["per_attribute"]["cluster0"]["target_expert"] in (0, 1, 2)
    csv = (tmp_path / "fig" / "flip_rate.csv").read_text().splitlines()
    assert csv[0] == "weight,vanilla,sparse,random" and len(csv) == 5
    assert (tmp_path / "fig" / "flip_rate.png").exists() and (tmp_path / "fig" / "undesired_flip_rate.png").exists()
    with pytest.raises(ValueError, match="needs a 'attribute' label"):
        steer_experiment(cache, tmp_path / "models", ["sparse"], out_path=tmp_path / "x.json", figures_dir=None,
                         scratch=tmp_path / "s3")
