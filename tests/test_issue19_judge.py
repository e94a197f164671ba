"""The hf judge scores whole answers (issue 19). SmolLM2's tokenizer splits "YES" into "Y" + "ES"
while "NO" is one token, so comparing the first token of each weighs the letter "Y" against the
word "NO"; the judge must compare the likelihood of the whole answers instead."""

from __future__ import annotations

import types

import pytest
import torch

from pipeline import describers as D


class ScriptedLM:
    """A stand-in causal LM whose next-token logits depend on the last token only: at the start
    of the answer "N" (5) beats "Y" (4), but after "N" or "n" the model never says "O"/"o", while after
    "Y" it says "E" then "S" for sure. So its first token is likelier N, its whole answer is YES."""

    def __init__(self, tok):
        self.vocab = len(tok)
        self.id = {c: tok(c, add_special_tokens=False).input_ids[0] for c in "YESNOXyesno"}

    def __call__(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=None):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for row, last in enumerate(input_ids[:, -1].tolist()):
            if last == self.id["Y"]:
                logits[row, 0, self.id["E"]] = 30.0
            elif last == self.id["E"]:
                logits[row, 0, self.id["S"]] = 30.0
            elif last in (self.id["N"], self.id["n"]):
                logits[row, 0, self.id["X"]] = 30.0
            else:  # the end of the judge prompt
                logits[row, 0, self.id["N"]] = 5.0
                logits[row, 0, self.id["Y"]] = 4.0
        return types.SimpleNamespace(logits=logits)


@pytest.fixture()
def judge(tiny_llama, monkeypatch):
    backend = D.make_backend(f"hf:{tiny_llama}", max_new_tokens=8, batch_size=2, device="cpu")
    monkeypatch.setattr(backend, "model", ScriptedLM(backend.tokenizer))
    return backend


def test_a_multi_token_yes_is_scored_as_a_whole_not_by_its_first_token(judge):
    prompts = ["How do I keep bread fresh?", "Can my landlord keep the deposit?", "short?"]
    rendered = judge.render(D.judge_prompt("asks about baking", prompts[0]))
    last = judge.tokenizer(rendered, add_special_tokens=False).input_ids[-1]
    assert last not in judge.model.id.values()  # the prompt ends outside the scripted letters
    scores = judge.judge_scores("asks about baking", prompts)
    # log P(YES) ~ log P(Y) = 4 - log Z; log P(NO) ~ 5 - log Z - 30: YES by ~29 nats
    assert all(s > 20 for s in scores), scores
    assert judge.judge(0, "asks about baking", prompts) == [1, 1, 1]
