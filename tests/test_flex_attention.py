"""backbone.attention: flex (a FlexAttention block mask) gives the states of sdpa (the
reference dense mask) and of standalone forwards, and the benchmark's FLOP count is the
hand count."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, BertConfig

import pipeline.backbone as bb
from pipeline.backbone import BackboneConfig, BackboneError, load
from pipeline.featurize import FeaturizeConfig
from stages import common as P
from tests.test_backbone import PROMPTS, RESPONSES, standalone
from tests.test_featurize import many_rows, write_prepared
from tooling.bench import attended_keys, compare, forward_flops_per_token, gpu_peak_flops, peak_flops

# (atol, rtol) by dtype: fp32 differs by summation order only; bf16 keeps 8 mantissa bits.
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def backbones(model, dtype: str = "float32"):
    return (load(BackboneConfig(model=str(model), dtype=dtype)),
            load(BackboneConfig(model=str(model), dtype=dtype, attention="flex")))


@pytest.fixture(scope="module")
def pair(tiny_llama):
    return backbones(tiny_llama)


def mixed_rows(backbone):
    """Rows of different widths: three responses after one prompt, one long response, a
    short row that is mostly padding, two responses."""
    encs = [[backbone.encode(PROMPTS[0], r) for r in RESPONSES[:3]],
            [backbone.encode(PROMPTS[1], RESPONSES[1])],
            [backbone.encode(PROMPTS[2], RESPONSES[2]), backbone.encode(PROMPTS[2], RESPONSES[3])]]
    rows = [(group[0].prefix, [e.response for e in group]) for group in encs]
    rows.insert(2, ([5, 6], [[7]]))  # 3 real tokens, the rest of the row padding
    return rows, encs


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_flex_states_equal_sdpa_and_standalone(pair, padding_side):
    sdpa, flex = pair
    rows, encs = mixed_rows(sdpa)
    want_prompt, want_response = sdpa.embed_rows(rows, padding_side=padding_side)
    prompt, response = flex.embed_rows(rows, padding_side=padding_side)
    assert prompt.shape == (4, 32) and response.shape == (7, 32)
    assert torch.isfinite(prompt).all() and torch.isfinite(response).all()
    atol, rtol = TOLERANCE[torch.float32]
    torch.testing.assert_close(prompt, want_prompt, atol=atol, rtol=rtol)
    torch.testing.assert_close(response, want_response, atol=atol, rtol=rtol)
    # and each state is its own sequence's, run alone (not only "as sdpa does it")
    packed = [e for group in encs[:2] for e in group] + [None] + [e for e in encs[2]]
    for i, enc in enumerate(packed):
        if enc is not None:
            torch.testing.assert_close(response[i], standalone(sdpa, enc)[1], atol=atol, rtol=rtol)
    for r, group in zip((0, 1, 3), encs):
        torch.testing.assert_close(prompt[r], standalone(sdpa, group[0])[0], atol=atol, rtol=rtol)


def test_flex_equals_sdpa_in_bfloat16(tiny_llama):
    sdpa, flex = backbones(tiny_llama, "bfloat16")
    assert flex.dtype == torch.bfloat16
    rows, _ = mixed_rows(sdpa)
    atol, rtol = TOLERANCE[torch.bfloat16]
    for got, want in zip(flex.embed_rows(rows), sdpa.embed_rows(rows)):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_a_wrong_block_mask_is_caught(pair, monkeypatch):
    """The comparison can fail: a flex mask that lets responses see each other (plain
    causal over the row) changes every response after the first."""
    sdpa, flex = pair
    rows, _ = mixed_rows(sdpa)
    want = sdpa.embed_rows(rows)[1]

    def causal_only(segment):
        return lambda b, h, q, k: (k <= q) | (q == k)

    monkeypatch.setattr(bb, "_packing_rule", causal_only)
    wrong = flex.embed_rows(rows)[1]
    assert torch.allclose(wrong[0], want[0], atol=1e-5)  # the first response sees nothing else anyway
    assert (wrong[1] - want[1]).abs().max() > 1e-3


def test_integrity_check_reads_the_same_reward_with_flex(tiny_grm):
    sdpa, flex = backbones(tiny_grm)
    enc = sdpa.encode(PROMPTS[1], RESPONSES[1])
    assert flex.own_reward(enc) == pytest.approx(sdpa.own_reward(enc), abs=1e-5)


def test_flex_runs_eagerly_off_cuda_and_quietly(pair, recwarn, monkeypatch):
    """Off CUDA, flex runs uncompiled (a CPU build of the kernel per batch shape costs ~15 s
    for nothing: transformers would compile it) and without the unfused-kernel warning."""
    _, flex = pair
    assert flex.model.config._attn_implementation == "flex_attention"
    monkeypatch.setattr(torch.nn.attention.flex_attention, "_WARNINGS_SHOWN", set())  # it warns once per process
    counters.clear()
    flex.embed_rows(mixed_rows(flex)[0])
    assert not counters["inductor"] and not counters["stats"]  # nothing compiled, nothing traced
    assert not [w for w in recwarn if "flex_attention" in str(w.message)]


def test_attention_param_is_validated(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="backbone.attention must be one of"):
        BackboneConfig(model=str(tiny_llama), attention="flash")
    with pytest.raises(P.ParamsError, match="attention"):
        P.build(BackboneConfig, {"source": "smollm2", "attention": "flash"}, "backbone", ignore=("source",),
                model=str(tiny_llama))
    assert "attention" in P.schema_problem({"attention": "flash"}, "backbone")
    assert P.schema_problem({"attention": "flex"}, "backbone") is None
    BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(BackboneError, match="flex is for decoders"):
        load(BackboneConfig(model=str(tmp_path), attention="flex"))


def test_flex_that_cannot_run_is_one_line(tiny_llama, monkeypatch):
    def broken(self, segment):
        raise RuntimeError("no kernel for this device.\nlong traceback text")

    monkeypatch.setattr(bb.Backbone, "_packing_mask", broken)
    with pytest.raises(BackboneError, match=r"flex cannot run on cpu with torch.float32 \(RuntimeError: "
                                            r"no kernel for this device\); set backbone.attention: sdpa") as err:
        load(BackboneConfig(model=str(tiny_llama), attention="flex"))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- model FLOPs


def test_forward_flops_per_token_is_the_hand_count(pair):
    config = pair[0].model.config  # hidden 32, 2 layers, 4 heads of 8, 2 kv heads, MLP 64
    per_layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64  # q, k, v, o; gate, up, down
    assert per_layer == 9216
    assert forward_flops_per_token(config, 10.0) == 2 * 2 * 9216 + 4 * 2 * 32 * 10.0
    # the counted N is the model's own matmul weights (embedding and norms aside)
    weights = sum(m.weight.numel() for m in pair[0].model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert weights == 2 * 9216
    with pytest.raises(ValueError, match="Llama-family"):
        forward_flops_per_token(type("Cfg", (), {"hidden_size": 8, "num_hidden_layers": 1})(), 1.0)


def test_attended_keys_counts_the_packing_mask():
    assert attended_keys(4, []) == 1 + 2 + 3 + 4
    assert attended_keys(3, [2, 1]) == (1 + 2 + 3) + (4 + 5) + 4  # positions restart after the prompt
    segment = torch.tensor([[0, 0, 0, 1, 1, 2]])
    rule = bb._packing_rule(segment)
    idx = torch.arange(6)
    allowed = rule(torch.zeros(1, 1, 1, dtype=torch.long), None, idx[None, :, None], idx[None, None, :])
    assert int(allowed.sum()) == attended_keys(3, [2, 1])  # the mask allows exactly the counted pairs


def test_peak_flops_table():
    assert peak_flops("cpu", torch.bfloat16) is None
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989e12
    assert gpu_peak_flops("NVIDIA H200", torch.float16) == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe", torch.bfloat16) == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", torch.float32) is None
    assert gpu_peak_flops("Tesla T4", torch.float16) is None


def test_featurize_benchmark_runs_flex_and_reports_utilization(tiny_llama, tmp_path):
    prepared = write_prepared(tmp_path / "prepared", many_rows(3, 2))
    res = compare(prepared, 6, BackboneConfig(model=str(tiny_llama), attention="flex"), FeaturizeConfig())
    real, naive = res["real"], res["naive"]
    assert real["attention"] == "flex" and naive["attention"] == "sdpa"  # ArmoRM's loop stays sdpa
    for r in (real, naive):
        assert r["device_type"] == "cpu" and r["mfu"] is None and r["peak_flops"] is None
        assert r["mean_context"] > 1
        assert r["model_flops"] == pytest.approx(
            r["forward_tokens"] * forward_flops_per_token(AutoConfig.from_pretrained(tiny_llama), r["mean_context"]))
