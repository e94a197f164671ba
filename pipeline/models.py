"""Reward heads trained on cached backbone states (paper §3-4, App. A).

Every head maps (prompt_state, response_state) to the same two tensors:

    log_weights     [B, K]  log pi_phi(x), the routing distribution over K experts
    expert_rewards  [B, K]  r_k(x, y), one scalar reward per expert

and the reward is Eq. 2, r(x, y) = sum_k pi_k(x) r_k(x, y). Sharing one interface lets the
losses, metrics, steering and adaptation code treat all variants alike:

- ``moe``:    K bias-free linear experts on the response state, routed by an MLP (or a
              linear layer, as in MiCRo's public code) on the prompt state.
- ``single``: one linear head; K = 1 and pi = 1, so Eq. 3 reduces to plain Bradley-Terry.
- ``hyre``:   an ensemble of linear heads, each added to a frozen random prior head (Lee et
              al. 2024). Its "routing" is a learned-at-test-time weight vector that does not
              depend on x: uniform after training, reweighted by HyRe from a few labels.

Configuration is plain data (:class:`HeadConfig`) and travels in ``config.json`` next to
the weights, so a saved head reloads without the params file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from pipeline.errors import UserError
from pipeline.integrity import ArtifactError, verify_checksums, write_checksums

if TYPE_CHECKING:  # type only: running a head must not import the cache reader
    from pipeline.split_store import SplitStore

KINDS = ("moe", "single", "hyre")
# The five heads the paper compares (trained by pipeline/train.py): kind single, moe x 3, hyre.
VARIANTS = ("single", "vanilla", "micro", "sparse", "hyre")
ROUTERS = ("mlp", "linear")
HEAD_FILES = ("config.json", "model.safetensors")  # what load() reads; both checksummed


@dataclass
class HeadConfig:
    kind: str = "moe"                 # moe | single | hyre
    hidden_size: int = 576            # the backbone's state size (from the cache manifest)
    num_experts: int = 5              # K for moe; ensemble size for hyre; forced to 1 for single
    router: str = "mlp"               # mlp (paper) | linear (MiCRo's public code)
    router_hidden: int = 128
    router_dropout: float = 0.2       # training only
    router_jitter: float = 0.25       # multiplicative input noise U(1-eps, 1+eps), training only
    prior_scale: float = 1.0          # hyre: weight of each frozen random prior head
    # Provenance copied from the cache manifest: a head is only valid on states from the
    # same backbone and chat template, and loading checks it (see check_compatible).
    backbone: str = ""
    template_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; choose from {KINDS}")
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose from {ROUTERS}")
        if self.kind == "single":
            self.num_experts = 1
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")


class Router(nn.Module):
    """pi_phi(x): softmax over K experts from the prompt state. Returns log-probabilities."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.jitter = cfg.router_jitter
        self.dropout = nn.Dropout(cfg.router_dropout)
        if cfg.router == "mlp":
            self.net = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.router_hidden), nn.ReLU(),
                                     nn.Linear(cfg.router_hidden, cfg.num_experts))
        else:
            self.net = nn.Linear(cfg.hidden_size, cfg.num_experts)
        # Zero output layer: every router starts exactly uniform, so whatever routing it
        # ends with was learned from the objective, not inherited from a random init.
        output = self.net[-1] if cfg.router == "mlp" else self.net
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)

    def forward(self, prompt_state: torch.Tensor) -> torch.Tensor:
        x = prompt_state
        if self.training and self.jitter > 0:
            # Switch-Transformer-style multiplicative jitter: keeps the router from locking
            # onto tiny differences between prompt states early in training.
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        return F.log_softmax(self.net(self.dropout(x)), dim=-1)


