"""Attribute steering: Eq. 14-18 on hand-computed cases, target selection, one head's outputs, the stage."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import typer
import yaml
from scipy import stats
from typer.testing import CliRunner

from pipeline import metrics
from pipeline.cache import FeatureCache
from pipeline.split_store import build_stores
from pipeline.steer import (SteerConfig, SteerError, curve_csv, headline, random_baseline, steer_attributes,
                            steer_variant, summarize)
from pipeline.train import TrainConfig, train_experiment
from stages import steer as stage
from tooling.synthetic_cache import write_synthetic_cache


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
    result = metrics.paired_t_test(ref, other)
    expected = stats.ttest_rel([0.9, 0.8, 0.7, 0.95], [0.5, 0.6, 0.65, 0.5])
    assert result["num_attributes"] == 4
    assert math.isclose(result["p_value"], expected.pvalue) and math.isclose(result["t"], expected.statistic)
    assert math.isclose(result["mean_difference"], np.mean([0.4, 0.2, 0.05, 0.45]))


def test_random_baseline_is_seeded():
    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.ones(4), size=40)
    margins = rng.normal(size=(40, 4))
    labels = np.array(list("abcd") * 10)
    config = SteerConfig(random_repeats=5, seed=1)
    one = random_baseline(weights, margins, labels, config)
    assert one == random_baseline(weights, margins, labels, SteerConfig(random_repeats=5, seed=1))
    assert one != random_baseline(weights, margins, labels, SteerConfig(random_repeats=5, seed=2))
    assert set(one) == set("abcd") and all(set(r["flip_rate_by_weight"]) == {"0.25", "0.5", "0.75", "1.0"}
                                           for r in one.values())



def test_paired_t_test_is_undefined_without_variance_or_attributes():
    ref = {a: {"flip_rate": v} for a, v in zip("abc", [0.9, 0.8, 0.7])}
    shifted = {a: {"flip_rate": r["flip_rate"] - 0.1} for a, r in ref.items()}  # every difference 0.1
    same = metrics.paired_t_test(ref, shifted)
    assert math.isnan(same["t"]) and math.isnan(same["p_value"]) and math.isclose(same["mean_difference"], 0.1)
    one = metrics.paired_t_test(ref, {"a": {"flip_rate": 0.5}})
    assert one["num_attributes"] == 1 and math.isnan(one["p_value"]) and math.isclose(one["mean_difference"], 0.4)
    none = metrics.paired_t_test(ref, {})
    assert none["num_attributes"] == 0 and math.isnan(none["mean_difference"])


def test_average_flip_rate_is_eq_16_over_the_defined_values():
    grid = [[0.0, 0.5, 1.0], [math.nan, math.nan, math.nan], [0.25, 0.25, 0.25]]  # [A, W]; attribute 1 undefined
    assert math.isclose(metrics.average_flip_rate(grid), (0 + 0.5 + 1 + 3 * 0.25) / 6)
    assert math.isclose(metrics.average_flip_rate([row[2] for row in grid]), (1.0 + 0.25) / 2)  # one weight's point
    assert math.isnan(metrics.average_flip_rate([math.nan, math.nan])) and math.isnan(metrics.average_flip_rate([]))
    assert "Eq. 16" in metrics.average_flip_rate.__doc__


def test_steer_config_defaults_and_checks():
    config = SteerConfig()
    assert (config.label, config.top_n, config.weights, config.random_repeats, config.seed) == \
        ("attribute", 100, [0.25, 0.5, 0.75, 1.0], 20, 0)
    assert SteerConfig(weights=[1, 0.5]).weights == [0.5, 1.0]  # floats in order: the key of w = 1 is "1.0"
    for bad, message in (({"weights": []}, "non-empty"), ({"weights": [0.0, 0.5]}, r"\(0, 1\]"),
                         ({"weights": [0.5, 1.5]}, r"\(0, 1\]"), ({"weights": [0.5, 0.5]}, "repeat"),
                         ({"top_n": 0}, "top_n"), ({"random_repeats": 2.5}, "random_repeats"),
                         ({"label": ""}, "label"), ({"seed": "0"}, "seed")):
        with pytest.raises(ValueError, match=message):
            SteerConfig(**bad)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("steer")
    cache = FeatureCache(write_synthetic_cache(tmp / "cache", num_pairs=900, hidden_size=12, num_clusters=3,
                                               split_fractions=(0.6, 0.2, 0.2), seed=7))
    stores = build_stores(cache, tmp / "stores")
    train_experiment(stores, tmp / "models", tmp / "curves", variants=["single", "vanilla", "sparse"], num_experts=3,
                     lambdas={"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0},
                     config=TrainConfig(epochs=2, batch_size=32), show_progress=False)
    return cache, stores, tmp / "models"


def test_steer_variant_results_key_numbers_and_curve(trained):
    cache, stores, models = trained
    config = SteerConfig(label="category", top_n=30, random_repeats=3)
    vanilla = steer_variant(stores, models / "vanilla", "vanilla", config)
    sparse = steer_variant(stores, models / "sparse", "sparse", config)
    assert set(vanilla.results) == {"vanilla", "settings"}  # the random baseline is sparse's only
    assert set(sparse.results) == {"sparse", "random", "settings"}
    assert sparse.results["settings"] == {"label": "category", "top_n": 30, "weights": [0.25, 0.5, 0.75, 1.0],
                                          "random_repeats": 3, "seed": 0, "min_pairs": 51, "variant": "sparse",
                                          "reference": "sparse"}
    assert sparse.results["sparse"]["skipped_attributes"] == {}
    for output, model in ((vanilla, "vanilla"), (sparse, "sparse"), (sparse, "random")):
        r = output.results[model]
        assert set(r["flip_rate_by_weight"]) == {"0.25", "0.5", "0.75", "1.0"}
        assert set(r["per_attribute"]) == {"cluster0", "cluster1", "cluster2"}
        assert 0.0 <= r["flip_rate"] <= 1.0
        # Eq. 16: the mean over attributes and weights of the per-attribute values
        grid = [[a["flip_rate_by_weight"][w] for w in ("0.25", "0.5", "0.75", "1.0")] for a in r["per_attribute"].values()]
        assert math.isclose(r["flip_rate"], metrics.average_flip_rate(grid))
    assert sparse.results["sparse"]["per_attribute"]["cluster0"]["target_expert"] in (0, 1, 2)
    assert sparse.results["random"]["per_attribute"]["cluster0"]["target_expert"] is None
    # the same head steered again, alone: the same numbers (nothing depends on other variants)
    again = steer_variant(stores, models / "sparse", "sparse", config)
    assert json.dumps(again.results, sort_keys=True) == json.dumps(sparse.results, sort_keys=True)
    # the paper's filter: an attribute with fewer than min_pairs test pairs is left out and counted
    sizes = dict(zip(*np.unique(cache.pairs().filter(pc.equal(cache.pairs().column("split"), "test"))
                                .column("category").to_numpy(zero_copy_only=False), return_counts=True)))
    smallest = min(sizes, key=sizes.get)
    filtered = steer_variant(stores, models / "sparse", "sparse",
                             dataclasses.replace(config, min_pairs=int(sizes[smallest]) + 1))
    assert filtered.results["sparse"]["skipped_attributes"] == {
        smallest: f"{sizes[smallest]} test pairs, fewer than min_pairs = {sizes[smallest] + 1}"}
    assert set(filtered.results["sparse"]["per_attribute"]) == set(sizes) - {smallest}
    assert set(filtered.results["random"]["per_attribute"]) == set(sizes) - {smallest}

    key = sparse.key_metrics  # the DVC metrics file: flat, one column per number
    assert key == headline(sparse.results)
    assert key["flip_rate"] == sparse.results["sparse"]["flip_rate"]
    assert key["flip_rate_at_max_weight"] == sparse.results["sparse"]["flip_rate_by_weight"]["1.0"]
    assert key["random_undesired_flip_rate"] == sparse.results["random"]["undesired_flip_rate"]
    assert set(vanilla.key_metrics) <= {"flip_rate", "undesired_flip_rate", "flip_rate_at_max_weight"}
    assert all(isinstance(v, float) for v in key.values())

    lines = sparse.curve_csv.splitlines()
    assert sparse.curve_csv == curve_csv(sparse.results)
    assert lines[0] == "weight,flip_rate,undesired_flip_rate,random_flip_rate,random_undesired_flip_rate"
    assert len(lines) == 5 and lines[4].startswith("1.0,")
    assert float(lines[4].split(",")[1]) == pytest.approx(sparse.results["sparse"]["flip_rate_by_weight"]["1.0"], abs=1e-6)
    assert vanilla.curve_csv.splitlines()[0] == "weight,flip_rate,undesired_flip_rate"

    with pytest.raises(SteerError, match="no router"):
        steer_variant(stores, models / "single", "vanilla", config)  # a single head under any name
    with pytest.raises(SteerError, match="cannot be steered"):
        steer_variant(stores, models / "single", "single", config)
    with pytest.raises(SteerError, match="needs a 'attribute' label"):
        steer_variant(stores, models / "sparse", "sparse", SteerConfig())


def _params(tmp_path, **steer) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"experiments": {"syn": {"dataset": "syn", "num_experts": 3}}, "steer": steer}))
    return str(path)


def test_stage_writes_the_three_outputs_or_nothing(trained, tmp_path):
    _, stores, models = trained
    app = typer.Typer()
    app.command()(stage.main)
    out = {"--out": tmp_path / "steer/syn/sparse.json", "--metrics": tmp_path / "metrics/syn/steer-sparse.json",
           "--curve": tmp_path / "plots/steer/syn/sparse.csv"}
    args = ["syn", "sparse", "--stores", str(stores.path), "--model", str(models / "sparse")]
    args += [x for option, path in out.items() for x in (option, str(path))]

    failed = CliRunner().invoke(app, args + ["--params", _params(tmp_path, top_n=30)])  # label: attribute
    assert isinstance(failed.exception, SteerError)
    assert not any(path.exists() for path in out.values()) and not list(tmp_path.rglob(".*.tmp-*"))

    result = CliRunner().invoke(app, args + ["--params", _params(tmp_path, label="category", top_n=30, random_repeats=3)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out["--out"].read_text())
    expected = steer_variant(stores, models / "sparse", "sparse", SteerConfig(label="category", top_n=30, random_repeats=3))
    assert json.dumps(saved, sort_keys=True) == json.dumps(json.loads(json.dumps(expected.results)), sort_keys=True)
    assert json.loads(out["--metrics"].read_text()) == expected.key_metrics
    assert out["--curve"].read_text() == expected.curve_csv
    assert not list(tmp_path.rglob(".*.tmp-*"))

    bad = CliRunner().invoke(app, args + ["--params", _params(tmp_path, weights=[0.5, 2.0])])
    assert bad.exit_code != 0 and "steer.weights[1]: must be <= 1, got 2.0" in bad.output
    unknown = CliRunner().invoke(app, args + ["--params", _params(tmp_path, top_k=3)])
    assert unknown.exit_code != 0 and "steer: unknown key 'top_k'" in unknown.output


def test_stage_refuses_heads_without_router_in_one_line(tmp_path):
    for variant in ("single", "hyre"):
        run = subprocess.run([sys.executable, "-m", "stages.steer", "attributes", variant, "--params",
                              str(tmp_path / "absent.yaml")], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 1 and run.stdout == ""
        assert run.stderr.count("\n") == 1 and "no router" in run.stderr and "vanilla, micro, sparse" in run.stderr
