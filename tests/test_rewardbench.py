"""RewardBench-style evaluation (issue 17, section 3).

tests/fixtures/rewardbench-synthetic.jsonl is SYNTHETIC (made for these tests, not
RewardBench data): 23 pairs over 8 RewardBench subsets (two per section) and one subset
outside the sections. The chosen response contains "GOOD" except in rows whose pair was
flipped, so a keyword scorer's accuracy per subset is known by construction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.rewardbench import (EXAMPLE_COUNTS, SUBSET_MAPPING, RewardBenchFileError, calculate_scores_per_section,
                                  evaluate, read_pairs)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "rewardbench-synthetic.jsonl"
# keyword scorer's accuracy per subset, from the fixture's flipped rows
EXPECTED = {"alpacaeval-easy": 3 / 3, "mt-bench-med": 1 / 2, "mt-bench-hard": 1 / 2, "llmbar-natural": 1 / 3,
            "refusals-dangerous": 2 / 2, "xstest-should-respond": 3 / 4, "math-prm": 1 / 2, "hep-python": 2 / 3,
            "anthropic_helpful": 1 / 2}


def keyword_scorer(prompts, responses):
    return [1.0 if "GOOD" in r else 0.0 for r in responses]


def test_section_weights_are_rewardbench_published_counts():
    # a few of the maintainers' numbers, and their arithmetic: math-prm weighs 984 (up-weighted
    # to equal the six code subsets' 6 x 164), so Reasoning = (984 a + 164 b) / 1148
    assert EXAMPLE_COUNTS["math-prm"] == 984 == 6 * EXAMPLE_COUNTS["hep-cpp"]
    assert sorted(SUBSET_MAPPING) == ["Chat", "Chat Hard", "Reasoning", "Safety"]
    assert sum(len(v) for v in SUBSET_MAPPING.values()) == len(EXAMPLE_COUNTS) == 23
    scores = calculate_scores_per_section(EXAMPLE_COUNTS, SUBSET_MAPPING, {"math-prm": 0.5, "hep-python": 1.0})
    assert scores["Reasoning"] == pytest.approx((984 * 0.5 + 164 * 1.0) / (984 + 164))
    assert scores["Chat"] == 0  # RewardBench's own function reports 0 for an absent section


def test_keyword_scorer_on_the_fixture_gives_the_hand_computed_scores():
    rows = read_pairs(FIXTURE)
    assert len(rows) == 23 and isinstance(rows[3]["prompt"], list)  # a message-list prompt survives the mixed column
    result = evaluate(rows, keyword_scorer)
    assert {s: e["accuracy"] for s, e in result["subsets"].items()} == pytest.approx(EXPECTED)
    assert result["accuracy"] == pytest.approx(15 / 23)
    e = EXPECTED
    hand = {"Chat": (100 * e["alpacaeval-easy"] + 40 * e["mt-bench-med"]) / 140,
            "Chat Hard": (37 * e["mt-bench-hard"] + 100 * e["llmbar-natural"]) / 137,
            "Safety": (100 * e["refusals-dangerous"] + 250 * e["xstest-should-respond"]) / 350,
            "Reasoning": (984 * e["math-prm"] + 164 * e["hep-python"]) / 1148}
    assert result["sections"] == pytest.approx(hand)
    assert result["score"] == pytest.approx(sum(hand.values()) / 4)
    assert result["other_subsets"] == ["anthropic_helpful"]  # counted in accuracy, in no section
    # ties count as wrong, as in RewardBench's run_rm.py (chosen > rejected)
    assert evaluate(rows, lambda p, r: [0.0] * len(r))["accuracy"] == 0


def test_absent_sections_are_null_and_no_overall_score(tmp_path):
    rows = [r for r in read_pairs(FIXTURE) if r["subset"] in ("math-prm", "hep-python")]
    result = evaluate(rows, keyword_scorer)
    assert result["sections"]["Chat"] is None and result["score"] is None
    assert result["sections"]["Reasoning"] == pytest.approx((984 * 0.5 + 164 * 2 / 3) / 1148)


def test_parquet_and_json_files_read_the_same(tmp_path):
    rows = read_pairs(FIXTURE)
    plain = [dict(r) for r in rows if isinstance(r["prompt"], str)]
    pq.write_table(pa.Table.from_pylist(plain), tmp_path / "rb.parquet")
    (tmp_path / "rb.json").write_text(json.dumps(plain))
    assert read_pairs(tmp_path / "rb.parquet") == plain == read_pairs(tmp_path / "rb.json")


@pytest.mark.parametrize("content,suffix,message", [
    ('{"prompt": "p", "chosen": "a", "subset": "s"}\n', ".jsonl", r"missing column\(s\) \['rejected'\]"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "s"}\n'
     '{"prompt": "p", "chosen": null, "rejected": "b", "subset": "s"}\n', ".jsonl", "row 2: field 'chosen'"),
    ('{"prompt": "", "chosen": "a", "rejected": "b", "subset": "s"}\n', ".jsonl", "row 1: field 'prompt'"),
    ('prompt,chosen', ".txt", "unknown file type"),
])
def test_bad_files_are_one_line_errors_naming_file_row_and_field(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(RewardBenchFileError, match=message) as err:
        read_pairs(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- command and stage


@pytest.fixture(scope="module")
def workspace(tiny_llama, tmp_path_factory):
    """A project-like folder: params.yaml, data/backbone (the tiny Llama), one trained-like
    MoE head in data/models/tiny/sparse and its two exports."""
    from pipeline import backbone as bb
    from pipeline.export import export
    from pipeline.models import HeadConfig, RewardHead
    from pipeline.reward_model import RewardModel

    root = tmp_path_factory.mktemp("rb-project")
    shutil.copytree(tiny_llama, root / "data" / "backbone")
    # provenance as `smoe backbone` writes it: the head's backbone identity, whatever the path
    (root / "data" / "backbone" / bb.PROVENANCE_FILE).write_text(json.dumps({"source": "tiny-llama", "revision": "0"}))
    (root / "params.yaml").write_text(yaml.safe_dump({
        "backbone": {"system_prompt": "Be brief.", "max_length": 256},
        "rewardbench": {"files": {"mini": str(FIXTURE)}, "models": ["tiny/sparse"], "batch_size": 16}}))
    backbone = bb.load(bb.BackboneConfig(model=str(root / "data" / "backbone"), system_prompt="Be brief.",
                                         max_length=256))
    gen = torch.Generator().manual_seed(0)
    head = RewardHead(HeadConfig(kind="moe", hidden_size=backbone.hidden_size, num_experts=3, router_hidden=8,
                                 backbone=backbone.identity["backbone"], template_hash=backbone.template_hash))
    head.set_input_stats(torch.randn(backbone.hidden_size, generator=gen), 1 + torch.rand(backbone.hidden_size, generator=gen),
                         torch.randn(backbone.hidden_size, generator=gen), 1 + torch.rand(backbone.hidden_size, generator=gen))
    with torch.no_grad():
        for p in (*head.experts.parameters(), *head.router.parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    head.eval().save(root / "data" / "models" / "tiny" / "sparse")
    rm = RewardModel(backbone, head)
    export(rm, root / "export-moe", check=False)
    export(rm, root / "export-linear", routing_weights=[0.2, 0.3, 0.5], check=False)
    return root, rm


def run_cli(args, cwd, monkeypatch):
    from typer.testing import CliRunner

    from stages.cli import app

    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, args)
    return result


def test_command_scores_a_smoe_head_and_its_exports_alike(workspace, monkeypatch):
    root, rm = workspace
    out = root / "results.json"
    result = run_cli(["rewardbench", str(FIXTURE), "-m", "data/models/tiny/sparse", "-m", "export-moe",
                      "--trust-remote-code", "--out", str(out)], root, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "| Chat Hard |" in result.output and "| mt-bench-med |" in result.output
    report = json.loads(out.read_text())
    assert report["num_pairs"] == 23 and len(report["sha256"]) == 64
    head, moe = report["models"]["data/models/tiny/sparse"], report["models"]["export-moe"]
    # the head's own accuracy, computed directly with RewardModel.score
    rows = read_pairs(FIXTURE)
    prompts = [r["prompt"] for r in rows]
    chosen = rm.score(prompts, [r["chosen"] for r in rows]).reward
    rejected = rm.score(prompts, [r["rejected"] for r in rows]).reward
    assert head["accuracy"] == pytest.approx(float((chosen > rejected).double().mean()))
    assert head["mean_margin"] == pytest.approx(float((chosen - rejected).mean()), abs=1e-4)
    # the MoE export (remote code) gives the same result as the head
    assert moe["subsets"] == head["subsets"] and moe["sections"] == pytest.approx(head["sections"])
    # the linear export of fixed routing: same as the head scored with those weights (the
    # constant offset cancels in every chosen-vs-rejected comparison)
    result = run_cli(["rewardbench", str(FIXTURE), "-m", "export-linear", "--out", str(out)], root, monkeypatch)
    assert result.exit_code == 0, result.output
    linear = json.loads(out.read_text())["models"]["export-linear"]
    pi = [0.2, 0.3, 0.5]
    fixed = (rm.score(prompts, [r["chosen"] for r in rows], routing_weights=pi).reward
             > rm.score(prompts, [r["rejected"] for r in rows], routing_weights=pi).reward)
    assert linear["accuracy"] == pytest.approx(float(fixed.double().mean()))


def test_remote_code_export_needs_the_flag(workspace, monkeypatch):
    root, _ = workspace
    result = run_cli(["rewardbench", str(FIXTURE), "-m", "export-moe"], root, monkeypatch)
    assert result.exit_code != 0 and "--trust-remote-code" in str(result.exception)


def test_dvc_stage_command_reads_file_and_models_from_params(workspace, monkeypatch):
    root, _ = workspace
    result = run_cli(["rewardbench", "--from-params", "mini"], root, monkeypatch)
    assert result.exit_code == 0, result.output
    report = json.loads((root / "data" / "metrics" / "rewardbench" / "mini.json").read_text())
    assert list(report["models"]) == ["data/models/tiny/sparse"] and report["file"] == str(FIXTURE)
    bad = run_cli(["rewardbench", "--from-params", "nope"], root, monkeypatch)
    assert bad.exit_code != 0 and "rewardbench.files has no 'nope'" in bad.output


def test_default_graph_has_no_rewardbench_stage_and_a_configured_file_adds_one(tmp_path):
    from dvc.repo import Repo

    from tests.test_dvc_graph import ENTRY, import_closure

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["rewardbench"]["files"] == {}  # a fresh clone's `dvc repro` needs no RewardBench file
    with Repo(str(ROOT)) as repo:
        assert not [s for s in repo.index.stages if s.name.startswith("rewardbench")]
    # the same dvc.yaml with one file configured, in a scratch DVC project
    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params["rewardbench"]["files"] = {"rb": "data/rb.jsonl"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with Repo(str(tmp_path)) as repo:
        stages = {s.name: s for s in repo.index.stages if s.name.startswith("rewardbench")}
        assert list(stages) == ["rewardbench@rb"]
        stage = stages["rewardbench@rb"]
        assert stage.cmd == "python -m stages.rewardbench --from-params rb"
        deps = {d.def_path for d in stage.deps}
        assert {"data/rb.jsonl", "data/backbone", "data/models"} <= deps
        assert {d for d in deps if d.endswith(".py")} == import_closure(ENTRY.match(stage.cmd).group(1))
        assert [m.def_path for m in stage.metrics] == ["data/metrics/rewardbench/rb.json"]


def test_a_damaged_export_is_refused_naming_the_file(workspace, monkeypatch, tmp_path):
    from pipeline.integrity import ArtifactError

    root, _ = workspace
    damaged = tmp_path / "export-linear"
    shutil.copytree(root / "export-linear", damaged)
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run_cli(["rewardbench", str(FIXTURE), "-m", str(damaged)], root, monkeypatch)
    assert isinstance(result.exception, ArtifactError), result.output
    assert str(weights) in str(result.exception) and "checksum mismatch" in str(result.exception)