class RewardHead(nn.Module):
    """One module for all three variants; see the module docstring."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.config = cfg
        k = cfg.num_experts
        # Per-dimension standardization of the cached states, fitted on the train split
        # (see set_input_stats). Raw LLM states carry a large shared component (SmolLM2:
        # norm ~50, of which ~45 is the mean), which makes a router trained with a fixed
        # learning rate swing between experts on noise. Reward MARGINS do not change: the
        # shift is the same for both responses of a pair.
        for name in ("prompt", "response"):
            self.register_buffer(f"{name}_mean", torch.zeros(cfg.hidden_size))
            self.register_buffer(f"{name}_scale", torch.ones(cfg.hidden_size))
        self.experts = nn.Linear(cfg.hidden_size, k, bias=False)  # row k is expert k's w_k
        self.router = Router(cfg) if cfg.kind == "moe" and k > 1 else None
        if cfg.kind == "hyre":
            prior = torch.empty(k, cfg.hidden_size)
            nn.init.kaiming_uniform_(prior, a=math.sqrt(5))  # same init as a trainable head
            self.register_buffer("prior", prior)
            # Ensemble weights: uniform after training; HyRe sets them at test time.
            self.register_buffer("ensemble_log_weights", torch.full((k,), -math.log(k)))

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @torch.no_grad()
    def set_input_stats(self, prompt_mean: torch.Tensor, prompt_std: torch.Tensor,
                        response_mean: torch.Tensor, response_std: torch.Tensor) -> None:
        """Standardize inputs with train-split statistics; a constant dimension keeps scale 1."""
        for name, mean, std in (("prompt", prompt_mean, prompt_std), ("response", response_mean, response_std)):
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean))
            std = torch.as_tensor(std, dtype=torch.float32)
            getattr(self, f"{name}_scale").copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def expert_rewards(self, response_state: torch.Tensor) -> torch.Tensor:
        """r_k(x, y) for every expert: [B, K]."""
        h = (response_state - self.response_mean) / self.response_scale
        rewards = self.experts(h)
        if self.config.kind == "hyre":
            rewards = rewards + self.config.prior_scale * (h @ self.prior.T)
        return rewards

    def log_weights(self, prompt_state: torch.Tensor) -> torch.Tensor:
        """log pi(x): [B, K]."""
        batch = prompt_state.shape[0]
        if self.router is not None:
            return self.router((prompt_state - self.prompt_mean) / self.prompt_scale)
        if self.config.kind == "hyre":
            return self.ensemble_log_weights.expand(batch, -1)
        return prompt_state.new_zeros(batch, 1)  # single head: pi = 1

    def forward(self, prompt_state: torch.Tensor, response_state: torch.Tensor,
                routing_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Score responses. ``routing_weights`` ([K] or [B, K], rows summing to 1) overrides
        the router, which is how steering intervenes (App. A, Eq. 14-18)."""
        rewards = self.expert_rewards(response_state)
        if routing_weights is None:
            log_w = self.log_weights(prompt_state)
            weights = log_w.exp()
        else:
            weights = routing_weights.to(rewards).expand_as(rewards)
        return {"reward": (weights * rewards).sum(-1), "expert_rewards": rewards, "routing_weights": weights}

    def pair_outputs(self, prompt_state: torch.Tensor, chosen_state: torch.Tensor,
                     rejected_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_weights [B, K], margins [B, K]) for a batch of preference pairs: the inputs
        of every loss in ``pipeline/losses.py``. One expert matmul covers both responses."""
        rewards = self.expert_rewards(torch.cat([chosen_state, rejected_state]))
        chosen, rejected = rewards.chunk(2)
        return self.log_weights(prompt_state), chosen - rejected

    # ----------------------------------------------------------------- persistence

    def save(self, directory: str | Path, **extra: Any) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        config = asdict(self.config)
        config["extra"] = {**config["extra"], **extra}
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_checksums(directory, HEAD_FILES)  # last: its presence means the folder is complete

    @classmethod
    def load(cls, directory: str | Path, map_location: str = "cpu") -> "RewardHead":
        """Load a saved head, after checking its files against ``checksums.json``: a head
        with a flipped byte must not score (issue: silent wrong rewards)."""
        directory = Path(directory)
        for name in HEAD_FILES:
            if not (directory / name).exists():
                raise ArtifactError(f"{directory}: no {name}; is this a trained head directory "
                                    f"(data/models/<experiment>/<variant>)?")
        recover = f"retrain or restore it (`dvc repro`, or `dvc checkout {directory}`)"
        verify_checksums(directory, recover)
        try:  # the bytes are the ones save() wrote; failing here means save() wrote them wrong
            head = cls(HeadConfig(**json.loads((directory / "config.json").read_text())))
            head.load_state_dict(load_file(str(directory / "model.safetensors"), device=map_location))
        except (ValueError, TypeError, KeyError, RuntimeError) as e:
            raise ArtifactError(f"{directory}: not a head this smoe-rm can load ({type(e).__name__}: "
                                f"{str(e).splitlines()[0]}); {recover}") from None
        return head.eval()


class IncompatibleFeaturesError(UserError, ValueError):
    pass


def check_compatible(config: HeadConfig, manifest: dict[str, Any], where: str) -> None:
    """Refuse states from another backbone, template or hidden size than the head was built for."""
    problems = []
    if int(manifest["hidden_size"]) != config.hidden_size:
        problems.append(f"hidden size {manifest['hidden_size']} != head's {config.hidden_size}")
    if config.backbone and manifest.get("backbone") != config.backbone:
        problems.append(f"backbone {manifest.get('backbone')!r} != head's {config.backbone!r}")
    if config.template_hash and manifest.get("template_hash") != config.template_hash:
        problems.append(f"chat-template hash {manifest.get('template_hash')!r} != head's {config.template_hash!r}")
    if problems:
        raise IncompatibleFeaturesError(f"{where}: features do not match this head: " + "; ".join(problems))


@torch.no_grad()
def predict(head: RewardHead, states: "SplitStore", batch_size: int = 1024,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(routing weights [N, K], expert margins [N, K]) for every pair, in ``states.pair_ids`` order."""
    head.eval()
    weights = np.zeros((len(states), head.num_experts))
    margins = np.zeros((len(states), head.num_experts))
    for batch in states.batches(batch_size, block_pairs=batch_size * 8, device=device):
        log_w, m = head.pair_outputs(batch.prompt, batch.chosen, batch.rejected)
        weights[batch.rows] = log_w.exp().double().cpu().numpy()
        margins[batch.rows] = m.double().cpu().numpy()
    return weights, margins
