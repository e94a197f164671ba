"""Reading ``params.yaml`` into the library's plain config objects (stage glue only)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline.backbone import BackboneConfig
from pipeline.featurize import FeaturizeConfig


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
