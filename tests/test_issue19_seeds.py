"""`smoe seeds` over the other stages' key numbers (issue 19: report personalization gain, flip rates
and description fidelity as mean ± std over training seeds, not only evaluate's metrics)."""

from __future__ import annotations

from tooling.seeds import load_seed_runs, seeds_report, summary_table


def _entry(rev: str, seed: int, gain: float, ufr: float, fidelity: float) -> dict:
    params = {"lambda_div": 2.0, "train": {"epochs": 3, "seed": seed}}
    files = {
        "data/metrics/users/sparse.json": {"data": {"accuracy": 0.9}},
        "data/metrics/users/vanilla.json": {"data": {"accuracy": 0.8}},
        "data/metrics/users/personalize-sparse.json": {"data": {"accuracy_before": 0.9, "accuracy": 0.9 + gain,
                                                                "gain": gain, "gain_std": 0.01}},
        "data/metrics/users/interpret-sparse.json": {"data": {"description_fidelity": fidelity,
                                                              "description_fidelity_random": 0.0}},
        "data/metrics/users/steer-sparse.json": {"data": {"flip_rate": 0.5, "undesired_flip_rate": ufr,
                                                          "random_flip_rate": 0.3}},
        "data/metrics/users/personalize-vanilla.json": {"data": {"gain": 0.02}},
        "data/metrics/attributes/personalize-sparse.json": {"data": {"gain": 9.0}},  # another experiment
    }
    return {"rev": rev, "name": None, "data": {"rev": rev, "timestamp": "2026-01-01T00:00:00",
                                              "params": {"params.yaml": {"data": params}}, "metrics": files}}


def _show() -> list:
    head = _entry("a" * 40, 0, 0.01, 0.10, 0.20)
    exps = [_entry("b" * 40, 1, 0.03, 0.20, 0.30), _entry("c" * 40, 2, 0.05, 0.30, 0.40)]
    head["experiments"] = [{"name": f"s{i + 1}", "executor": None, "revs": [e]} for i, e in enumerate(exps)]
    return [head]


def test_stage_metrics_files_join_their_variant_with_prefixed_keys():
    runs, skipped = load_seed_runs(_show(), "users")
    assert [r.seed for r in runs] == [0, 1, 2] and skipped == 0
    sparse = runs[1].metrics["sparse"]
    assert sparse["accuracy"] == 0.9  # evaluate's file, keys unchanged
    assert sparse["personalize_gain"] == 0.03 and sparse["personalize_accuracy_before"] == 0.9
    assert sparse["steer_undesired_flip_rate"] == 0.2 and sparse["steer_random_flip_rate"] == 0.3
    assert sparse["description_fidelity"] == 0.3  # interpret's keys are already the paper's names
    assert runs[1].metrics["vanilla"]["personalize_gain"] == 0.02


def test_summary_reports_gain_flip_rate_and_fidelity_mean_and_std_over_seeds():
    runs, _ = load_seed_runs(_show(), "users")
    table = summary_table(runs, ["sparse", "vanilla"])
    header = table.splitlines()[0]
    for name in ("description_fidelity", "steer_undesired_flip_rate", "personalize_gain"):
        assert name in header
    row = next(line for line in table.splitlines() if line.startswith("| sparse |"))
    # gain 0.01, 0.03, 0.05: mean 0.030, sample std 0.020; fidelity 0.2, 0.3, 0.4: 0.300 ± 0.100
    assert "0.030 ± 0.020" in row and "0.300 ± 0.100" in row and "0.200 ± 0.100" in row
    assert "personalize_gain" in seeds_report(runs, "users")
