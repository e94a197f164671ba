"""Test-time personalization: Hedge (MiCRo Alg. 1), HyRe reweighting, the personalization experiment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from pipeline.adaptation import AdaptConfig, adapt, hedge_log_targets, hyre_log_weights
from pipeline.cache import FeatureCache
from pipeline.split_store import SplitStores, build_stores
from pipeline.models import HeadConfig, RewardHead
from pipeline.personalize import (PersonalizeConfig, PersonalizeError, curve_csv, headline, load_groups,
                                  personalize_head, personalize_variant, split_groups)
from pipeline.train import TrainConfig, train_experiment
from stages import personalize as stage
from tooling.synthetic_cache import write_synthetic_cache

# ----------------------------------------------------------------------------- Hedge targets


def naive_hedge(log_weights: np.ndarray, margins: np.ndarray, tau: float) -> np.ndarray:
    """omega_ik = f_k exp(-L_ik / tau) / sum_j f_j exp(-L_ij / tau), straight from the anchors."""
    f = np.exp(log_weights)
    loss = -np.log(1.0 / (1.0 + np.exp(-margins)))
    unnorm = f * np.exp(-loss / tau)
    return unnorm / unnorm.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_hedge_targets_match_the_formula_where_it_is_computable(tau):
    g = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(32, 5, generator=g, dtype=torch.float64), -1)
    margins = torch.randn(32, 5, generator=g, dtype=torch.float64) * 2
    got = hedge_log_targets(log_w, margins, tau).exp().numpy()
    np.testing.assert_allclose(got, naive_hedge(log_w.numpy(), margins.numpy(), tau), rtol=1e-10)


@pytest.mark.parametrize("tau", [1e-3, 1e-4, 1e-6])
def test_hedge_targets_tend_to_the_one_hot_of_the_best_expert(tau):
    g = torch.Generator().manual_seed(1)
    log_w = torch.log_softmax(torch.randn(64, 6, generator=g), -1)
    margins = torch.randn(64, 6, generator=g)  # distinct margins: one best expert per pair
    targets = hedge_log_targets(log_w, margins, tau).exp()
    one_hot = torch.nn.functional.one_hot(margins.argmax(-1), 6).float()
    gap = (margins.sort(-1).values[:, -1] - margins.sort(-1).values[:, -2]).min()
    assert gap > 1e-3  # the test data has a unique best expert everywhere
    # the naive formula is 0/0 here: exp(-L/tau) underflows for every expert
    with np.errstate(all="ignore"):
        assert np.isnan(naive_hedge(log_w.double().numpy(), margins.double().numpy(), 1e-6)).any()
    if tau <= 1e-4:
        torch.testing.assert_close(targets, one_hot, atol=1e-4, rtol=0)
    assert (targets.argmax(-1) == margins.argmax(-1)).all()


def test_hedge_targets_are_finite_at_tiny_tau_with_extreme_losses():
    log_w = torch.log_softmax(torch.tensor([[0.0, 80.0, -80.0], [1000.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), -1)
    margins = torch.tensor([[-1e4, 1e4, 0.0], [-1e30, -1e30, -1e29], [1e4, 1e4, -1e4]])
    targets = hedge_log_targets(log_w, margins, 1e-4)
    assert torch.isfinite(targets).all()
    torch.testing.assert_close(targets.exp().sum(-1), torch.ones(3))
    assert targets.exp()[0].argmax() == 1 and targets.exp()[1].argmax() == 2
    # a tie in loss keeps the router's prior between the tied experts
    torch.testing.assert_close(targets.exp()[2], torch.tensor([0.5, 0.5, 0.0]))


# ----------------------------------------------------------------------------- HyRe


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 10.0])
def test_hyre_weights_match_the_formula(reduction, temperature):
    g = torch.Generator().manual_seed(2)
    margins = torch.randn(40, 7, generator=g, dtype=torch.float64)
    nll = np.log1p(np.exp(-margins.numpy()))  # -log sigma(m)
    loss = nll.sum(0) if reduction == "sum" else nll.mean(0)
    expected = np.exp(-loss / temperature) / np.exp(-loss / temperature).sum()
    got = hyre_log_weights(margins, temperature, reduction).exp().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_hyre_sum_is_sharper_than_mean_and_extremes_stay_finite():
    margins = torch.tensor([[1.0, 0.0]] * 50)
    assert hyre_log_weights(margins, 1.0, "sum").exp()[0] > hyre_log_weights(margins, 1.0, "mean").exp()[0] > 0.5
    extreme = hyre_log_weights(torch.tensor([[1e6, -1e6]] * 1000), 1e-3, "sum")
    assert torch.isfinite(extreme).all() and extreme.exp()[0] == 1.0
    with pytest.raises(ValueError, match="reduction"):
        hyre_log_weights(margins, 1.0, "max")


# ----------------------------------------------------------------------------- adapt()


def two_expert_world(n: int = 200, hidden: int = 8, seed: int = 0):
    """Expert 1 prefers the response with the larger h[1], expert 0 the smaller; the router
    starts out favouring expert 0; the user's labels follow expert 1."""
    torch.manual_seed(seed)
    head = RewardHead(HeadConfig(kind="moe", hidden_size=hidden, num_experts=2, router="mlp", router_hidden=16))
    with torch.no_grad():
        head.experts.weight.zero_()
        head.experts.weight[0, 1] = -5.0
        head.experts.weight[1, 1] = 5.0
        head.router.net[-1].bias.copy_(torch.tensor([2.0, -2.0]))
    prompt = torch.randn(n, hidden)
    a, b = torch.randn(n, hidden), torch.randn(n, hidden)
    user_prefers_a = (a[:, 1] > b[:, 1]).unsqueeze(1)
    chosen, rejected = torch.where(user_prefers_a, a, b), torch.where(user_prefers_a, b, a)
    return head.eval(), prompt, chosen, rejected


