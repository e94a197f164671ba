"""`smoe adapt` and pipeline/user_prefs.py: reading a user's pairs, adapting, reporting, the GRPO reward."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.backbone import BackboneConfig, load
from pipeline.cache import FeatureCache
from pipeline.split_store import build_stores
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.models import HeadConfig, RewardHead
from pipeline.user_prefs import (PreferenceFileError, adapt_model, read_preference_file, report_markdown,
                               reward_function)
from pipeline.reward_model import RewardModel
from pipeline.train import TrainConfig, train_experiment
from tests.test_featurize import write_prepared

ROOT = Path(__file__).resolve().parents[1]
FAST = TrainConfig(epochs=3, batch_size=16, block_pairs=256, router_hidden=32)
LAMBDAS = {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory) -> Path:
    """A 3-expert sparse head trained on a tiny cache of the tiny backbone, laid out as
    <root>/data/models/tiny/sparse, with descriptions in <root>/data/interpret/tiny/sparse."""
    root = tmp_path_factory.mktemp("adapt")
    rows = [{"prompt": f"Question {p}: how do I handle case {p}?", "chosen": f"Careful answer {p}.{k}, step by step.",
             "rejected": f"Lazy answer {p}.{k}" + "!" * k, "split": ("train", "validation", "test")[p % 3]}
            for p in range(12) for k in range(2)]
    prepared = write_prepared(root / "prep", rows)
    featurize(prepared, root / "cache", load(BackboneConfig(model=str(tiny_llama))), FeaturizeConfig(dtype="float32"),
              dataset="tiny", show_progress=False)
    models = root / "data" / "models" / "tiny"
    train_experiment(build_stores(FeatureCache(root / "cache"), root / "stores"), models, root / "curves",
                     variants=["sparse"], num_experts=3, lambdas=LAMBDAS, config=FAST, show_progress=False)
    interpret = root / "data" / "interpret" / "tiny" / "sparse"
    interpret.mkdir(parents=True)
    (interpret / "experts.json").write_text(json.dumps(
        {"experts": [{"id": k, "description": f"expert {k} likes {w}"} for k, w in enumerate(["care", "brevity", "!"])]}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"]["system_prompt"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return models / "sparse"


def user_pairs(n: int = 8) -> list[dict]:
    """A user who prefers the short answers, on the training prompts and a chat-format one."""
    pairs = [{"prompt": f"Question {p}: how do I handle case {p}?", "chosen": f"Lazy answer {p}.0",
              "rejected": f"Careful answer {p}.0, step by step."} for p in range(n - 1)]
    pairs.append({"prompt": [{"role": "user", "content": "Hi, how do I start?"}], "chosen": "Start.",
                  "rejected": "Start by reading the whole manual carefully, then begin.", "id": "chat"})
    return pairs


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def adapt_cmd(trained: Path, backbone: Path, examples: Path, out: Path, *extra: str) -> list[str]:
    return ["smoe", "adapt", "--model", str(trained), "--examples", str(examples), "--out", str(out),
            "--backbone", str(backbone), "--params", str(trained.parents[3] / "params.yaml"), *extra]


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """`smoe <args>` in this process, through the same entry point as the console script
    (an interpreter start plus the transformers import cost ~7 s per subprocess). An error
    the CLI does not turn into a one-line message propagates and fails the test."""
    from stages import cli

    capsys.readouterr()
    monkeypatch.setattr("sys.argv", ["smoe", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- end to end


def test_smoe_adapt_writes_a_loadable_head_whose_router_alone_moved(trained, tiny_llama, tmp_path, capsys,
                                                                     monkeypatch):
    examples = write_jsonl(tmp_path / "prefs.jsonl", user_pairs())
    out = tmp_path / "me"
    proc = subprocess.run(adapt_cmd(trained, tiny_llama, examples, out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "checksums.json", "report.md", "report.json"}
    assert not list(tmp_path.glob(".me.*"))  # no temporary folder left behind

    original, adapted = RewardHead.load(trained), RewardHead.load(out)
    assert adapted.config.extra["adaptation"]["method"] == "hedge" and adapted.config.extra["adaptation"]["num_pairs"] == 8
    assert adapted.config.extra["adapted_from"] == str(trained)
    before, after = original.state_dict(), adapted.state_dict()
    assert before.keys() == after.keys()
    router = [k for k in before if k.startswith("router.")]
    assert router and any(not torch.equal(before[k], after[k]) for k in router)
    for k in before.keys() - set(router):  # experts and input statistics: bit-identical
        assert torch.equal(before[k], after[k]), k

    rm = RewardModel.load(out, str(tiny_llama))  # the inference API loads it like any trained head
    prompts = [p["prompt"] for p in user_pairs()]
    assert not torch.allclose(rm.score(prompts, ["Ok."] * 8).routing_weights,
                              RewardModel.load(trained, str(tiny_llama)).score(prompts, ["Ok."] * 8).routing_weights)

    report = json.loads((out / "report.json").read_text())
    experts = report["experts"]
    assert sorted(e["id"] for e in experts) == [0, 1, 2]
    assert sum(e["shift"] for e in experts) == pytest.approx(0, abs=1e-6)
    assert sum(e["weight_after"] for e in experts) == pytest.approx(1, abs=1e-6)
    assert [e["shift"] for e in experts] == sorted((e["shift"] for e in experts), reverse=True)
    assert max(abs(e["shift"]) for e in experts) > 1e-4
    assert all(e["shift"] == pytest.approx(e["weight_after"] - e["weight_before"]) for e in experts)
    # descriptions found by the default data/models/<exp>/<variant> -> data/interpret/<exp>/<variant> rule
    assert {e["id"]: e["description"] for e in experts}[1] == "expert 1 likes brevity"
    assert report["descriptions_found"] and report["descriptions_file"].endswith("interpret/tiny/sparse/experts.json")
    assert report["method"] == "hedge" and report["num_pairs"] == 8
    assert report["settings"] == {"tau": 1e-3, "epochs": 10, "batch_size": 32, "lr": 0.01, "hyre_temperature": 1.0,
                                  "hyre_reduction": "sum", "seed": 0}
    assert 0 <= report["training_accuracy_before"] <= 1 and 0 <= report["training_accuracy_after"] <= 1
    md = (out / "report.md").read_text()
    assert "training-set accuracy" in md and "| E1 |" in md and "expert 1 likes brevity" in md
    assert "training-set accuracy" in proc.stdout

    # --force replaces a non-empty --out; settings come from the options
    descriptions = write_jsonl(tmp_path / "d.json", [{"experts": []}])
    code, _, err = run_cli(adapt_cmd(trained, tiny_llama, examples, out, "--force", "--epochs", "2",
                                     "--descriptions", str(descriptions))[1:], capsys, monkeypatch)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["epochs"] == 2 and all(e["description"] is None for e in report["experts"])


# ----------------------------------------------------------------------------- errors

GOOD = [json.dumps(p) for p in user_pairs(6)]
ERRORS = {  # name: (lines of the file, substrings of the message)
    "too_few": (GOOD[:3], ["prefs.jsonl: 3 labelled pairs (lines 1-3); need at least 5"]),
    "invalid_json": (GOOD[:2] + ["{not json"] + GOOD[2:], ["prefs.jsonl:3: not valid JSON"]),
    "missing_key": (GOOD[:3] + [json.dumps({"prompt": "x", "chosen": "y"})] + GOOD[3:],
                    ["prefs.jsonl:4: missing 'rejected'"]),
    "non_string": (GOOD + [json.dumps({"prompt": "x", "chosen": 3, "rejected": "y"})],
                   ["prefs.jsonl:7: 'chosen' must be text"]),
    "empty": (GOOD + [json.dumps({"prompt": "x", "chosen": "  ", "rejected": "y"})], ["prefs.jsonl:7: 'chosen' is empty"]),
    "chosen_equals_rejected": (GOOD[:1] + [json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"})] + GOOD[1:],
                               ["prefs.jsonl:2:", "'chosen' and 'rejected' are the same"]),
    "duplicate": (GOOD[:5] + [""] + [GOOD[1]], ["prefs.jsonl:7: duplicate pair", "lines 2 and 7"]),
    "out_not_empty": (GOOD, ["--out is not empty", "--force"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_smoe_adapt_refuses_bad_input_with_one_line_naming_file_and_line(case, trained, tiny_llama, tmp_path,
                                                                        capsys, monkeypatch):
    lines, expected = ERRORS[case]
    examples = write_jsonl(tmp_path / "prefs.jsonl", lines)
    out = tmp_path / "out"
    if case == "out_not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(adapt_cmd(trained, tiny_llama, examples, out)[1:], capsys, monkeypatch)
    assert code != 0
    assert "Traceback" not in stderr and stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1, stderr
    for text in expected:
        assert text in stderr, (text, stderr)
    if case == "out_not_empty":
        assert str(out) in stderr
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    else:
        assert str(examples) in stderr
        assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["prefs.jsonl"]


def test_read_preference_file_keeps_rows_extra_keys_and_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(p) for p in user_pairs(5)[:2]] + ["   "]
                       + [json.dumps(p) for p in user_pairs(5)[2:]])
    rows = read_preference_file(path, min_pairs=5)
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6] and rows[-1]["id"] == "chat"
    assert rows[-1]["prompt"] == [{"role": "user", "content": "Hi, how do I start?"}]
    with pytest.raises(PreferenceFileError, match=r"p\.jsonl: 5 labelled pairs .*need at least 6"):
        read_preference_file(path, min_pairs=6)
    # a string prompt and the same prompt as one user message are the same pair
    same = {"prompt": [{"role": "user", "content": "Q?"}], "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "d.jsonl", [{**same, "prompt": "Q?"}, same])
    with pytest.raises(PreferenceFileError, match="d.jsonl:2: duplicate pair.*lines 1 and 2"):
        read_preference_file(path, min_pairs=1)
    path = write_jsonl(tmp_path / "m.jsonl", [{**same, "prompt": [{"role": "user"}]}])
    with pytest.raises(PreferenceFileError, match="m.jsonl:1: 'prompt' messages"):
        read_preference_file(path, min_pairs=1)


def test_a_single_head_is_returned_unchanged_with_zero_shift(trained, tiny_llama):
    rm = RewardModel.load(trained, str(tiny_llama))
    cfg = rm.head.config
    torch.manual_seed(0)
    single = RewardHead(HeadConfig(kind="single", hidden_size=cfg.hidden_size, backbone=cfg.backbone,
                                   template_hash=cfg.template_hash))
    head, report = adapt_model(RewardModel(rm.backbone, single), user_pairs(), descriptions={0: "all"})
    assert report["method"] == "none" and report["experts"] == [
        {"id": 0, "weight_before": 1.0, "weight_after": 1.0, "shift": 0.0, "description": "all"}]
    assert report["training_accuracy_before"] == report["training_accuracy_after"]
    assert torch.equal(head.experts.weight, single.experts.weight)
    md = report_markdown({**report, "descriptions_file": None})
    assert "copied unchanged" in md and "No expert descriptions" in md


# ----------------------------------------------------------------------------- GRPO reward


def test_reward_function_has_the_grpo_signature_for_both_formats(trained, tiny_llama):
    rm = RewardModel.load(trained, str(tiny_llama))
    reward = reward_function(rm, batch_size=2)
    assert reward.__name__ == "smoe_reward"
    prompts = [f"Question {p}: how do I handle case {p}?" for p in range(4)] + ["Hi?"]
    completions = ["Careful answer, step by step.", "Lazy.", "Ok!", "Careful answer 2.0, step by step.", "Hello."]
    out = reward(prompts=prompts, completions=completions, completion_ids=[[1, 2]] * 5, answer=["x"] * 5)
    assert isinstance(out, list) and len(out) == 5 and all(type(r) is float for r in out)
    torch.testing.assert_close(torch.tensor(out), rm.score(prompts, completions).reward, atol=1e-5, rtol=1e-5)
    assert len(set(out)) > 1
    # conversational: prompts are message lists, completions [{"role": "assistant", "content": ...}]
    chat = reward([[{"role": "user", "content": p}] for p in prompts],
                  [[{"role": "assistant", "content": c}] for c in completions], trainer_state=None)
    assert isinstance(chat, list) and len(chat) == 5 and all(type(r) is float for r in chat)
    torch.testing.assert_close(torch.tensor(chat), torch.tensor(out), atol=1e-5, rtol=1e-5)
    assert reward([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        reward(prompts[:2], completions[:1])
