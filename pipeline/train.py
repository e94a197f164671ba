"""Training the reward heads from the feature cache (paper §4, App. A "Training Details").

The backbone never runs here: inputs are the cached prompt and response states, streamed
from disk by ``pipeline/split_store.py``. One call of :func:`train_variant` trains one of

    single   one linear head, Bradley-Terry
    vanilla  MoE, Eq. 3 alone (all lambda = 0)
    micro    MoE, Eq. 3 + alpha * sum_k p_k log p_k (MiCRo, alpha = 0.5)
    sparse   MoE, Eq. 7 with lambda_ls, lambda_gb, lambda_div
    hyre     20 linear heads + frozen random priors, uniform sum of BT losses

with the paper's recipe: AdamW, lr 0.002 experts / 0.0005 router, 5 % linear warmup then
linear decay to 0 (``train.lr_schedule``), 3 epochs, batch 16, validation after every epoch.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

import numpy as np
import torch

from pipeline import losses, metrics
from pipeline.models import VARIANTS, HeadConfig, RewardHead, predict
from pipeline.progress import progress
from pipeline.split_store import SplitStore, SplitStores
from pipeline.errors import UserError



LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The multiplier of the base learning rates for optimizer step ``step`` (0-based) of
    ``total``: linear warmup over the first ``warmup`` steps ((step + 1) / warmup, so the
    first step already moves), then 1 (``constant``), a linear decay that reaches 0 after
    the last step (``linear``: (total - step) / (total - warmup), HF's
    get_linear_schedule_with_warmup), or a half cosine to 0 (``cosine``)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / (total - warmup)  # 0 at the first step after warmup
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose from {LR_SCHEDULES}")


@dataclass
class TrainConfig:
    epochs: Annotated[int, Ge(1)] = 3
    batch_size: Annotated[int, Ge(1)] = 16
    lr_experts: Annotated[float, Gt(0)] = 0.002
    lr_router: Annotated[float, Gt(0)] = 0.0005
    weight_decay: Annotated[float, Ge(0)] = 0.01        # torch's AdamW default ("a default AdamW optimizer")
    warmup_fraction: Annotated[float, Interval(ge=0, lt=1)] = 0.05
    # After warmup: linear decay to 0 (HF Trainer's default lr_scheduler_type), cosine decay to
    # 0 (MiCRo's training script), or constant. App. A names AdamW and "5% warmup steps"
    # (HF's warmup_ratio) but no schedule; both plausible sources decay, so linear is the default.
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    router: Literal["mlp", "linear"] = "mlp"               # mlp (paper) | linear (MiCRo's code)
    router_hidden: Annotated[int, Ge(1)] = 128
    router_dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.2
    router_jitter: Annotated[float, Interval(ge=0, lt=1)] = 0.25
    micro_alpha: Annotated[float, Ge(0)] = 0.5
    hyre_heads: Annotated[int, Ge(1)] = 20
    seed: Annotated[int, Ge(0)] = 0
    block_pairs: Annotated[int, Ge(1)] = 8192           # pairs per streamed block (memory: block * 3 * H * 2 bytes)
    curve_every: Annotated[int, Ge(1)] = 1              # training-curve rows: the mean of every N steps
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "hyre_heads", "block_pairs", "router_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.block_pairs % self.batch_size:
            raise ValueError(f"train.block_pairs ({self.block_pairs}) must be a multiple of "
                             f"train.batch_size ({self.batch_size})")


@dataclass
class Objective:
    """Weights of the loss terms (Eq. 7 + MiCRo). ``ensemble``: HyRe's sum of BT losses."""
    lambda_ls: float = 0.0
    lambda_gb: float = 0.0
    lambda_div: float = 0.0
    micro_alpha: float = 0.0
    ensemble: bool = False


@dataclass
class Variant:
    name: str
    head: HeadConfig
    objective: Objective = field(default_factory=Objective)


