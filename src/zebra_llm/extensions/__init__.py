"""Training-free context extension of pretrained RoPE models: DCA, SelfExtend, ReRoPE, STRING.

``apply_extension(model, method, **settings)`` makes a loaded transformers model use
one of them from now on (forward, loss, ``generate``, batched with padding, with a
KV cache, with gradients); ``remove_extension(model)`` undoes it. Every method is a
piecewise relative-position rule (``zebra_llm.attention.specs``) run by one kernel
(``zebra_llm.attention.piecewise``); ``relative_positions(method, seq_len, ...)``
shows the rule as a matrix. Settings and their defaults: ``extensions.config``.

Model families: Llama, Mistral (incl. Mixtral), Qwen2, Qwen3 (incl. MoE), Zebra
(global layers), and the families with per-layer ``layer_types`` (Gemma 3, OLMo 3,
Ministral, Cohere2, Qwen2 with sliding layers), where the method runs on
``full_attention`` layers and sliding layers keep their window.
"""

from __future__ import annotations

import torch

from ..dca import DCAConfig, apply_dca
from ..hf.extension import (
    DCA_CONFIG_KEY,
    EXTENSION_CONFIG_KEY,
    EXTENSION_IMPLEMENTATION,
    NOPE_FULL_ATTENTION_TYPES,
    ExtensionState,
    check_family,
    install,
    rotary_embedding,
    uninstall,
)
from ..loading import trained_context
from .config import (
    METHODS,
    ReRoPEConfig,
    SelfExtendConfig,
    StringConfig,
    check_method,
    config_to_dict,
    make_config,
    spec_for,
)

NAMES = {"dca": "DCA", "self_extend": "SelfExtend", "rerope": "ReRoPE", "string": "STRING"}


def apply_extension(model, method: str, **settings):
    """Make ``model`` use the training-free extension ``method`` from now on.

    Args:
        model: a loaded transformers causal LM of a supported family (see the module doc).
        method: ``dca``, ``self_extend``, ``rerope`` or ``string``.
        **settings: the method's settings (``extensions.config``; ``dca``: those of
            :func:`zebra_llm.apply_dca`). Omitted ones default from the model's trained
            length (``original_max_position_embeddings`` or ``max_position_embeddings``);
            ``trained_length=`` overrides that length. A model whose config carries the
            same method's settings (saved by ``save_pretrained`` after ``apply_extension``)
            gets them back when no setting is given.

    Returns the same model. Raises ``ValueError`` naming the setting or the model's
    problem (family, rope type, sliding-window Mistral, attention sinks).
    """
    check_method(method)
    settings = dict(settings)
    if method == "dca":
        trained = settings.pop("trained_length", None)
        if trained is not None and settings.get("pretraining_length") is None and settings.get("preset") is None:
            settings["pretraining_length"] = trained
        unknown = sorted(set(settings) - {"pretraining_length", "chunk_size", "temperature", "preset"})
        if unknown:
            raise ValueError(
                f"unknown dca setting(s) {unknown}; allowed: ['chunk_size', 'preset', 'pretraining_length', "
                "'temperature', 'trained_length']"
            )
        return apply_dca(model, **settings)
    who = NAMES[method]
    config = model.config
    check_family(config, who)
    rotary, inv_freq_name = rotary_embedding(model, who)
    cfg = _resolve(config, method, settings)
    state = ExtensionState(who, cfg, (rotary,), inv_freq_name, cfg.spec(), config.model_type in NOPE_FULL_ATTENTION_TYPES)
    install(model, EXTENSION_CONFIG_KEY, EXTENSION_IMPLEMENTATION, state, {"method": method, **config_to_dict(cfg)})
    return model


def _resolve(model_config, method: str, settings: dict):
    """The config of ``method`` (not ``dca``). When the model config carries settings of the same
    method from an earlier ``apply_extension`` (kept by ``save_pretrained``): no settings given reuses
    them as they are; settings given are taken with the saved trained length for the others'
    defaults (a saved default derived from another setting is not carried over). Otherwise the
    defaults follow from ``trained_length`` or the model's trained context."""
    trained = settings.pop("trained_length", None)
    saved = _saved_settings(model_config)
    if trained is None and saved is not None and saved[0] == method:
        saved_settings = dict(saved[1])
        trained = saved_settings.pop("trained_length")
        return make_config(method, trained, settings or saved_settings)
    return make_config(method, trained_context(model_config) if trained is None else trained, settings)


def _saved_settings(model_config):
    """``(method, settings)`` recorded on a model config by :func:`apply_extension` (not DCA), or ``None``."""
    saved = getattr(model_config, EXTENSION_CONFIG_KEY, None)
    if saved is None:
        return None
    if not isinstance(saved, dict) or saved.get("method") not in NAMES or "trained_length" not in saved:
        raise ValueError(f"config.{EXTENSION_CONFIG_KEY} must be a dict with method and trained_length, got {saved!r}")
    return saved["method"], {k: v for k, v in saved.items() if k not in ("method", "previous_attn_implementation")}


def remove_extension(model):
    """Undo :func:`apply_extension` (any method, DCA included): the previous attention comes back."""
    for key in (EXTENSION_CONFIG_KEY, DCA_CONFIG_KEY):
        if getattr(model.config, key, None) is not None:
            return uninstall(model, key)
    raise ValueError("model: no context-extension method is applied")


def extension_config(model):
    """``(method, config)`` in effect on ``model``, or ``None``."""
    saved = _saved_settings(model.config)
    if saved is not None:
        method, data = saved  # a fresh dict
        return method, make_config(method, data.pop("trained_length"), data)
    saved = getattr(model.config, DCA_CONFIG_KEY, None)
    if saved is not None:
        return "dca", DCAConfig.from_dict(saved)
    return None


def relative_positions(method: str, seq_len: int, **settings) -> torch.Tensor:
    """The ``[seq_len, seq_len]`` relative-position matrix of ``method`` (entries above the
    diagonal are ``-1`` and unused).

    Settings as for :func:`apply_extension`, plus ``trained_length`` (or, for ``dca``,
    ``pretraining_length``) for the defaults; without it give the geometry in full
    (``neighbor_window``; ``window``; ``shifted_offset`` and ``local_value``). Long for integer rules, float64 for leaky ReRoPE.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"seq_len must be an integer >= 0, got {seq_len!r}")
    return spec_for(method, **settings).relative_positions(seq_len)


__all__ = [
    "METHODS",
    "ReRoPEConfig",
    "SelfExtendConfig",
    "StringConfig",
    "apply_extension",
    "extension_config",
    "relative_positions",
    "remove_extension",
]
