"""Training objectives, one function per equation of the paper (§3) plus MiCRo's regularizer.

Notation, shared with ``pipeline/models.py``:

    log_weights  [B, K]  log pi_phi(x): the router's log-softmax output per example
    margins      [B, K]  Delta_k = r_k(x, y_w) - r_k(x, y_l): each expert's reward margin

Every function returns a scalar tensor averaged over the batch, so the total objective
(Eq. 7) is a plain weighted sum. Entropies are divided by log K so that 0 means one-hot
routing and 1 means uniform routing, whatever K is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(margin: torch.Tensor) -> torch.Tensor:
    """Eq. 1 as a loss: -log sigma(r(x, y_w) - r(x, y_l)), averaged. ``margin`` is [B] or [B, H]
    (H independent heads, e.g. the HyRe ensemble: the sum over heads is taken by the caller)."""
    return -F.logsigmoid(margin).mean(dim=0).sum()


def mixture_bt_loss(log_weights: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Eq. 3: -mean_x log sum_k pi_k(x) sigma(Delta_k).

    Computed as -logsumexp_k(log pi_k + log sigma(Delta_k)). Both terms are taken in log
    space, so a confident router (pi_k ~ 1e-30) or an extreme margin (|Delta| ~ 1e3) never
    takes the log of an underflowed sum of probabilities."""
    return -torch.logsumexp(log_weights + F.logsigmoid(margins), dim=-1).mean()


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_k p_k log p_k over the last axis, from log-probabilities (0 log 0 = 0).
    A weight of exactly 0 (log p = -inf) would give 0 * -inf = NaN; clamping log p to the
    dtype's most negative finite value gives 0 instead, with finite gradients."""
    return -(log_p.exp() * log_p.clamp(min=torch.finfo(log_p.dtype).min)).sum(dim=-1)


def local_sparsity_loss(log_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 4: E_x[ H(pi(x)) / log K ]. Minimizing it makes each example's routing confident.
    (K = 1 has nothing to route: 0.)"""
    if log_weights.shape[-1] == 1:
        return log_weights.new_zeros(())
    return entropy(log_weights).mean() / math.log(log_weights.shape[-1])


def global_balance_loss(log_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 5: -H(mean_x pi(x)) / log K over the batch. Minimizing it spreads the batch's
    examples over all experts, which keeps Eq. 4 from collapsing onto a single expert."""
    num_experts = log_weights.shape[-1]
    if num_experts == 1:
        return log_weights.new_zeros(())
    log_mean = torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])
    return -entropy(log_mean) / math.log(num_experts)


def pairwise_correlation(margins: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation matrix [K, K] of the columns of ``margins`` over the batch.

    ``eps`` inside the square root keeps a zero-variance column (a dead expert, or a batch
    of identical pairs) finite: its correlations come out 0 instead of 0/0 = NaN, and the
    gradient stays finite too."""
    centered = margins - margins.mean(dim=0, keepdim=True)
    cov = centered.T @ centered / margins.shape[0]
    std = torch.sqrt(torch.diagonal(cov) + eps)
    return cov / (std[:, None] * std[None, :])


def diversity_loss(margins: torch.Tensor) -> torch.Tensor:
    """Eq. 6: 2 / (K (K-1)) sum_{i<j} corr(Delta_i, Delta_j)^2, the mean squared
    correlation over distinct expert pairs."""
    num_experts = margins.shape[-1]
    if num_experts < 2:
        return margins.new_zeros(())
    corr = pairwise_correlation(margins)
    i, j = torch.triu_indices(num_experts, num_experts, offset=1, device=margins.device)
    return (corr[i, j] ** 2).mean()


def micro_loss(log_weights: torch.Tensor) -> torch.Tensor:
    """MiCRo's regularizer without its alpha: mean_x sum_k p_k log p_k (negative entropy).
    Minimizing it pushes routing toward UNIFORM, the opposite of Eq. 4."""
    return -entropy(log_weights).mean()


def total_loss(log_weights: torch.Tensor, margins: torch.Tensor, *, lambda_ls: float = 0.0,
               lambda_gb: float = 0.0, lambda_div: float = 0.0, micro_alpha: float = 0.0,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 7: L_RM + lambda_ls L_ls + lambda_gb L_gb + lambda_div L_div (+ alpha * MiCRo's term).

    Vanilla MoE is all weights 0; MiCRo is micro_alpha=0.5; sparse MoE uses the lambdas.
    Returns the loss and each unweighted term, detached, for logging (tensors, so that a
    GPU run does not synchronize on every step)."""
    terms = {
        "rm": mixture_bt_loss(log_weights, margins),
        "ls": local_sparsity_loss(log_weights),
        "gb": global_balance_loss(log_weights),
        "div": diversity_loss(margins),
        "micro": micro_loss(log_weights),
    }
    loss = (terms["rm"] + lambda_ls * terms["ls"] + lambda_gb * terms["gb"]
            + lambda_div * terms["div"] + micro_alpha * terms["micro"])
    return loss, {name: value.detach() for name, value in terms.items()}