def make_variant(name: str, *, hidden_size: int, num_experts: int, lambdas: dict[str, float],
                 config: TrainConfig, provenance: dict[str, str] | None = None) -> Variant:
    """The head architecture and objective of one named variant."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
    head = dict(hidden_size=hidden_size, num_experts=num_experts, router=config.router,
                router_hidden=config.router_hidden, router_dropout=config.router_dropout,
                router_jitter=config.router_jitter, **(provenance or {}))
    if name == "single":
        return Variant(name, HeadConfig(kind="single", **{**head, "num_experts": 1}))
    if name == "hyre":
        return Variant(name, HeadConfig(kind="hyre", **{**head, "num_experts": config.hyre_heads}),
                       Objective(ensemble=True))
    if name == "sparse":  # the only variant that reads the lambdas (Eq. 7)
        objective = Objective(lambda_ls=lambdas["lambda_ls"], lambda_gb=lambdas["lambda_gb"],
                              lambda_div=lambdas["lambda_div"])
    else:
        objective = Objective(micro_alpha=config.micro_alpha) if name == "micro" else Objective()
    return Variant(name, HeadConfig(kind="moe", **head), objective)


def batch_loss(head: RewardHead, objective: Objective, prompt: torch.Tensor, chosen: torch.Tensor,
               rejected: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The variant's objective on one batch, and its terms (detached) for the curves."""
    log_weights, margins = head.pair_outputs(prompt, chosen, rejected)
    if objective.ensemble:
        loss = losses.bradley_terry_loss(margins)  # each head on its own, summed (HyRe)
        return loss, {"loss": loss.detach()}
    loss, terms = losses.total_loss(log_weights, margins, lambda_ls=objective.lambda_ls,
                                    lambda_gb=objective.lambda_gb, lambda_div=objective.lambda_div,
                                    micro_alpha=objective.micro_alpha)
    return loss, {"loss": loss.detach(), **terms}


def validation_metrics(head: RewardHead, states: SplitStore, device: str = "cpu") -> dict[str, float]:
    """The behaviour metrics (accuracy, Eq. 4-6) logged after every epoch."""
    return metrics.behaviour_metrics(*predict(head, states, device=device))


def _param_groups(head: RewardHead, config: TrainConfig) -> list[dict[str, Any]]:
    groups = [{"params": list(head.experts.parameters()), "lr": config.lr_experts, "name": "experts"}]
    if head.router is not None:
        groups.append({"params": list(head.router.parameters()), "lr": config.lr_router, "name": "router"})
    return groups


