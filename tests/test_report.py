"""The report: each paper table on hand-made dicts, and build_report on a small fake data dir."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from scipy import stats

from pipeline import report as R


def rows(markdown: str) -> dict[str, list[str]]:
    """A markdown table's body rows by first cell (the header under "header")."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    out = {"header": split[0]}
    out.update({r[0]: r[1:] for r in split[2:]})
    return out


def row_order(markdown: str) -> list[str]:
    return [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("|")][2:]


# ---------------------------------------------------------------------------- formatting

def test_number_formats_follow_the_paper_and_absent_values_are_a_dash():
    assert R.pct(0.6962) == "69.62"
    assert R.pct(-0.0706, signed=True) == "-7.06" and R.pct(0.4327, signed=True) == "+43.27"
    assert R.num(0.2) == "0.200" and R.num(1.0, 2) == "1.00"
    assert R.num(-0.0004, 2) == "0.00" and R.pct(-0.00001) == "0.00" and R.pct(-0.00001, signed=True) == "0.00"
    for absent in (None, math.nan):
        assert R.pct(absent) == "-" and R.num(absent) == "-"
    assert R.ordered(["sparse", "zeta", "single", "micro", "alpha"]) == ["single", "micro", "sparse", "alpha", "zeta"]
    assert sorted(["user_10", "user_2", "user_1"], key=R.natural_key) == ["user_1", "user_2", "user_10"]


def test_cells_with_a_pipe_do_not_break_the_table():
    table = R.markdown_table(["a", "b"], [["x | y", "1"]])
    assert rows(table)["x \\| y"] == ["1"]


# ---------------------------------------------------------------------------- Table 1, 9, 10

SPARSE = {
    "accuracy": 0.6962, "routing_entropy": 0.2, "global_entropy": 0.986, "expert_correlation": 0.011,
    "category_coverage": 1.0, "expert_purity": 0.856, "expert_specialization": 0.0577, "num_pairs": 1497,
    "num_experts": 2,
    "experts": {"accuracy": [0.6286, 0.6086], "mean_routing_weight": [0.2123, 0.1678], "category": ["Academic", None]},
    "per_category": {
        "Cooking": {"num_pairs": 256, "accuracy": 0.6641, "routing_entropy": 0.156, "global_entropy": 0.568,
                    "expert_correlation": -0.006, "expert_accuracy": [0.6133, 0.6172],
                    "expert_routing_weight": [0.0718, 0.2117]},
        "Academic": {"num_pairs": 617, "accuracy": 0.7050, "routing_entropy": 0.252, "global_entropy": 0.883,
                     "expert_correlation": 0.079, "expert_accuracy": [0.6580, 0.6759],
                     "expert_routing_weight": [0.3556, 0.2593]},
    },
}
SINGLE = {"accuracy": 0.7052, "routing_entropy": 0.0, "global_entropy": 0.0, "expert_correlation": math.nan,
          "per_category": {"Academic": {"accuracy": 0.7756}}}


def test_table1_rows_in_paper_order_with_dashes_for_the_single_head_and_absent_keys():
    vanilla = {"accuracy": 0.7185, "routing_entropy": 0.998, "expert_correlation": 0.523, "category_coverage": 0.5,
               "expert_specialization": -0.0051}  # no expert_purity
    t = rows(R.table1({"sparse": SPARSE, "vanilla": vanilla, "single": SINGLE}))
    assert list(t)[1:] == ["Single Reward", "Vanilla MoE", "Sparse MoE"]
    # the single head's routing entropy (0.0) is in its file but means nothing: "-" like the paper
    assert t["Single Reward"] == ["70.52", "-", "-", "-", "-", "-"]
    assert t["Vanilla MoE"] == ["71.85", "0.998", "0.523", "0.50", "-", "-0.51"]
    assert t["Sparse MoE"] == ["69.62", "0.200", "0.011", "1.00", "85.60", "5.77"]


def test_table9_sorts_categories_by_size_and_compares_with_the_single_head():
    table = R.table9(SPARSE, SINGLE)
    assert row_order(table) == ["Academic", "Cooking", "Overall"]
    t = rows(table)
    assert t["Academic"] == ["617", "70.50 (-7.06)", "0.252", "0.883", "0.079"]
    assert t["Cooking"][1] == "66.41"  # no single-head accuracy for Cooking: no change shown
    assert t["Overall"] == ["1497", "69.62 (-0.90)", "0.200", "0.986", "0.011"]
    assert rows(R.table9(SPARSE))["Overall"][1] == "69.62"  # without a single head at all


