"""Test-time personalization (paper §6.2, App. A "Personalization", App. G-H).

A trained head is fitted to one user or attribute from a handful of labelled pairs by
changing only how its experts are combined; the experts themselves never move:

- ``moe`` heads: Hedge router adaptation, MiCRo's stage 2 (Shen et al. 2025, Alg. 1).
  Per pair i and expert k, the expert's own Bradley-Terry loss on the new label is

      L_ik = -log sigma(r_k(x_i, y_w) - r_k(x_i, y_l))

  and the target routing is the Hedge (multiplicative-weights) update of the router's
  current output f(x_i):

      omega_ik  propto  f_k(x_i) * exp(-L_ik / tau)

  The router is trained by cross-entropy towards omega, which is recomputed from the
  current router once per epoch and held fixed within it. With tau = 1e-3 the targets are
  nearly one-hot on each pair's best expert, so everything is computed in log space.
- ``hyre`` heads: HyRe's ensemble reweighting (Lee et al. 2024), input-independent:

      w_k = exp(-L_k(D) / T) / sum_j exp(-L_j(D) / T)

  with L_k(D) head k's BT negative log-likelihood on D, summed (default: the Bayesian
  posterior over heads under a uniform prior when T = 1) or averaged over D.
- ``single`` heads have nothing to combine: :func:`adapt` returns them unchanged, the
  unadapted baseline of Tables 5 and 13.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from pipeline import metrics
from pipeline.models import RewardHead

REDUCTIONS = ("sum", "mean")


@dataclass
class AdaptConfig:
    tau: Annotated[float, Gt(0)] = 1e-3               # Hedge temperature (MiCRo's recommendation)
    epochs: Annotated[int, Ge(1)] = 10                # App. A: 10 epochs, batch 32, lr 0.01
    batch_size: Annotated[int, Ge(1)] = 32
    lr: Annotated[float, Gt(0)] = 0.01
    hyre_temperature: Annotated[float, Gt(0)] = 1.0   # HyRe's T
    hyre_reduction: Literal["sum", "mean"] = "sum"     # L_k(D) summed or averaged over D
    seed: int = 0                   # order of the pairs within each epoch

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.hyre_temperature > 0:
            raise ValueError(f"hyre_temperature must be > 0, got {self.hyre_temperature!r}")
        if self.hyre_reduction not in REDUCTIONS:
            raise ValueError(f"hyre_reduction must be one of {REDUCTIONS}, got {self.hyre_reduction!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


def pair_accuracy(head: RewardHead, prompt: torch.Tensor, chosen: torch.Tensor,
                  rejected: torch.Tensor) -> tuple[float, list[float]]:
    """(accuracy, mean routing weight per expert) of ``head`` on labelled pairs: what an
    adaptation is judged by, before and after."""
    with torch.no_grad():
        log_w, margins = head.pair_outputs(prompt, chosen, rejected)
    weights = log_w.exp().double().cpu().numpy()
    margin = metrics.mixture_margin(weights, margins.double().cpu().numpy())
    return metrics.accuracy(margin), weights.mean(axis=0).tolist()


def method_for(head: RewardHead) -> str:
    """How :func:`adapt` personalizes this head: hedge | hyre | none."""
    if head.router is not None:
        return "hedge"
    if head.config.kind == "hyre":
        return "hyre"
    return "none"


def expert_losses(margins: torch.Tensor) -> torch.Tensor:
    """L_ik = -log sigma(Delta_ik), per pair and expert, without overflow for any margin."""
    return F.softplus(-margins)


def hedge_log_targets(log_weights: torch.Tensor, margins: torch.Tensor, tau: float) -> torch.Tensor:
    """log omega [B, K]: the Hedge update of the router's output, normalized over experts.

    Computed in float64 log space: at tau = 1e-4 a loss of 10 is an exponent of -1e5, which
    no probability-space formula survives. As tau -> 0 this is the one-hot of each pair's
    lowest-loss (= highest-margin) expert."""
    logits = log_weights.double() - expert_losses(margins.double()) / tau
    return (logits - torch.logsumexp(logits, dim=-1, keepdim=True)).to(log_weights.dtype)


def hedge_adapt(head: RewardHead, prompt: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                config: AdaptConfig) -> RewardHead:
    """MiCRo's Algorithm 1 on a copy of ``head``: only the router is trained."""
    if head.router is None:
        raise ValueError("Hedge adapts a router; this head has none (single or hyre)")
    adapted = copy.deepcopy(head).eval()  # eval: no router dropout/jitter, a deterministic fit
    for p in adapted.parameters():
        p.requires_grad_(False)
    for p in adapted.router.parameters():
        p.requires_grad_(True)
    with torch.no_grad():  # the experts are frozen, so their margins are computed once
        _, margins = adapted.pair_outputs(prompt, chosen, rejected)
    optimizer = torch.optim.Adam(adapted.router.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(prompt)
    for _ in range(config.epochs):
        with torch.no_grad():  # targets from the current router, fixed for the epoch
            targets = hedge_log_targets(adapted.log_weights(prompt), margins, config.tau).exp()
        for idx in torch.randperm(n, generator=generator).split(config.batch_size):
            log_pi = adapted.log_weights(prompt[idx])
            loss = -(targets[idx] * log_pi).sum(-1).mean()  # cross-entropy to the soft targets
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for p in adapted.parameters():
        p.requires_grad_(False)
    return adapted


def hyre_log_weights(margins: torch.Tensor, temperature: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """log w [K]: HyRe's weights from the heads' margins [n, K] on the adaptation set."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    losses = expert_losses(margins.double())
    total = losses.sum(0) if reduction == "sum" else losses.mean(0)
    return torch.log_softmax(-total / temperature, dim=-1).to(margins.dtype)


def hyre_adapt(head: RewardHead, prompt: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
               config: AdaptConfig) -> RewardHead:
    """A copy of a hyre ``head`` whose ensemble weights are HyRe's reweighting on the pairs."""
    if head.config.kind != "hyre":
        raise ValueError(f"HyRe reweights an ensemble; this head is {head.config.kind!r}")
    adapted = copy.deepcopy(head).eval()
    with torch.no_grad():
        _, margins = adapted.pair_outputs(prompt, chosen, rejected)
        adapted.ensemble_log_weights.copy_(hyre_log_weights(margins, config.hyre_temperature, config.hyre_reduction))
    return adapted


def adapt(head: RewardHead, prompt: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
          config: AdaptConfig) -> RewardHead:
    """Personalize ``head`` on labelled pairs (states [n, H] each); see the module docstring.
    Returns a new head; the input head is not modified."""
    if not len(prompt) == len(chosen) == len(rejected) or len(prompt) == 0:
        raise ValueError(f"need the same, non-zero number of prompt/chosen/rejected states, got "
                         f"{len(prompt)}/{len(chosen)}/{len(rejected)}")
    method = method_for(head)
    if method == "hedge":
        adapted = hedge_adapt(head, prompt, chosen, rejected, config)
    elif method == "hyre":
        adapted = hyre_adapt(head, prompt, chosen, rejected, config)
    else:
        adapted = copy.deepcopy(head).eval()
    adapted.config = copy.deepcopy(head.config)
    adapted.config.extra = {**adapted.config.extra,
                            "adaptation": {"method": method, "num_pairs": len(prompt), **asdict(config)}}
    return adapted