def accuracy(head: RewardHead, prompt, chosen, rejected) -> float:
    with torch.no_grad():
        log_w, margins = head.pair_outputs(prompt, chosen, rejected)
    return float(((log_w.exp() * margins).sum(-1) > 0).float().mean())


def test_hedge_moves_only_the_router_towards_the_users_expert():
    head, prompt, chosen, rejected = two_expert_world()
    before = accuracy(head, prompt[100:], chosen[100:], rejected[100:])
    original = {k: v.clone() for k, v in head.state_dict().items()}
    # 30 epochs: from a router 98 % sure of the wrong expert, the paper's 10 epochs of two
    # batches only get part of the way (0.24 here); the direction is what is tested.
    adapted = adapt(head, prompt[:50], chosen[:50], rejected[:50], AdaptConfig(epochs=30))
    after = accuracy(adapted, prompt[100:], chosen[100:], rejected[100:])
    assert before < 0.05 and after > 0.95, (before, after)
    assert torch.equal(adapted.experts.weight, head.experts.weight)          # experts frozen
    assert not torch.equal(adapted.router.net[-1].bias, original["router.net.2.bias"])  # router moved
    for k, v in head.state_dict().items():                                    # input untouched
        assert torch.equal(v, original[k]), k
    assert adapted.config.extra["adaptation"]["method"] == "hedge"
    assert adapted.config.extra["adaptation"]["num_pairs"] == 50


def test_hedge_is_deterministic_for_a_seed_and_depends_on_it():
    head, prompt, chosen, rejected = two_expert_world(seed=1)
    run = lambda seed: adapt(head, prompt[:40], chosen[:40], rejected[:40], AdaptConfig(seed=seed, batch_size=8, epochs=2))
    assert torch.equal(run(0).router.net[0].weight, run(0).router.net[0].weight)
    assert not torch.equal(run(0).router.net[0].weight, run(1).router.net[0].weight)