def test_table10_cells_are_expert_accuracy_over_routing_weight():
    t = rows(R.table10(SPARSE))
    assert t["header"] == ["Category", "Expert 0 (Academic)", "Expert 1"]
    assert t["Academic"] == ["65.80 / 35.56", "67.59 / 25.93"]
    assert t["Cooking"] == ["61.33 / 7.18", "61.72 / 21.17"]
    assert t["Overall"] == ["62.86 / 21.23", "60.86 / 16.78"]


# ---------------------------------------------------------------------------- Table 4, 11

def test_table4_adds_the_random_baseline_from_the_sparse_router():
    metrics = {"sparse": {"accuracy": 0.8378, "description_fidelity": 0.381, "description_fidelity_random": 0.012,
                          "expert_specialization": 0.1513},
               "micro": {"accuracy": 0.8468, "description_fidelity": 0.15, "expert_specialization": 0.0004},
               "single": {"accuracy": 0.8352, "routing_entropy": 0.0}}
    table = R.table4(metrics)
    assert row_order(table) == ["Single Reward", "MiCRo", "Random", "Sparse MoE"]
    t = rows(table)
    assert t["Single Reward"] == ["83.52", "-", "-"]
    assert t["Random"] == ["-", "0.01", "-"]
    assert t["Sparse MoE"] == ["83.78", "0.38", "15.13"]
    assert t["MiCRo"] == ["84.68", "0.15", "0.04"]
    assert "Random" not in rows(R.table4({"micro": metrics["micro"]}))  # no sparse: no random baseline


def test_table11_lists_experts_by_id():
    experts = {"experts": [{"id": 1, "description": "asks a | question", "fidelity": 0.262, "specialization": 0.2248},
                           {"id": 0, "description": "asks for advice", "fidelity": 0.43, "specialization": 0.2208}]}
    table = R.table11(experts)
    assert row_order(table) == ["0", "1"]
    t = rows(table)
    assert t["0"] == ["asks for advice", "0.43", "22.08"]
    assert t["1"] == ["asks a \\| question", "0.26", "22.48"]
    assert "Category" not in t["header"]
    with_category = R.table11({"experts": [{"id": 0, "category": "Cooking", "description": "d", "fidelity": 0.5,
                                            "specialization": None}]})
    assert rows(with_category)["0"] == ["Cooking", "d", "0.50", "-"]


# ---------------------------------------------------------------------------- Figures 2, 7

STEERING = {
    "sparse": {"flip_rate": 0.5455, "flip_rate_by_weight": {"0.25": 0.32, "0.5": 0.52, "1.0": 0.71},
               "undesired_flip_rate": 0.20, "undesired_flip_rate_by_weight": {"0.25": 0.11, "0.5": 0.2, "1.0": 0.26}},
    "vanilla": {"flip_rate": 0.4213, "flip_rate_by_weight": {"0.25": 0.19, "0.5": 0.39, "1.0": 0.6},
                "undesired_flip_rate": 0.033, "undesired_flip_rate_by_weight": {"0.25": 0.01, "0.5": 0.02},
                "t_test_vs_sparse": {"t": 1.6, "p_value": 0.01431, "mean_difference": 0.12}},
    "random": {"flip_rate": 0.33, "flip_rate_by_weight": {}, "t_test_vs_sparse": {"t": math.nan, "p_value": math.nan}},
    "settings": {"steer_weights": [0.25, 0.5, 1.0], "reference": "sparse"},
}


def test_figure2_table_has_the_average_the_curve_and_the_t_test():
    table = R.figure2_table(STEERING)
    assert row_order(table) == ["Vanilla MoE", "Random", "Sparse MoE"]
    t = rows(table)
    assert t["header"] == ["Method", "Average (↑)", "w = 0.25", "w = 0.5", "w = 1.0", "t vs Sparse MoE", "p-value"]
    assert t["Vanilla MoE"] == ["42.13", "19.00", "39.00", "60.00", "1.60", "0.0143"]
    assert t["Sparse MoE"][-2:] == ["-", "-"]
    assert t["Random"] == ["33.00", "-", "-", "-", "-", "-"]


