"""smoe-rm sparse Mixture-of-Experts reward model, as Hugging Face remote code.

`smoe export` copies this file into an exported folder as ``modeling_smoe.py`` and points
``config.json``'s ``auto_map`` at :class:`SmoeRewardConfig` and :class:`SmoeMoERewardModel`,
the way ArmoRM ships its gating model, so that

    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    text = tokenizer.apply_chat_template(prompt_messages + [{"role": "assistant", "content": response}],
                                         tokenize=False)
    out = model(**tokenizer(text, return_tensors="pt"))
    out.logits           # [B, 1]  r(x, y) = sum_k pi_k(x) r_k(x, y)   (paper Eq. 2)
    out.expert_rewards   # [B, K]  r_k(x, y)
    out.routing_weights  # [B, K]  pi(x)

The model takes ONE chat-templated sequence, as every consumer of a reward checkpoint
passes it (TRL, reward-bench, vLLM), and finds both of its inputs in it:

- the response state: the final-layer state at the last real token (the rightmost
  position of ``attention_mask``, or the rightmost non-pad token without a mask);
- the prompt state (the router's input): the final-layer state at the last token of the
  LAST assistant header in the sequence. The header's token ids are stored in
  ``config.smoe["assistant_header_ids"]`` at export (the tokens the chat template adds
  for ``add_generation_prompt=True``). A causal backbone's state there depends only on
  the tokens before it, so it equals the state of the prompt rendered alone with a
  generation prompt, which is what the head was trained on; one forward pass gives both.

Only ``torch`` and ``transformers`` are imported. The one line marked ``smoe:backbone``
names the backbone's own classes; the exporter rewrites it for the backbone it exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import ModelOutput

from transformers import LlamaConfig as BackboneConfig, LlamaModel as BackboneModel, LlamaPreTrainedModel as BackbonePreTrainedModel  # smoe:backbone  # noqa: E501


class SmoeRewardConfig(BackboneConfig):
    """The backbone's config plus ``smoe`` (the head's shape). Its own ``model_type``
    makes loading WITHOUT ``trust_remote_code`` fail loudly: under the backbone's model
    type, ``AutoModelForSequenceClassification`` would silently build the backbone's plain
    classifier with a random score head (the generic-loader failure of OpenRLHF issue 486)."""

    model_type = "smoe_reward"


@dataclass
class SmoeRewardOutput(ModelOutput):
    """``logits`` is the reward, shaped like a one-label sequence classifier's output."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None            # [B, 1]
    expert_rewards: torch.FloatTensor | None = None    # [B, K]
    routing_weights: torch.FloatTensor | None = None   # [B, K]
    prompt_positions: torch.LongTensor | None = None   # [B] where the prompt state was read
    response_positions: torch.LongTensor | None = None  # [B] where the response state was read


class SmoeRouter(nn.Module):
    """pi(x) from the prompt state: an MLP (the paper's) or a linear layer. Always runs in
    float32: routing weights are a softmax over small logit differences."""

    def __init__(self, hidden_size: int, num_experts: int, kind: str, router_hidden: int):
        super().__init__()
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(hidden_size, router_hidden), nn.ReLU(),
                                     nn.Linear(router_hidden, num_experts))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, num_experts))

    def forward(self, prompt_state: torch.Tensor) -> torch.Tensor:
        x = prompt_state.float()
        for layer in self.net:
            x = F.linear(x, layer.weight.float(), layer.bias.float()) if isinstance(layer, nn.Linear) else layer(x)
        return F.softmax(x, dim=-1)


def last_real_positions(real: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost real token of each row (right or left padding alike)."""
    positions = torch.arange(real.shape[1], device=real.device)
    return (positions * real.long()).argmax(-1)


def prompt_end_positions(input_ids: torch.Tensor, real: torch.Tensor, header: list[int]) -> torch.Tensor:
    """Index of the last token of the last assistant header (``header`` ids) in each row.

    Raises ValueError naming the rows without one: such an input was not rendered with
    this model's chat template, and no prompt state can be read from it."""
    width = len(header)
    if input_ids.shape[1] < width:
        raise ValueError(f"sequences of {input_ids.shape[1]} tokens cannot hold the assistant header "
                         f"({width} tokens)")
    pattern = torch.tensor(header, device=input_ids.device)
    windows = input_ids.unfold(1, width, 1)                   # [B, T - width + 1, width]
    hit = (windows == pattern).all(-1) & real.unfold(1, width, 1).all(-1)
    starts = torch.arange(hit.shape[1], device=input_ids.device)
    last = torch.where(hit, starts, torch.full_like(starts, -1)).max(-1).values
    missing = (last < 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"row(s) {missing}: no assistant header (token ids {header}) found; the input must be "
                         f"prompt + response rendered with this model's chat template "
                         f"(tokenizer.apply_chat_template(messages, tokenize=False))")
    return last + width - 1


class SmoeMoERewardModel(BackbonePreTrainedModel):
    """Backbone + K linear experts on the response state + a router on the prompt state.

    The head's input standardization ((h - mean) / scale, fitted on the train split) is
    folded into the first layer of the experts and of the router at export, so each
    expert is ``w_k / scale . h - (w_k / scale) . mean``: an exact rewrite, which is why
    the experts here have a bias and smoe-rm's have none. ``config.smoe`` holds the
    head's shape: ``num_experts``, ``router`` (mlp | linear), ``router_hidden`` and
    ``assistant_header_ids``."""

    config_class = SmoeRewardConfig
    # The head stays float32 when the backbone is loaded in bf16/fp16 (dtype=...).
    _keep_in_fp32_modules = ["smoe_experts", "smoe_router"]

    def __init__(self, config: Any):
        super().__init__(config)
        spec = config.smoe
        hidden, k = config.hidden_size, int(spec["num_experts"])
        self.model = BackboneModel(config)
        self.smoe_experts = nn.Linear(hidden, k, bias=True)  # row k: expert k, standardization folded in
        self.smoe_router = SmoeRouter(hidden, k, spec["router"], int(spec["router_hidden"]))
        self.header_ids = [int(i) for i in spec["assistant_header_ids"]]
        self.post_init()

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                routing_weights: torch.Tensor | None = None, labels: Any = None,
                **kwargs: Any) -> SmoeRewardOutput:
        """``routing_weights`` ([K] or [B, K], rows summing to 1) replaces the router's
        output: steering sets one expert's weight this way. ``labels`` is accepted and
        ignored (no training objective is defined here)."""
        kwargs.pop("return_dict", None)
        kwargs.pop("use_cache", None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        hidden = out.last_hidden_state
        if attention_mask is not None and attention_mask.dim() == 2:
            real = attention_mask.bool()
        elif self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        else:
            real = torch.ones_like(input_ids, dtype=torch.bool)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        response_pos = last_real_positions(real)
        prompt_pos = prompt_end_positions(input_ids, real, self.header_ids)
        experts = self.smoe_experts
        rewards = F.linear(hidden[rows, response_pos].float(), experts.weight.float(), experts.bias.float())
        if routing_weights is None:
            weights = self.smoe_router(hidden[rows, prompt_pos])
        else:
            weights = torch.as_tensor(routing_weights, dtype=rewards.dtype, device=rewards.device).expand_as(rewards)
        reward = (weights * rewards).sum(-1, keepdim=True)
        return SmoeRewardOutput(logits=reward, expert_rewards=rewards, routing_weights=weights,
                                prompt_positions=prompt_pos, response_positions=response_pos)