def test_hyre_adapt_reweights_the_ensemble_and_single_is_unchanged():
    torch.manual_seed(0)
    hyre = RewardHead(HeadConfig(kind="hyre", hidden_size=8, num_experts=4)).eval()
    x = torch.randn(30, 8)
    chosen, rejected = torch.randn(30, 8), torch.randn(30, 8)
    adapted = adapt(hyre, x, chosen, rejected, AdaptConfig(hyre_temperature=2.0, hyre_reduction="mean"))
    _, margins = hyre.pair_outputs(x, chosen, rejected)
    torch.testing.assert_close(adapted.ensemble_log_weights, hyre_log_weights(margins.detach(), 2.0, "mean"))
    assert torch.equal(adapted.experts.weight, hyre.experts.weight)
    single = RewardHead(HeadConfig(kind="single", hidden_size=8)).eval()
    same = adapt(single, x, chosen, rejected, AdaptConfig())
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), single.state_dict().values()))
    assert same.config.extra["adaptation"]["method"] == "none"


def test_adapt_config_and_inputs_are_checked():
    for bad in ({"tau": 0}, {"hyre_reduction": "max"}, {"epochs": 0}, {"hyre_temperature": -1}):
        with pytest.raises(ValueError):
            AdaptConfig(**bad)
    head, prompt, chosen, rejected = two_expert_world()
    with pytest.raises(ValueError, match="same, non-zero"):
        adapt(head, prompt[:0], chosen[:0], rejected[:0], AdaptConfig())


# ----------------------------------------------------------------------------- experiment


def test_split_groups_is_disjoint_seeded_and_skips_small_groups():
    labels = np.array(["a"] * 20 + ["b"] * 30 + ["c"] * 8)
    config = PersonalizeConfig(sizes=[5, 10], eval_fraction=0.5, min_pairs=10)
    groups, skipped = split_groups(labels, config)
    assert set(groups) == {"a", "b"} and skipped == {"c": "8 test pairs, fewer than min_pairs = 10"}
    for name, (pool, evaluation) in groups.items():
        assert set(pool).isdisjoint(evaluation) and set(labels[np.concatenate([pool, evaluation])]) == {name}
        assert len(pool) + len(evaluation) == (labels == name).sum()
    again, _ = split_groups(labels, config)
    assert all(np.array_equal(groups[g][0], again[g][0]) for g in groups)
    # a skipped group does not move the others' draws
    without_c, _ = split_groups(labels[:50], config)
    assert all(np.array_equal(groups[g][0], without_c[g][0]) for g in groups)
    # too small for the largest n: skipped with the reason, not an error
    groups, skipped = split_groups(labels, PersonalizeConfig(sizes=[5, 11], min_pairs=10))
    assert set(groups) == {"b"} and skipped["a"] == "20 test pairs: 10 for adaptation and 10 for evaluation, but n = 11 is asked"
    # the paper's default filter: more than 50 pairs
    assert set(split_groups(np.array(["x"] * 50 + ["y"] * 51), PersonalizeConfig(sizes=[5, 10]))[0]) == {"y"}
    with pytest.raises(PersonalizeError, match="no test group is large enough"):
        split_groups(labels, PersonalizeConfig(sizes=[5, 10]))