def test_figure7_table_is_the_undesired_flip_rate_without_t_test():
    t = rows(R.figure7_table(STEERING))
    assert t["header"] == ["Method", "Average (↓)", "w = 0.25", "w = 0.5", "w = 1.0"]
    assert t["Vanilla MoE"] == ["3.30", "1.00", "2.00", "-"]
    assert t["Sparse MoE"] == ["20.00", "11.00", "20.00", "26.00"]


# per-attribute flip rates (Eq. 15 averaged over w) of the models in the per-variant steer files
PER_ATTRIBUTE = {"sparse": [0.9, 0.8, 0.7, 0.95], "vanilla": [0.5, 0.6, 0.65, 0.5], "random": [0.3, 0.35, 0.2, 0.4]}


def steer_file(variant: str, *models: str) -> dict:
    """What `steer <exp> <variant>` writes: the variant (and for sparse, the random baseline)."""
    out = {m: {**{k: v for k, v in STEERING[m].items() if not k.startswith("t_test")},
               "per_attribute": {a: {"flip_rate": v} for a, v in zip("abcd", PER_ATTRIBUTE[m])}}
           for m in (variant, *models)}
    out["settings"] = {"label": "attribute", "top_n": 100, "weights": [0.25, 0.5, 1.0], "random_repeats": 20,
                       "seed": 0, "reference": "sparse", "variant": variant}
    return out


def test_steering_from_the_variant_files_gets_paired_t_tests_against_sparse():
    merged, mismatched = R.merge_variants({"vanilla": steer_file("vanilla"), "sparse": steer_file("sparse", "random")})
    assert not mismatched and set(merged) == {"vanilla", "sparse", "random", "settings"}
    assert "variant" not in merged["settings"] and merged["settings"]["reference"] == "sparse"
    steering = R.with_t_tests(merged)
    assert "t_test_vs_sparse" not in merged["vanilla"]  # the input is left as it was
    for other in ("vanilla", "random"):
        expected = stats.ttest_rel(PER_ATTRIBUTE["sparse"], PER_ATTRIBUTE[other])
        test = steering[other]["t_test_vs_sparse"]
        assert math.isclose(test["t"], expected.statistic) and math.isclose(test["p_value"], expected.pvalue)
        assert test["num_attributes"] == 4
    assert "t_test_vs_sparse" not in steering["sparse"]
    assert R.t_tests(steering) == {"reference": "sparse", "t_tests": {m: steering[m]["t_test_vs_sparse"]
                                                                       for m in ("vanilla", "random")}}
    t = rows(R.figure2_table(steering))
    expected = stats.ttest_rel(PER_ATTRIBUTE["sparse"], PER_ATTRIBUTE["vanilla"])
    assert t["Vanilla MoE"][-2:] == [f"{expected.statistic:.2f}", f"{expected.pvalue:.3g}"]
    # without sparse there is nothing to test against
    alone = R.with_t_tests(R.merge_variants({"vanilla": steer_file("vanilla")})[0])
    assert "t_test_vs_sparse" not in alone["vanilla"] and R.t_tests(alone)["t_tests"] == {}


def test_merge_variants_flags_files_made_with_different_settings():
    other = steer_file("vanilla")
    other["settings"]["top_n"] = 50
    assert R.merge_variants({"vanilla": other, "sparse": steer_file("sparse")})[1]
    assert not R.merge_variants({"vanilla": steer_file("vanilla"), "micro": {**steer_file("vanilla"),
                                 "settings": {**steer_file("vanilla")["settings"], "variant": "micro"}}})[1]


# ---------------------------------------------------------------------------- Tables 5, 6, 12, 13, Figure 8

def _group(before: float, after: float, **extra) -> dict:
    return {"accuracy_before": before, "accuracy": after, "gain": after - before, **extra}