def train_variant(variant: Variant, train: SplitStore, validation: SplitStore, config: TrainConfig,
                  *, show_progress: bool = True) -> tuple[RewardHead, dict[str, list[dict[str, float]]]]:
    """Train one variant. Returns the head (eval mode) and its curves:
    ``{"train": [{"step", <loss terms>}...], "validation": [{"step", "epoch", <metrics>}...]}``."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = RewardHead(variant.head)
    head.set_input_stats(*(torch.from_numpy(m).float() for m in train.moments(config.block_pairs)))
    head.to(config.device)
    optimizer = torch.optim.AdamW(_param_groups(head, config), weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, round(config.warmup_fraction * total))
    # Linear warmup to the base rates ("5% warmup steps", App. A), then config.lr_schedule.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, config.lr_schedule))
    curves: dict[str, list[dict[str, float]]] = {"train": [], "validation": []}
    # Loss terms of the steps since the last curve row, summed on the device (float64): one
    # host sync per curve row, and nothing kept per step (35K steps an epoch at 560K pairs).
    names: list[str] = []
    window_sum: torch.Tensor | None = None
    window_start = 1
    bar = progress(total, f"train {variant.name}", "step", enabled=show_progress)
    step = 0
    for epoch in range(1, config.epochs + 1):
        head.train()
        for batch in train.batches(config.batch_size, shuffle=True, rng=rng,
                                   block_pairs=config.block_pairs, device=config.device):
            loss, terms = batch_loss(head, variant.objective, batch.prompt, batch.chosen, batch.rejected)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            names = names or list(terms)
            row = torch.stack([terms[n] for n in names]).double()
            window_sum = row if window_sum is None else window_sum + row
            bar.update()
            if step % 50 == 0:
                bar.set_postfix({k: f"{float(v):.3f}" for k, v in terms.items()})
            if step % config.curve_every == 0 or step == total or step % steps_per_epoch == 0:
                # one curve row per curve_every steps, their mean: a 700K-pair run stays a
                # curve `dvc plots` can render (HF Trainer's logging_steps does the same).
                # Also flushed at each epoch's end, so a diverged loss stops the run then.
                mean = (window_sum / (step - window_start + 1)).tolist()
                if not math.isfinite(mean[0]):
                    raise FloatingPointError(f"{variant.name}: the loss became {mean[0]} between steps "
                                             f"{window_start} and {step} (terms {dict(zip(names, mean))})")
                if step % config.curve_every == 0 or step == total:
                    curves["train"].append({"step": step, **dict(zip(names, mean))})
                    window_sum, window_start = None, step + 1
        val = validation_metrics(head, validation, config.device)
        curves["validation"].append({"step": step, "epoch": epoch, **val})
        bar.write(f"{variant.name} epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
    bar.close()
    return head.eval().cpu(), curves


def write_curves(curves: dict[str, list[dict[str, float]]], directory: str | Path) -> None:
    """DVCLive's layout: ``<dir>/<split>/<name>.tsv`` with columns ``step`` and ``<name>``,
    one file per curve, which ``dvc plots show`` renders without extra configuration."""
    for split, rows in curves.items():
        if not rows:
            continue
        out = Path(directory) / split
        out.mkdir(parents=True, exist_ok=True)
        for name in rows[0]:
            if name in ("step", "epoch"):
                continue
            with open(out / f"{name}.tsv", "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["step", name])
                writer.writerows([r["step"], f"{r[name]:.6g}"] for r in rows)


class CacheMismatchError(UserError, ValueError):
    pass


def check_cache_backbone(manifest: dict[str, Any], expected: dict[str, str], where: str,
                         template: dict[str, Any] | None = None) -> None:
    """Refuse a cache built by another backbone, or (when ``template`` is given: the
    ``system_prompt`` and ``template_date`` of params' backbone block) rendered through
    another chat template than the params name, before any training. The backbone is
    never loaded here: source and revision fix the tokenizer's template, and these two
    params are everything else that goes into it."""
    if manifest.get("backbone") != expected["source"] or str(manifest.get("revision")) != str(expected["revision"]):
        raise CacheMismatchError(
            f"{where} was built by backbone {manifest.get('backbone')!r} (revision {manifest.get('revision')!r}), "
            f"but params.yaml's backbone is {expected['source']!r} (revision {expected['revision']!r}). "
            f"Re-run featurize with this backbone (`dvc repro`), or set backbone.source to the cache's.")
    if template is None:
        return
    cached = manifest.get("template_params")
    if cached is None:
        raise CacheMismatchError(f"{where} does not record the chat-template params it was built with (an older "
                                 f"cache); re-run featurize (`dvc repro`) to rebuild it")
    differ = {k: (cached.get(k), v) for k, v in template.items() if cached.get(k) != v}
    if differ:
        sides = "; ".join(f"backbone.{k}: cache {c!r}, params.yaml {v!r}" for k, (c, v) in differ.items())
        raise CacheMismatchError(f"{where} was rendered through another chat template than params.yaml's ({sides}). "
                                 f"Re-run featurize with these params (`dvc repro`), or set them to the cache's.")


def train_experiment(stores: SplitStores, models_dir: str | Path, curves_dir: str | Path, *,
                     variants: list[str], num_experts: int, lambdas: dict[str, float], config: TrainConfig,
                     extra: dict[str, Any] | None = None,
                     show_progress: bool = True) -> dict[str, dict[str, float]]:
    """Train every variant on one cache's split stores. Writes ``<models_dir>/<variant>/``
    (model.safetensors, config.json) and ``<curves_dir>/<variant>/``; returns each variant's
    last validation metrics."""
    train, validation = stores.split("train"), stores.split("validation")
    cache = stores.cache_manifest
    provenance = {"backbone": cache["backbone"], "template_hash": cache["template_hash"]}
    summary = {}
    for name in variants:
        variant = make_variant(name, hidden_size=stores.hidden_size, num_experts=num_experts, lambdas=lambdas,
                               config=config, provenance=provenance)
        head, curves = train_variant(variant, train, validation, config, show_progress=show_progress)
        head.save(Path(models_dir) / name, variant=name, objective=vars(variant.objective),
                  train=vars(config), cache_revision=cache.get("revision"), **(extra or {}))
        write_curves(curves, Path(curves_dir) / name)
        summary[name] = curves["validation"][-1]
    return summary
