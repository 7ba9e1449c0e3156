"""Training-free context extension of pretrained RoPE models: DCA, SelfExtend, ReRoPE, STRING, sinks.

``apply_extension(model, method, **settings)`` makes a loaded transformers model use
one of them from now on (forward, loss, ``generate``, batched with padding, with a
KV cache, with gradients); ``remove_extension(model)`` undoes it. Every method is a
typed config (``extensions.config.CONFIGS``; DCA's in ``extensions/dca.py``) whose
``spec()`` is a piecewise relative-position rule (``zebra_llm.attention.specs``) run
by one kernel (``zebra_llm.attention.piecewise``); ``relative_positions(method,
seq_len, ...)`` shows the rule as a matrix.

Model families: Llama, Mistral (incl. Mixtral), Qwen2, Qwen3 (incl. MoE), Zebra
(global layers), and the families with per-layer ``layer_types`` (Gemma 3, OLMo 3,
Ministral, Cohere2, Qwen2 with sliding layers), where the method runs on
``full_attention`` layers and sliding layers keep their window.
"""

from __future__ import annotations

import torch

from .._checks import check_int
from ..hf.extension import (
    CONFIG_KEYS,
    EXTENSION_CONFIG_KEY,
    LEGACY_DCA_CONFIG_KEY,
    NOPE_FULL_ATTENTION_TYPES,
    ExtensionState,
    check_family,
    install,
    rotary_embedding,
    uninstall,
)
from .config import (
    CONFIGS,
    METHODS,
    DCAConfig,
    ReRoPEConfig,
    SelfExtendConfig,
    SinksConfig,
    StringConfig,
    check_method,
    config_class,
    spec_for,
)

NAMES = {name: cls.display for name, cls in CONFIGS.items()}


def resolve(model_config, method: str, settings: dict | None = None, *, use_saved: bool = True):
    """The config ``method`` runs with on a model with ``model_config``: ``settings``, the model's saved
    settings of the same method (``save_pretrained`` after ``apply_extension``; ``use_saved=False``: not
    those) and its trained context, as each config's ``from_model`` combines them. Built, and so checked,
    once."""
    cls = config_class(method)
    saved = saved_settings(model_config) if use_saved else None
    return cls.from_model(model_config, dict(settings or {}), saved[1] if saved and saved[0] == method else None)


def apply_extension(model, method, **settings):
    """Make ``model`` use the training-free extension ``method`` from now on.

    Args:
        model: a loaded transformers causal LM of a supported family (see the module doc).
        method: ``dca``, ``self_extend``, ``rerope``, ``string`` or ``sinks``; or a config built
            before (an instance of one of ``extensions.config.CONFIGS``), used as it is.
        **settings: the method's settings (``extensions.config``). Omitted ones default from the
            model's trained length (``original_max_position_embeddings`` or ``max_position_embeddings``);
            ``trained_length=`` overrides that length. A model whose config carries the same
            method's settings (saved by ``save_pretrained`` after ``apply_extension``) gets them
            back when no setting is given.

    Returns the same model. Raises ``ValueError`` naming the setting or the model's
    problem (family, rope type, sliding-window Mistral, attention sinks of gpt-oss).
    """
    if isinstance(method, tuple(CONFIGS.values())):
        if settings:
            raise ValueError("apply_extension: give a built config or settings, not both")
        cfg = method
    else:
        cfg = None
        check_method(method)
    cls = type(cfg) if cfg is not None else CONFIGS[method]
    config = model.config
    check_family(config, cls.display)
    rotary, inv_freq_name = rotary_embedding(model, cls.display)
    if cfg is None:
        cfg = resolve(config, method, settings)
    state = ExtensionState(cls.display, cfg, (rotary,), inv_freq_name, cfg.spec(),
                           config.model_type in NOPE_FULL_ATTENTION_TYPES)
    install(model, state, {"method": cls.method, **cfg.to_dict()})
    return model


def saved_settings(model_config):
    """``(method, settings)`` recorded on a model config by :func:`apply_extension` (or, in models saved
    before, by ``apply_dca`` under ``zebra_dca``), or ``None``."""
    saved = getattr(model_config, EXTENSION_CONFIG_KEY, None)
    if saved is None:
        legacy = getattr(model_config, LEGACY_DCA_CONFIG_KEY, None)
        if legacy is None:
            return None
        if not isinstance(legacy, dict):
            raise ValueError(f"config.{LEGACY_DCA_CONFIG_KEY} must be a dict of DCA settings, got {legacy!r}")
        saved = {"method": "dca", **legacy}
    method = saved.get("method") if isinstance(saved, dict) else None
    if method not in CONFIGS or (method != "dca" and "trained_length" not in saved):
        raise ValueError(
            f"config.{EXTENSION_CONFIG_KEY} must be a dict with method (one of {', '.join(METHODS)}) and its "
            f"settings (trained_length, or DCA's pretraining_length), got {saved!r}"
        )
    return method, {k: v for k, v in saved.items() if k not in ("method", "previous_attn_implementation")}


def remove_extension(model):
    """Undo :func:`apply_extension` (any method): the previous attention comes back."""
    for key in CONFIG_KEYS:
        if getattr(model.config, key, None) is not None:
            return uninstall(model, key)
    raise ValueError("model: no context-extension method is applied")


def extension_config(model):
    """``(method, config)`` in effect on (or saved with) ``model``, or ``None``."""
    saved = saved_settings(model.config)
    if saved is None:
        return None
    method, data = saved
    return method, CONFIGS[method].from_dict(data)


def relative_positions(method: str, seq_len: int, **settings) -> torch.Tensor:
    """The ``[seq_len, seq_len]`` relative-position matrix of ``method`` (entries above the
    diagonal, and pairs the rule hides (``sinks``), are ``-1`` and unused).

    Settings as for :func:`apply_extension`, plus ``trained_length`` (or, for ``dca``,
    ``pretraining_length``) for the defaults; without it give the geometry in full
    (``neighbor_window``; ``window``; ``shifted_offset`` and ``local_value``; ``window`` and
    ``distance_limit``). Long for integer rules, float64 for leaky ReRoPE.
    """
    check_int("seq_len", seq_len, 0)
    return spec_for(method, **settings).relative_positions(seq_len)


__all__ = [
    "CONFIGS",
    "DCAConfig",
    "METHODS",
    "ReRoPEConfig",
    "SelfExtendConfig",
    "SinksConfig",
    "StringConfig",
    "apply_extension",
    "extension_config",
    "relative_positions",
    "remove_extension",
    "resolve",
    "saved_settings",
]