def test_personalize_config_defaults_and_checks():
    config = PersonalizeConfig()
    assert (config.sizes, config.seeds, config.eval_fraction, config.split_seed, config.split) == \
        ([5, 10, 25, 50], [0, 1, 2], 0.5, 0, "test")
    assert PersonalizeConfig(sizes=[50, 5]).sizes == [5, 50]
    for bad, message in (({"sizes": []}, "sizes"), ({"sizes": [0, 5]}, "positive"), ({"sizes": [5, 5]}, "repeat"),
                         ({"sizes": [2.5]}, "integers"), ({"seeds": []}, "seeds"), ({"seeds": [1, 1]}, "repeat"),
                         ({"eval_fraction": 1.0}, "eval_fraction"), ({"split": "dev"}, "split must be one of"),
                         ({"split_seed": "0"}, "split_seed")):
        with pytest.raises(ValueError, match=message):
            PersonalizeConfig(**bad)
    with pytest.raises(ValueError, match="lr must be > 0"):
        AdaptConfig(lr=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("personalize")
    cache = FeatureCache(write_synthetic_cache(tmp / "cache", num_pairs=900, hidden_size=12, num_clusters=3,
                                               split_fractions=(0.6, 0.1, 0.3), seed=5))
    stores = build_stores(cache, tmp / "stores")
    train_experiment(stores, tmp / "models", tmp / "curves", variants=["single", "vanilla", "sparse", "hyre"],
                     num_experts=3, lambdas={"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0},
                     config=TrainConfig(epochs=1, batch_size=32, hyre_heads=4), show_progress=False)
    (tmp / "interpret" / "sparse").mkdir(parents=True)
    (tmp / "interpret" / "sparse" / "experts.json").write_text(
        json.dumps({"experts": [{"id": k, "description": f"topic {k}"} for k in range(3)]}))
    return stores, tmp / "models", tmp / "interpret"


CONFIG = PersonalizeConfig(sizes=[4, 16], seeds=[0, 1], min_pairs=20)  # the synthetic groups are small


def test_personalize_variant_results_heads_key_numbers_and_curve(trained, tmp_path):
    stores, models, interpret = trained
    results, keys = {}, {}
    for name in ("single", "sparse", "hyre"):
        output = personalize_variant(stores, models / name, name, "category", config=CONFIG,
                                     adapt_config=AdaptConfig(epochs=3), adapted_dir=tmp_path / "adapted" / name)
        assert set(output.results) == {name, "settings"}
        assert output.results["settings"]["group_by"] == "category" and output.results["settings"]["variant"] == name
        assert output.results["settings"]["sizes"] == [4, 16] and output.results["settings"]["adaptation"]["epochs"] == 3
        results[name], keys[name] = output.results[name], output.key_metrics
        # the DVC metrics file: flat key numbers; the Fig. 8 curve: one row per n
        assert output.key_metrics == headline(output.results)
        assert output.key_metrics == {k: results[name][k] for k in ("accuracy_before", "accuracy", "gain", "gain_std")}
        lines = output.curve_csv.splitlines()
        assert output.curve_csv == curve_csv(output.results)
        assert lines[0] == "n,accuracy,accuracy_std" and [line.split(",")[0] for line in lines[1:]] == ["4", "16"]
        assert float(lines[2].split(",")[1]) == pytest.approx(results[name]["by_n"]["16"]["accuracy"], abs=1e-6)
        assert float(lines[1].split(",")[2]) == pytest.approx(results[name]["by_n"]["4"]["accuracy_std"], abs=1e-6)
    assert results["single"]["gain"] == 0.0 and results["single"]["method"] == "none"
    assert results["sparse"]["method"] == "hedge" and results["hyre"]["method"] == "hyre"
    assert results["sparse"]["by_n"].keys() == {"4", "16"}
    for name in ("sparse", "hyre"):
        r = results[name]
        groups = r["by_group"]
        assert set(groups) == {"cluster0", "cluster1", "cluster2"}
        # the headline numbers are the largest n, averaged over groups
        assert math.isclose(r["accuracy"], np.mean([g["accuracy"] for g in groups.values()]), abs_tol=1e-9)
        assert math.isclose(r["gain"], r["accuracy"] - r["accuracy_before"], abs_tol=1e-9)
        assert r["accuracy"] == r["by_n"]["16"]["accuracy"]
        for g in groups.values():
            assert abs(sum(g["routing_weight_shift"])) < 1e-6
        assert (tmp_path / "adapted" / name / "cluster0" / "model.safetensors").exists()
    # every head is scored on the same evaluation pairs of each group
    for g in ("cluster0", "cluster1", "cluster2"):
        assert len({(results[m]["by_group"][g]["num_eval_pairs"], results[m]["by_group"][g]["num_pool_pairs"])
                    for m in results}) == 1
    assert results["sparse"]["by_group"]["cluster0"]["most_upweighted_expert"] in range(3)
    # descriptions are joined by the report: personalize never reads interpret's outputs
    assert all("most_upweighted_description" not in g for r in results.values() for g in r["by_group"].values())
    adapted = RewardHead.load(tmp_path / "adapted" / "sparse" / "cluster0")
    assert adapted.config.extra["group"] == "cluster0" and adapted.config.extra["adaptation_pairs"] == 16
    with pytest.raises(PersonalizeError, match="needs a 'user' value"):
        personalize_variant(stores, models / "sparse", "sparse", "user", config=CONFIG, adapt_config=AdaptConfig())


def test_variants_personalized_separately_match_personalized_together(trained, tmp_path):
    """The split and the draws depend only on the data and the seeds: each variant in its own
    run, in any order or subset, gets the numbers the one run over all variants gave."""
    stores, models, _ = trained
    names = ["single", "vanilla", "sparse", "hyre"]
    adapt_config = AdaptConfig(epochs=2)
    # together, as the single personalize run did: one split of the data shared by every head in turn
    x, groups, _ = load_groups(stores, "category", CONFIG)
    together = {name: personalize_head(RewardHead.load(models / name), x, groups, CONFIG, adapt_config) for name in names}
    for order in (names[::-1], ["sparse"], ["hyre", "single"]):
        for name in order:  # a fresh run (stores opened anew, own states) per variant
            output = personalize_variant(SplitStores(stores.path), models / name, name, "category", config=CONFIG,
                                         adapt_config=adapt_config)
            separate = {k: v for k, v in output.results[name].items() if k not in ("method", "skipped_groups")}
            assert separate == together[name], (name, order)
            assert output.results[name]["skipped_groups"] == {}
    # the comparison is informative: adaptation moves the MoE heads and HyRe, not the single head
    assert together["single"]["gain"] == 0.0 and together["sparse"]["by_n"] != together["vanilla"]["by_n"]


def _params(tmp_path, **personalize) -> str:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"experiments": {"syn": {"dataset": "syn", "num_experts": 3}},
                                    "personalize": personalize}))
    return str(path)


