"""Reading ``params.yaml`` into the library's plain config objects (stage glue only)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline.adaptation import AdaptConfig
from pipeline.backbone import BackboneConfig
from pipeline.featurize import FeaturizeConfig
from pipeline.personalize import PersonalizeConfig
from pipeline.train import TrainConfig


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise typer.BadParameter(f"params file {path} does not exist")
    return yaml.safe_load(path.read_text()) or {}


def section(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = params
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[: i + 1])
            raise typer.BadParameter(f"params has no key {where!r}; available: {sorted(node) if isinstance(node, dict) else node}")
        node = node[key]
    return node


def build(cls, values: dict[str, Any], **overrides: Any):
    """Instantiate a config dataclass, rejecting unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise typer.BadParameter(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
    return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


def backbone_config(params: dict[str, Any], model_dir: str | None) -> BackboneConfig:
    values = dict(section(params, "backbone"))
    values.pop("source", None)  # what `smoe backbone` materializes; featurize loads the folder
    return build(BackboneConfig, values, model=model_dir)


def featurize_config(params: dict[str, Any]) -> FeaturizeConfig:
    return build(FeaturizeConfig, section(params, "featurize"))


def train_config(params: dict[str, Any]) -> TrainConfig:
    return build(TrainConfig, section(params, "train"))


LAMBDAS = ("lambda_ls", "lambda_gb", "lambda_div")
EXPERIMENT_KEYS = {"dataset", "num_experts", *LAMBDAS}


def experiment(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One ``experiments.<name>`` block, checked: a dataset and K, optionally lambda overrides."""
    spec = dict(section(params, "experiments", name))
    unknown = sorted(set(spec) - EXPERIMENT_KEYS)
    if unknown:
        raise typer.BadParameter(f"experiments.{name}: unknown key(s) {unknown}; known: {sorted(EXPERIMENT_KEYS)}")
    for key in ("dataset", "num_experts"):
        if key not in spec:
            raise typer.BadParameter(f"experiments.{name} needs {key!r}")
    return spec


def lambdas(params: dict[str, Any], name: str) -> dict[str, float]:
    """Eq. 7's weights: the top-level sweep knobs, overridden by the experiment's own keys
    (e.g. the paper's lambda_gb = 1.0 for preference-700K)."""
    spec = experiment(params, name)
    return {key: float(spec.get(key, section(params, key))) for key in LAMBDAS}


INTERPRET_DEFAULTS = {"describer": "keywords", "judge": "keywords", "top_n": 20, "per_stratum": 100,
                      "seed": 0, "keywords": 5}


def settings_block(params: dict[str, Any], name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """The ``name:`` block of params over ``defaults`` (the paper's values), rejecting unknown keys."""
    values = dict(params.get(name) or {})
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise typer.BadParameter(f"{name}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **values}


def interpret_settings(params: dict[str, Any]) -> dict[str, Any]:
    return settings_block(params, "interpret", INTERPRET_DEFAULTS)


STEER_DEFAULTS = {"label": "attribute", "top_n": 100, "weights": [0.25, 0.5, 0.75, 1.0], "random_repeats": 20, "seed": 0}


def steer_settings(params: dict[str, Any]) -> dict[str, Any]:
    return settings_block(params, "steer", STEER_DEFAULTS)


def personalize_configs(params: dict[str, Any]) -> tuple[PersonalizeConfig, AdaptConfig]:
    """The ``personalize:`` block split into the experiment's and the adaptation's settings."""
    values = dict(params.get("personalize") or {})
    experiment_keys = {f.name for f in fields(PersonalizeConfig)}
    try:
        return (build(PersonalizeConfig, {k: v for k, v in values.items() if k in experiment_keys}),
                build(AdaptConfig, {k: v for k, v in values.items() if k not in experiment_keys}))
    except ValueError as e:
        raise typer.BadParameter(f"personalize: {e}") from None