PERSONALIZATION = {
    "single": {"method": "none", "accuracy": 0.4896, "accuracy_std": 0.0, "gain": 0.0, "gain_std": 0.0,
               "accuracy_before": 0.4896, "by_n": {"5": {"accuracy": 0.4896, "gain": 0.0}},
               "by_group": {"user_10": _group(0.3173, 0.3173), "user_2": _group(0.6, 0.6)}},
    "sparse": {"method": "hedge", "accuracy": 0.6482, "accuracy_std": 0.011, "gain": 0.1721, "gain_std": 0.02,
               "accuracy_before": 0.4761,
               "by_n": {"5": {"accuracy": 0.60, "gain": 0.13}, "50": {"accuracy": 0.6482, "gain": 0.1721}},
               "by_group": {
                   "user_10": _group(0.3077, 0.7404, most_upweighted_expert=1, routing_weight_shift=[-0.2, 0.35],
                                     most_upweighted_description="asks for a summary"),
                   "user_2": _group(0.5, 0.55, most_upweighted_expert=0, routing_weight_shift=[0.1, -0.1],
                                    most_upweighted_description=None)}},
    "settings": {"sizes": [5, 50], "seeds": [0, 1, 2], "group_by": "user"},
}


def test_table5_overall_with_stds_and_no_change_for_the_single_head():
    t = rows(R.table5(PERSONALIZATION))
    assert list(t)[1:] == ["Single Reward", "Sparse MoE"]
    assert t["Single Reward"] == ["48.96", "-", "-"]
    assert t["Sparse MoE"] == ["47.61", "64.82 ± 1.10", "+17.21 ± 2.00"]


def test_table12_rows_are_groups_in_natural_order_then_overall():
    table = R.table12(PERSONALIZATION, "User")
    assert row_order(table) == ["user_2", "user_10", "Overall"]
    t = rows(table)
    assert t["header"] == ["User", "Single Reward", "Sparse MoE"]
    assert t["user_10"] == ["31.73", "74.04 (+43.27)"]
    assert t["Overall"] == ["48.96", "64.82 (+17.21)"]


def test_table13_rows_are_models_and_columns_groups():
    t = rows(R.table13(PERSONALIZATION))
    assert t["header"] == ["Method", "user_2", "user_10", "Overall"]
    assert t["Sparse MoE"] == ["55.00 (+5.00)", "74.04 (+43.27)", "64.82 (+17.21)"]
    assert t["Single Reward"] == ["60.00", "31.73", "48.96"]


def test_table6_names_the_most_upweighted_expert():
    t = rows(R.table6(PERSONALIZATION, "sparse", "User"))
    assert t["user_10"] == ["asks for a summary", "1", "+0.350"]
    assert t["user_2"] == ["-", "0", "+0.100"]  # no description (interpret not run)


def test_figure8_table_follows_the_configured_sizes():
    t = rows(R.figure8_table(PERSONALIZATION))
    assert t["header"] == ["Method", "n = 5", "n = 50"]
    assert t["Sparse MoE"] == ["60.00 (+13.00)", "64.82 (+17.21)"]
    assert t["Single Reward"] == ["48.96", "-"]


# ---------------------------------------------------------------------------- Table 8

GRID = ("lambda_ls,lambda_gb,lambda_div,accuracy,routing_entropy,global_entropy,expert_correlation,"
        "expert_purity,expert_specialization,router\n"
        "0.5,0.5,2.0,0.6962,0.2,0.986,0.011,0.856,0.0577,mlp\n"
        "0.0,0.0,0.0,0.7067,0.991,0.993,0.556,,-0.01,mlp\n"
        "0.5,0.0,1.0,0.7144,0.0,0.0,-0.028,0.468,nan,mlp\n")


def test_table8_sorts_the_grid_and_bolds_the_models_that_did_not_collapse(tmp_path):
    path = tmp_path / "grid.csv"
    path.write_text(GRID)
    grid = R.read_grid_csv(path)
    assert grid[1]["expert_purity"] is None and grid[2]["expert_specialization"] is None
    table = R.table8(grid)
    assert "Router" not in table  # a single router: no column
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    assert [line.split("|")[1:4] for line in lines][0] == [" 0.00 ", " 0.00 ", " 0.00 "]
    assert lines[0] == "| 0.00 | 0.00 | 0.00 | 70.67 | 0.991 | 0.993 | 0.556 | - | -1.00 |"   # uniform: not bold
    assert lines[1].startswith("| 0.50 | 0.00 | 1.00 |") and "**" not in lines[1]           # collapsed
    assert lines[2] == ("| **0.50** | **0.50** | **2.00** | **69.62** | **0.200** | **0.986** | **0.011** | "
                        "**85.60** | **5.77** |")
    two_routers = grid + [{**grid[0], "router": "linear"}]
    assert rows(R.table8(two_routers))["header"][0] == "Router"


