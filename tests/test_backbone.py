"""The cached states are the model's own hidden states, per example, in mixed batches."""

from __future__ import annotations

import pytest
import torch

from pipeline.backbone import BackboneConfig, Encoded, load

PROMPTS = [
    [{"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Give me a long and winding recipe for bread with seeds and honey."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
]
RESPONSES = ["Rayleigh scattering.", "First mix flour and water, then knead for ten minutes.", "4", "Four!"]


def standalone(backbone, enc: Encoded):
    ids = torch.tensor([enc.prefix + enc.response])
    with torch.inference_mode():
        h = backbone.model(input_ids=ids).last_hidden_state[0]
    return h[len(enc.prefix) - 1], h[-1]


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_states_match_standalone_forward_in_mixed_batch(tiny_llama, padding_side):
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    # Row 0 packs two responses after one prompt; rows differ in length (mixed batch).
    encs = [[backbone.encode(PROMPTS[0], RESPONSES[0]), backbone.encode(PROMPTS[0], RESPONSES[1])],
            [backbone.encode(PROMPTS[1], RESPONSES[1])],
            [backbone.encode(PROMPTS[2], RESPONSES[2]), backbone.encode(PROMPTS[2], RESPONSES[3])]]
    rows = [(group[0].prefix, [e.response for e in group]) for group in encs]
    prompt_states, response_states = backbone.embed_rows(rows, padding_side=padding_side)
    assert prompt_states.shape == (3, 32) and response_states.shape == (5, 32)
    flat = [e for group in encs for e in group]
    for i, enc in enumerate(flat):
        want_prompt, want_last = standalone(backbone, enc)
        torch.testing.assert_close(response_states[i], want_last, atol=1e-5, rtol=1e-4)
    for r, group in enumerate(encs):
        want_prompt, _ = standalone(backbone, group[0])
        torch.testing.assert_close(prompt_states[r], want_prompt, atol=1e-5, rtol=1e-4)
    # Different examples really do get different states (no row mix-up can hide).
    assert not torch.allclose(response_states[0], response_states[1])
    assert not torch.allclose(prompt_states[0], prompt_states[2])


def test_prompt_boundary_is_end_of_assistant_header(tiny_llama):
    backbone = load(BackboneConfig(model=str(tiny_llama)))
    enc = backbone.encode(PROMPTS[0], RESPONSES[0])
    text = backbone.tokenizer.decode(enc.prefix)
    assert text.endswith("<|im_start|>assistant\n")
    assert backbone.tokenizer.decode(enc.response) == RESPONSES[0] + "<|im_end|>\n"


def test_truncation_policy(tiny_llama):
    long_prompt = [{"role": "user", "content": "word " * 200}]
    keep = load(BackboneConfig(model=str(tiny_llama), max_length=120))
    enc = keep.encode(long_prompt, "short answer")
    assert enc.truncated and len(enc.prefix) + len(enc.response) == 120
    assert keep.tokenizer.decode(enc.response) == "short answer<|im_end|>\n"
    assert keep.tokenizer.decode(enc.prefix).endswith("<|im_start|>assistant\n")
    drop = load(BackboneConfig(model=str(tiny_llama), max_length=120, truncation="drop"))
    with pytest.raises(ValueError, match="over_length"):
        drop.encode(long_prompt, "short answer")
    with pytest.raises(ValueError, match="response_too_long"):
        keep.encode(PROMPTS[0], "x" * 300)


def test_template_hash_changes_with_pinned_date(tiny_llama):
    a = load(BackboneConfig(model=str(tiny_llama), template_date="26 Jul 2024"))
    b = load(BackboneConfig(model=str(tiny_llama), template_date="01 Jan 2025"))
    assert a.template_hash != b.template_hash


def test_seq_cls_backbone_exposes_score_head(tiny_grm):
    backbone = load(BackboneConfig(model=str(tiny_grm)))
    enc = backbone.encode(PROMPTS[1], RESPONSES[1])
    _, h = standalone(backbone, enc)
    own = backbone.own_reward(enc)
    assert abs(float(backbone.score_head.weight[0] @ h) - own) < 1e-4


def test_encoder_mean_pooling_matches_manual_mean(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "why is the sky blue rayleigh scattering of light four 2 + ? . !".split()
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).eval().save_pretrained(tmp_path)
    backbone = load(BackboneConfig(model=str(tmp_path)))
    assert backbone.pooling == "mean" and not backbone.shares_prefix
    encs = [backbone.encode(PROMPTS[0], "rayleigh scattering of light ."), backbone.encode(PROMPTS[2], "four !")]
    prompt_states, response_states = backbone.embed_rows([(e.prefix, [e.response]) for e in encs], padding_side="right")
    for i, e in enumerate(encs):
        ids = torch.tensor([e.prefix + e.response])
        types = torch.tensor([[0] * len(e.prefix) + [1] * len(e.response)])
        with torch.inference_mode():
            h = backbone.model(input_ids=ids, token_type_ids=types).last_hidden_state[0]
        torch.testing.assert_close(response_states[i], h.mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(prompt_states[i], h[: len(e.prefix)].mean(0), atol=1e-5, rtol=1e-4)
