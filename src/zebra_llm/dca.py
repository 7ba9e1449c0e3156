"""Dual Chunk Attention for transformers models (An et al., ICML 2024, arXiv 2402.17463): the names users
know, each an alias of the one extension path.

Guide: docs/dca.md.

DCA is one extension method among the others (``zebra_llm.extensions``): its settings are
:class:`DCAConfig` (``extensions/dca.py``), ``apply_dca(model, ...)`` is ``apply_extension(model, "dca",
...)`` and ``remove_dca`` is ``remove_extension``. The settings live on the model config as
``config.zebra_extension`` (``{"method": "dca", ...}``; models saved before kept them as ``zebra_dca``,
which is still read), so ``save_pretrained`` keeps them and a later ``apply_dca`` picks them up.
"""

from __future__ import annotations

from .attention.dca_positions import relative_positions
from .extensions import apply_extension, extension_config, remove_extension, resolve
from .extensions.dca import VLLM_DEFAULT_CHUNK_SIZE, VLLM_DEFAULT_LOCAL_SIZE, DCAConfig
from .hf.extension import (
    EXTENSION_CONFIG_KEY as CONFIG_KEY,
    EXTENSION_IMPLEMENTATION as ATTN_IMPLEMENTATION,
    SUPPORTED_MODEL_TYPES,
    SUPPORTED_ROPE_TYPES,
)


def apply_dca(model, *, pretraining_length: int | None = None, chunk_size: int | None = None,
              temperature: bool | None = None, preset: str | None = None):
    """``apply_extension(model, "dca", ...)`` (a setting left ``None`` comes from the model, see
    :meth:`DCAConfig.from_model`)."""
    return apply_extension(model, "dca", pretraining_length=pretraining_length, chunk_size=chunk_size,
                           temperature=temperature, preset=preset)


def remove_dca(model):
    """Undo :func:`apply_dca` (``remove_extension``), refusing a model without DCA."""
    if dca_config(model) is None:
        raise ValueError("model: DCA is not applied (its config has no DCA settings)")
    return remove_extension(model)


def dca_config(model) -> DCAConfig | None:
    """The DCA settings in effect on ``model``, or ``None``."""
    found = extension_config(model)
    return found[1] if found is not None and found[0] == "dca" else None


def resolve_config(model_config, *, pretraining_length=None, chunk_size=None, temperature=None,
                   preset=None) -> DCAConfig:
    """The DCA settings ``apply_dca`` would use on a model with ``model_config`` (reads the config only)."""
    return resolve(model_config, "dca", dict(pretraining_length=pretraining_length, chunk_size=chunk_size,
                                             temperature=temperature, preset=preset))


__all__ = [
    "ATTN_IMPLEMENTATION",
    "CONFIG_KEY",
    "DCAConfig",
    "SUPPORTED_MODEL_TYPES",
    "SUPPORTED_ROPE_TYPES",
    "VLLM_DEFAULT_CHUNK_SIZE",
    "VLLM_DEFAULT_LOCAL_SIZE",
    "apply_dca",
    "dca_config",
    "relative_positions",
    "remove_dca",
    "resolve_config",
]