# ---------------------------------------------------------------------------- build_report

def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.imshow([[0, 1], [1, 0]])
    fig.savefig(path)
    plt.close(fig)


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, allow_nan=True))


def personalization_file(variant: str) -> dict:
    """What `personalize <exp> <variant>` writes."""
    return {variant: PERSONALIZATION[variant], "settings": {**PERSONALIZATION["settings"], "variant": variant}}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    data = tmp_path / "data"
    for v in ("single", "vanilla", "sparse"):  # micro and hyre not evaluated
        _write(data / "predictions/categories" / v / "metrics.json",
               {"single": {"accuracy": 0.7052, "routing_entropy": 0.0, "expert_correlation": math.nan}}.get(v, SPARSE))
    _png(data / "plots/eval/categories/sparse/routing_by_category.png")
    _png(data / "plots/eval/categories/sparse/expert_correlation.png")
    # the single head's per-category accuracy comes from its predictions
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"category": ["Academic"] * 4 + ["Cooking"] * 2, "correct": [True, True, True, False, True, False]}),
                   data / "predictions/categories/single/predictions.parquet")
    for v in ("single", "sparse"):
        _write(data / "predictions/attributes" / v / "metrics.json", {"accuracy": 0.8, "description_fidelity_random": 0.02,
                                                                     "expert_specialization": 0.1})
    _write(data / "interpret/attributes/sparse/experts.json",
           {"description_fidelity": 0.4, "description_fidelity_random": 0.02, "describer": "keywords",
            "experts": [{"id": 0, "description": "asks for jokes", "fidelity": 0.5, "specialization": 0.12}]})
    _write(data / "steer/attributes/vanilla.json", steer_file("vanilla"))  # micro not steered
    _write(data / "steer/attributes/sparse.json", steer_file("sparse", "random"))
    for v in ("single", "sparse"):  # the others not personalized
        _write(data / "personalize/users" / v / "personalization.json", personalization_file(v))
    return data


def test_build_report_writes_every_section_with_self_contained_figures(data_dir, tmp_path):
    out = tmp_path / "report"
    path = R.build_report(data_dir, out, interpret_experiment="attributes")
    assert path == out / "REPORT.md"
    text = path.read_text()
    for heading in ("### Table 1:", "### Routing heatmaps", "### Table 9:", "### Table 10:", "### Figure 2:",
                    "### Figure 7:", "### Table 4:", "### Table 11:", "#### Table 13:", "## 5. Ablation"):
        assert heading in text, heading
    # every image link is relative and resolves inside the report folder: the evaluation heatmaps
    # copied, Fig. 2, 7 (steering) and 8 (users) drawn across the variants' results
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert all(not Path(link).is_absolute() for link in links) and all((out / link).is_file() for link in links)
    assert sorted(links) == ["figures/eval-categories-sparse-expert_correlation.png",
                             "figures/eval-categories-sparse-routing_by_category.png",
                             "figures/personalize-users-adaptation_size.png",
                             "figures/steer-attributes-flip_rate.png",
                             "figures/steer-attributes-undesired_flip_rate.png"]
    # description fidelity reached Table 4 from interpret's experts.json (the metrics lack it)
    assert rows(text.split("### Table 4:")[1].split("###")[0])["Sparse MoE"] == ["80.00", "0.40", "10.00"]
    # single's per-category accuracy from its predictions: Academic 3/4, sparse 70.50 -> -4.50
    assert "| Academic | 617 | 70.50 (-4.50) |" in text
    # Fig. 2: every steered model with its paired t-test against sparse, computed here
    figure2 = rows(text.split("### Figure 2:")[1].split("###")[0])
    expected = stats.ttest_rel(PER_ATTRIBUTE["sparse"], PER_ATTRIBUTE["vanilla"])
    assert figure2["Vanilla MoE"] == ["42.13", "19.00", "39.00", "60.00", f"{expected.statistic:.2f}", f"{expected.pvalue:.3g}"]
    assert figure2["Sparse MoE"][:4] == ["54.55", "32.00", "52.00", "71.00"] and "Random" in figure2
    saved = json.loads((out / "steering-attributes.json").read_text())
    assert saved["reference"] == "sparse" and set(saved["t_tests"]) == {"vanilla", "random"}
    assert math.isclose(saved["t_tests"]["vanilla"]["p_value"], expected.pvalue)
    # personalization across the variants' files, also on its own page
    assert rows(text.split("#### Table 13:")[1].split("####")[0])["Sparse MoE"] == \
        ["55.00 (+5.00)", "74.04 (+43.27)", "64.82 (+17.21)"]
    page = (out / "personalization-users.md").read_text()
    assert page.startswith("# Personalization by user (`users`)")
    for heading in ("#### Table 5:", "#### Table 13:", "#### Table 6: most upweighted expert of Sparse MoE",
                    "#### Figure 8:"):
        assert heading in page, heading
    assert "asks for a summary" in page and "Table 6: most upweighted expert of Single" not in page
    assert "](figures/personalize-users-adaptation_size.png)" in page
    # absent optional inputs are named, not fatal
    assert f"`{data_dir / 'predictions/categories/micro/metrics.json'}`" in text
    assert f"`{data_dir / 'plots/eval/attributes/sparse/expert_correlation.png'}`" in text
    assert f"`{data_dir / 'steer/attributes/micro.json'}`" in text
    assert f"`{data_dir / 'personalize/users/micro/personalization.json'}`" in text
    for v in R.VARIANTS:
        assert f"`{data_dir / f'personalize/attributes/{v}/personalization.json'}`" in text
    assert f"`{data_dir / 'personalize/attributes/sparse/personalization.json'}`" in \
        (out / "personalization-attributes.md").read_text()
    assert "Table 8 is not included" in text and "smoe grid" in text and "### Table 8" not in text
    assert "different settings" not in text


