"""The inference API: frozen backbone + trained head, scoring raw (prompt, response) pairs.

    rm = RewardModel.load("data/models/categories/sparse", backbone="data/backbone")
    out = rm.score(["How do I proof dough?"], ["Knead, rest 1 h, shape, bake."])
    out.reward, out.expert_rewards, out.routing_weights

Sequences go through the backbone in attention-masked batches, with the responses to the
same prompt packed behind one copy of the prompt (the same code path as ``featurize``), so
a score here equals the head applied to the cached features of the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline import backbone as bb
from pipeline.models import RewardHead, check_compatible
from pipeline.pairs import Messages, as_messages


@dataclass
class Scores:
    reward: torch.Tensor           # [N]     r(x, y), Eq. 2
    expert_rewards: torch.Tensor   # [N, K]  r_k(x, y)
    routing_weights: torch.Tensor  # [N, K]  pi(x), or the override that was passed

    def tolist(self) -> list[dict[str, object]]:
        return [{"reward": float(r), "expert_rewards": e.tolist(), "routing_weights": w.tolist()}
                for r, e, w in zip(self.reward, self.expert_rewards, self.routing_weights)]


class RewardModel:
    def __init__(self, backbone: bb.Backbone, head: RewardHead, token_budget: int = 4096,
                 max_responses_per_row: int = 16):
        manifest_like = {"hidden_size": backbone.hidden_size, "backbone": backbone.identity.get("backbone"),
                         "template_hash": backbone.template_hash}
        check_compatible(head.config, manifest_like, "backbone for this head")
        self.backbone = backbone
        self.head = head.eval().to(backbone.device)
        self.token_budget = token_budget
        self.max_responses_per_row = max_responses_per_row

    @classmethod
    def load(cls, head_dir: str | Path, backbone: str | Path | bb.BackboneConfig = "data/backbone",
             **backbone_overrides) -> "RewardModel":
        """Load a trained head and the backbone it was trained on. ``backbone`` is a folder
        (``data/backbone``), hub id, or a full :class:`BackboneConfig`; overrides such as
        ``system_prompt`` or ``template_date`` must match what featurize used, and loading
        fails with a clear error when the chat-template hash does not."""
        head = RewardHead.load(head_dir)
        config = backbone if isinstance(backbone, bb.BackboneConfig) else bb.BackboneConfig(model=str(backbone))
        return cls(bb.load(replace(config, **backbone_overrides)), head)

    @torch.inference_mode()
    def states(self, prompts: Sequence[str | Messages], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_states [N, H], response_states [N, H]) for each (prompt, response)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.backbone.encode(as_messages(p), r) for p, r in zip(prompts, responses)]
        # Group by token-identical prefix; a causal backbone shares it between responses.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, e in enumerate(encoded):
            key = tuple(e.prefix) if self.backbone.shares_prefix else (i,)
            groups.setdefault(key, []).append(i)
        rows = []
        for members in groups.values():
            for start in range(0, len(members), self.max_responses_per_row):
                rows.append(members[start:start + self.max_responses_per_row])
        rows.sort(key=lambda m: -(len(encoded[m[0]].prefix) + sum(len(encoded[i].response) for i in m)))
        hidden = self.backbone.hidden_size
        prompt_states, response_states = torch.zeros(len(encoded), hidden), torch.zeros(len(encoded), hidden)
        batch: list[list[int]] = []

        def flush() -> None:
            if not batch:
                return
            prompt, response = self.backbone.embed_rows(
                [(encoded[m[0]].prefix, [encoded[i].response for i in m]) for m in batch])
            flat = [i for m in batch for i in m]
            counts = torch.tensor([len(m) for m in batch])
            prompt_states[flat] = torch.repeat_interleave(prompt, counts, dim=0)
            response_states[flat] = response
            batch.clear()

        width = 0
        for members in rows:  # longest first: the first row of a batch sets its width
            length = len(encoded[members[0]].prefix) + sum(len(encoded[i].response) for i in members)
            width = max(width, length) if batch else length
            if batch and width * (len(batch) + 1) > self.token_budget:
                flush()
                width = length
            batch.append(members)
        flush()
        return prompt_states, response_states

    @torch.inference_mode()
    def score(self, prompts: Sequence[str | Messages], responses: Sequence[str],
              routing_weights: Sequence[float] | torch.Tensor | None = None) -> Scores:
        """Score each (prompt, response). ``routing_weights`` ([K] for all, or [N, K]) replace
        the router's output: steering sets one expert's weight this way."""
        prompt_states, response_states = self.states(prompts, responses)
        if routing_weights is not None:
            routing_weights = torch.as_tensor(routing_weights, dtype=torch.float32)
            k = self.head.num_experts
            if routing_weights.shape[-1] != k or not torch.allclose(routing_weights.sum(-1), torch.tensor(1.0), atol=1e-4):
                raise ValueError(f"routing_weights must have {k} entries per row summing to 1, got {routing_weights.tolist()}")
        device = self.backbone.device
        out = self.head(prompt_states.to(device), response_states.to(device),
                        None if routing_weights is None else routing_weights.to(device))
        return Scores(out["reward"].cpu(), out["expert_rewards"].cpu(), out["routing_weights"].cpu())
