"""Experiment configs: typed dataclasses read from YAML/JSON with dotted overrides,
reusing the training configs' coercion (field errors name the dotted path)."""

from __future__ import annotations

import dataclasses
import os

from ..train.config import _build, apply_overrides, read_config_file


def load_config(cls, path: str | os.PathLike | None = None, overrides: dict | list[str] | None = None):
    """``cls`` from a YAML/TOML/JSON file (optional) with dotted overrides on top."""
    data = read_config_file(path) if path is not None else {}
    return _build(cls, apply_overrides(data, overrides or {}), "")


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
