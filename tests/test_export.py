"""`smoe export`: every export scores what RewardModel.score scores (issue 17, section 2).

A tiny random Llama backbone (tests/conftest.py) with a system prompt baked into the
formatting, and small heads with non-trivial standardization statistics and weights, so
that the folded constant is far from zero and the routing far from uniform.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from pipeline import backbone as bb
from pipeline.export import ExportError, collapse, export
from pipeline.models import HeadConfig, RewardHead
from pipeline.reward_model import RewardModel

PROMPTS = [
    "How do I proof dough?",
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."},
     {"role": "user", "content": "And another?"}],
    "Write one short line about the sea, please, in a calm tone.",
    "How do I proof dough?",
]
RESPONSES = ["Knead, rest an hour, bake.", "Eleven.", "The sea breathes slowly under a grey sky.", "No idea."]
TOL = 1e-4  # float32 export; packed (smoe) vs plain padded (HF) forward differ by summation order only


@pytest.fixture(scope="module")
def backbone(tiny_llama):
    return bb.load(bb.BackboneConfig(model=str(tiny_llama), system_prompt="Be brief.", max_length=256))


def make_head(backbone, kind: str, k: int, router: str = "mlp", seed: int = 0) -> RewardHead:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    hidden = backbone.hidden_size
    head = RewardHead(HeadConfig(kind=kind, hidden_size=hidden, num_experts=k, router=router, router_hidden=16,
                                 backbone=backbone.identity["backbone"], template_hash=backbone.template_hash,
                                 extra={"variant": f"test-{kind}", "experiment": "tiny", "dataset": "tiny",
                                        "objective": {"lambda_ls": 0.5, "lambda_gb": 0.5, "lambda_div": 2.0}}))
    head.set_input_stats(torch.randn(hidden, generator=gen), 0.5 + torch.rand(hidden, generator=gen),
                         3 * torch.randn(hidden, generator=gen), 0.5 + torch.rand(hidden, generator=gen))
    with torch.no_grad():
        head.experts.weight.copy_(torch.randn(k, hidden, generator=gen))
        if head.router is not None:  # small: routing clearly input-dependent, not saturated
            for p in head.router.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        if kind == "hyre":
            head.ensemble_log_weights.copy_(torch.log_softmax(torch.randn(k, generator=gen), 0))
    return head.eval()


def hf_logits(folder, texts=None, trust_remote_code=False):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code).eval()
    texts = texts or rendered(tok)
    with torch.inference_mode():
        out = model(**tok(texts, return_tensors="pt", padding=True))
    return model, tok, out


def rendered(tok):
    msgs = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in PROMPTS]
    return [tok.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False)
            for m, r in zip(msgs, RESPONSES)]


def test_collapse_is_the_head_with_fixed_routing(backbone):
    # pure math, no HF: w'.h + c == sum_k pi_k r_k(h) for single, hyre (prior heads included)
    # and an MoE with given routing
    h = 5 * torch.randn(7, backbone.hidden_size) + 2
    for head, pi in ((make_head(backbone, "single", 1), None), (make_head(backbone, "hyre", 4), None),
                     (make_head(backbone, "moe", 3), [0.2, 0.0, 0.8])):
        c = collapse(head, pi)
        expected = head(h, h, None if pi is None else torch.tensor(pi))["reward"].double()
        assert torch.allclose(h.double() @ c.weight + c.offset, expected, atol=1e-4)
        assert abs(c.offset) > 0.1  # the standardization really leaves a constant


@pytest.mark.parametrize("kind,k,routing,expert", [
    ("single", 1, None, None),
    ("hyre", 4, None, None),            # ensemble weights, frozen prior heads
    ("moe", 3, [0.25, 0.0, 0.75], None),  # given routing weights
    ("moe", 3, None, 2),                # steered: all weight on one expert
])
def test_linear_export_matches_score_up_to_the_constant(backbone, tmp_path, kind, k, routing, expert):
    from transformers import pipeline

    head = make_head(backbone, kind, k, seed=k)
    rm = RewardModel(backbone, head)
    result = export(rm, tmp_path / "out", fmt="auto", routing_weights=routing, expert=expert)
    assert result.format == "linear" and result.max_abs_diff is not None and result.max_abs_diff < TOL
    folder = result.out
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and "auto_map" not in config
    assert config["pad_token_id"] is not None and config["smoe"]["reward_offset"] == result.reward_offset
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.py")) and not list(folder.glob("*.bin"))

    model, tok, out = hf_logits(folder)  # trust_remote_code=False
    assert type(model).__name__ == "LlamaForSequenceClassification" and out.logits.shape == (len(PROMPTS), 1)
    pi = routing if routing is not None else ([1.0 if i == expert else 0.0 for i in range(k)] if expert is not None else None)
    expected = rm.score(PROMPTS, RESPONSES, routing_weights=pi).reward.double()
    logits = out.logits[:, 0].double()
    assert torch.allclose(logits + result.reward_offset, expected, atol=TOL * max(1, expected.abs().max()))
    # the documented constant is real, and is the only difference
    assert abs(result.reward_offset) > 0.1
    assert torch.allclose(logits - expected, torch.full_like(logits, -result.reward_offset), atol=1e-3)

    # round trip through transformers.pipeline, as reward-bench calls it (padded batch)
    pipe = pipeline("text-classification", model=str(folder), function_to_apply="none", trust_remote_code=False)
    scores = [o["score"] for o in pipe(rendered(tok), batch_size=2)]
    assert torch.allclose(torch.tensor(scores, dtype=torch.float64), logits, atol=1e-4)
    # problem_type=regression: even without function_to_apply the pipeline gives the raw logit
    assert math.isclose(pipeline("text-classification", model=str(folder))(rendered(tok)[0])[0]["score"],
                        float(logits[0]), abs_tol=1e-4)


def test_exported_tokenizer_reproduces_smoe_tokens(backbone, tmp_path):
    # the exported chat template carries the system prompt featurize used; the pooled
    # token (HF: last non-pad) is smoe's response-state token, the template's final "\n"
    from transformers import AutoTokenizer

    result = export(RewardModel(backbone, make_head(backbone, "single", 1)), tmp_path / "out", check=False)
    tok = AutoTokenizer.from_pretrained(result.out)
    for prompt, response, text in zip(PROMPTS, RESPONSES, rendered(tok)):
        encoded = backbone.encode([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt, response)
        assert "Be brief." in text
        assert tok(text).input_ids == encoded.prefix + encoded.response
        assert tok.pad_token_id != encoded.response[-1]
    assert tok.padding_side == "right" and tok.truncation_side == "left" and tok.model_max_length == 256


def test_moe_export_with_remote_code_matches_reward_experts_and_routing(backbone, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    for router in ("mlp", "linear"):
        head = make_head(backbone, "moe", 3, router=router, seed=7)
        rm = RewardModel(backbone, head)
        result = export(rm, tmp_path / router)
        assert result.format == "moe" and result.reward_offset == 0.0
        folder = result.out
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_smoe.SmoeMoERewardModel"
        assert (folder / "modeling_smoe.py").exists()

        model, tok, out = hf_logits(folder, trust_remote_code=True)
        expected = rm.score(PROMPTS, RESPONSES)
        assert out.logits.shape == (len(PROMPTS), 1)
        assert torch.allclose(out.logits[:, 0], expected.reward, atol=TOL * max(1, expected.reward.abs().max()))
        assert torch.allclose(out.expert_rewards, expected.expert_rewards, atol=1e-3)
        assert torch.allclose(out.routing_weights, expected.routing_weights, atol=1e-5)
        assert expected.routing_weights.max() < 0.99 and expected.routing_weights.std(0).max() > 1e-3  # input-dependent
        # the prompt state is read at the end of the last assistant header: smoe's prefix end
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            enc = backbone.encode([{"role": "user", "content": p}] if isinstance(p, str) else p, r)
            assert int(out.prompt_positions[i]) == len(enc.prefix) - 1
            assert int(out.response_positions[i]) == len(enc.prefix) + len(enc.response) - 1
        # routing override (steering) through the forward call
        with torch.inference_mode():
            steered = model(**tok(rendered(tok), return_tensors="pt", padding=True),
                            routing_weights=torch.tensor([0.0, 1.0, 0.0]))
        assert torch.allclose(steered.logits[:, 0], rm.score(PROMPTS, RESPONSES, routing_weights=[0, 1, 0]).reward,
                              atol=1e-3)
        pipe = pipeline("text-classification", model=str(folder), trust_remote_code=True, function_to_apply="none")
        assert math.isclose(pipe(rendered(tok)[1])[0]["score"], float(expected.reward[1]), abs_tol=1e-3)

    # text not rendered with the chat template: no assistant header, a clear refusal
    with pytest.raises(ValueError, match="no assistant header"):
        model(**tok(["just some text"], return_tensors="pt"))
    # and without trust_remote_code transformers will not run the custom code
    with pytest.raises(Exception, match="trust_remote_code"):
        AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False)


def test_model_card_has_provenance_metrics_and_experts(backbone, tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"accuracy": 0.731, "routing_entropy": 0.21}))
    experts = tmp_path / "experts.json"
    experts.write_text(json.dumps({"experts": [{"id": 0, "description": "recipes and cooking"},
                                               {"id": 1, "description": "fiction"},
                                               {"id": 2, "description": "law"}]}))
    result = export(RewardModel(backbone, make_head(backbone, "moe", 3)), tmp_path / "out", expert=0,
                    metrics_path=metrics, experts_path=experts, check=False)
    card = (result.out / "README.md").read_text()
    for needle in (backbone.identity["backbone"], "test-moe", "| K (experts) | 3 |", "lambda_div = 2.0",
                   "accuracy | 0.731", "recipes and cooking", "reward_offset", "group-normalized advantage"):
        assert needle in card, needle


def test_bad_requests_are_one_line_errors(backbone, tmp_path):
    moe = RewardModel(backbone, make_head(backbone, "moe", 3))
    with pytest.raises(ExportError, match="routes by the input"):
        export(moe, tmp_path / "a", fmt="linear")
    with pytest.raises(ExportError, match="sum to 1"):
        export(moe, tmp_path / "b", routing_weights=[0.5, 0.2, 0.2])
    with pytest.raises(ExportError, match="3 numbers"):
        export(moe, tmp_path / "c", routing_weights=[0.5, 0.5])
    with pytest.raises(ExportError, match="--expert must be in 0..2"):
        export(moe, tmp_path / "d", expert=3)
    with pytest.raises(ExportError, match="no input-dependent router"):
        export(RewardModel(backbone, make_head(backbone, "single", 1)), tmp_path / "e", fmt="moe")
    (tmp_path / "f").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export(moe, tmp_path / "f", expert=0)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no scratch left behind


def test_cli_exports_and_reports_errors_in_one_line(backbone, tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from stages.cli import app

    head_dir = tmp_path / "models" / "tiny" / "hyre"
    make_head(backbone, "hyre", 4).save(head_dir)
    params = tmp_path / "params.yaml"
    params.write_text("backbone:\n  system_prompt: Be brief.\n  max_length: 256\n")
    runner = CliRunner()
    args = ["export", str(head_dir), "--backbone", str(tiny_llama), "--params", str(params), "--out"]
    ok = runner.invoke(app, [*args, str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "reward = logit +" in ok.output and (tmp_path / "out" / "model.safetensors").exists()
    bad = runner.invoke(app, [*args, str(tmp_path / "out2"), "--routing-weights", "a,b"])
    assert bad.exit_code != 0 and "--routing-weights must be comma-separated numbers" in str(bad.exception or bad.output)