def test_build_report_notes_variants_run_with_different_settings(data_dir, tmp_path):
    stale = personalization_file("single")
    stale["settings"]["sizes"] = [5, 10]
    _write(data_dir / "personalize/users/single/personalization.json", stale)
    text = R.build_report(data_dir, tmp_path / "report").read_text()
    assert "the `personalize` results of `users` were made with different settings" in text
    assert "`steer` results" not in text


def test_build_report_includes_table8_once_a_grid_exists(data_dir, tmp_path):
    (data_dir / "grid").mkdir()
    (data_dir / "grid/grid.csv").write_text(GRID)
    text = R.build_report(data_dir, tmp_path / "report", interpret_experiment="attributes").read_text()
    assert "### Table 8" in text and "| **0.50** | **0.50** | **2.00** |" in text
    assert "Table 8 is not included" not in text


def test_build_report_refuses_without_the_category_metrics(tmp_path):
    with pytest.raises(R.ReportError, match="predictions/categories"):
        R.build_report(tmp_path / "data", tmp_path / "report")
    assert not (tmp_path / "report").exists()  # nothing half-written
    assert issubclass(R.ReportError, FileNotFoundError)  # the CLI reports it in one line


def test_stage_cli_writes_the_report(data_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from stages import report as stage

    app = typer.Typer()
    app.command()(stage.main)
    assert "--categories" in CliRunner().invoke(app, ["--help"]).output
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_text("from an earlier report")
    (out / "REPORT.md").write_text("old report")
    (out / "notes.txt").write_text("not the report's")
    result = CliRunner().invoke(app, ["--data", str(data_dir), "--out", str(out), "--users", "nope"])
    assert result.exit_code == 0, result.output
    text = (out / "REPORT.md").read_text()
    assert f"`{data_dir / 'personalize/nope/sparse/personalization.json'}`" in text
    assert (out / "notes.txt").read_text() == "not the report's"  # only the report's own entries are replaced
    assert not (out / "figures" / "stale.png").exists() and (out / "figures" / "steer-attributes-flip_rate.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["REPORT.md", "figures", "notes.txt", "personalization-attributes.md",
                                                     "personalization-nope.md", "steering-attributes.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "r"]  # no staging folder left behind
    # a failed run leaves the previous report as it was
    failed = CliRunner().invoke(app, ["--data", str(tmp_path / "nothing"), "--out", str(out)])
    assert isinstance(failed.exception, R.ReportError)
    assert (out / "REPORT.md").read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["data", "r"]