def test_stage_splits_the_params_block():
    config, adapt_config = stage.configs({"personalize": {"sizes": [4, 8], "split_seed": 3, "tau": 0.01, "epochs": 2}})
    assert config == PersonalizeConfig(sizes=[4, 8], split_seed=3)
    assert adapt_config == AdaptConfig(tau=0.01, epochs=2)
    assert stage.configs({}) == (PersonalizeConfig(), AdaptConfig())  # the defaults: the dataclasses'
    for block, message in (({"sizez": [4]}, r"unknown key\(s\) \['sizez'\]"),
                           ({"seed": 1}, r"unknown key\(s\) \['seed'\]"),  # each draw's seed, not a setting
                           ({"tau": -1.0}, "personalize: tau must be > 0"),
                           ({"eval_fraction": 2}, "personalize: eval_fraction must be in")):
        with pytest.raises(typer.BadParameter, match=message):
            stage.configs({"personalize": block})


def test_stage_writes_the_variant_folder_metrics_and_curve_or_nothing(trained, tmp_path):
    stores, models, interpret = trained
    app = typer.Typer()
    app.command()(stage.main)
    out = tmp_path / "personalize/syn/sparse"
    paths = {"--out": out, "--metrics": tmp_path / "metrics/syn/personalize-sparse.json",
             "--curve": tmp_path / "plots/personalize/syn/sparse.csv"}
    args = ["syn", "sparse", "--stores", str(stores.path), "--model", str(models / "sparse")]
    args += [x for option, path in paths.items() for x in (option, str(path))]
    params = dict(sizes=[4, 16], seeds=[0, 1], epochs=2, min_pairs=20)

    (out / "stale_group").mkdir(parents=True)  # from an earlier run: gone once the new results are in
    failed = CliRunner().invoke(app, args + ["--group-by", "user", "--params", _params(tmp_path, **params)])
    assert isinstance(failed.exception, PersonalizeError)
    assert (out / "stale_group").is_dir() and not paths["--metrics"].exists() and not paths["--curve"].exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["sparse"]  # no staging folder left behind

    result = CliRunner().invoke(app, args + ["--group-by", "category", "--params", _params(tmp_path, **params)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cluster0", "cluster1", "cluster2", "personalization.json"]
    expected = personalize_variant(stores, models / "sparse", "sparse", "category", config=CONFIG,
                                   adapt_config=AdaptConfig(epochs=2))
    assert json.loads((out / "personalization.json").read_text()) == expected.results
    assert json.loads(paths["--metrics"].read_text()) == expected.key_metrics
    assert paths["--curve"].read_text() == expected.curve_csv
    assert sorted(p.name for p in out.parent.iterdir()) == ["sparse"]
    assert not list(tmp_path.rglob(".*.tmp-*"))
