"""Portable export: a Zebra model that stock transformers loads without ``zebra_llm``.

A Zebra model whose layers are only ``global`` and ``local`` is, weight for
weight, a transformers model with per-layer sliding windows: ``layer_types``
with ``full_attention`` / ``sliding_attention`` and one ``sliding_window``.
transformers' sliding layers use our window convention (query ``i`` sees keys
``i - window < j <= i``; ``tests/modeling/test_export.py`` checks it by logits
equality), so the exported model computes the same logits. Which stock
architecture fits depends on the projections' biases:

===========================================  ==============================
Zebra config                                 exported as
===========================================  ==============================
every layer global, no q/k norm              ``LlamaForCausalLM`` (Qwen2 if
                                             the bias is on q/k/v only)
no biases, no q/k norm (Llama, Mistral)      ``MinistralForCausalLM``
q/k/v bias only (Qwen2)                      ``Qwen2ForCausalLM``
q/k norm (Qwen3), optional q/k/v/o bias      ``Qwen3ForCausalLM``
===========================================  ==============================

Local layers plus anything else (Llama's ``attention_bias`` on o,
``mlp_bias``), or any ``global_approx`` layer, has no stock equivalent and is
refused with a ``ValueError``. Ministral always builds a sliding-window mask,
so all-global models go to Llama rather than to a Ministral without a window.
No ``trust_remote_code`` and no custom code file is written.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MinistralConfig,
    PreTrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from ..io import atomic_directory
from .configuration_zebra import FULL, GLOBAL_APPROX, SLIDING, ZebraConfig


def _common(config: ZebraConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        rope_parameters=copy.deepcopy(config.rope_parameters),
        attention_dropout=config.attention_dropout,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        layer_types=list(config.layer_types),
    )


def portable_config(config: ZebraConfig) -> PreTrainedConfig:
    """The stock transformers config (Ministral, Qwen2 or Qwen3) equivalent to ``config``."""
    if GLOBAL_APPROX in config.layer_types:
        layers = [i for i, t in enumerate(config.layer_types) if t == GLOBAL_APPROX]
        raise ValueError(
            f"portable export needs only global and local layers; layers {layers} are global_approx, which no stock "
            "transformers architecture implements (save it with save_pretrained instead)"
        )
    slides = SLIDING in config.layer_types
    window = config.window if slides else None
    common = _common(config)
    plain_llama = not config.qk_norm and config.attention_bias == config.attention_out_bias
    if not slides and plain_llama:
        # every layer global: exactly Llama (which also has Llama's biases)
        del common["layer_types"]
        target = LlamaConfig(
            **common, head_dim=config.head_dim, attention_bias=config.attention_bias, mlp_bias=config.mlp_bias
        )
    elif config.mlp_bias:
        raise ValueError("portable export: mlp_bias=True has no stock transformers equivalent with per-layer windows")
    elif config.qk_norm:
        if config.attention_bias != config.attention_out_bias:
            raise ValueError(
                "portable export: q/k norm with attention_bias != attention_out_bias has no stock equivalent "
                "(Qwen3 biases all four projections or none)"
            )
        target = Qwen3Config(
            **common,
            head_dim=config.head_dim,
            attention_bias=config.attention_bias,
            use_sliding_window=slides,
            sliding_window=window,
            max_window_layers=config.num_hidden_layers,
        )
    elif config.attention_bias and not config.attention_out_bias:
        if config.head_dim * config.num_attention_heads != config.hidden_size:
            raise ValueError(
                "portable export: Qwen2 (the stock model with q/k/v bias) needs head_dim * num_attention_heads == "
                f"hidden_size, got {config.head_dim} * {config.num_attention_heads} != {config.hidden_size}"
            )
        target = Qwen2Config(
            **common, use_sliding_window=slides, sliding_window=window, max_window_layers=config.num_hidden_layers
        )
    elif not config.attention_bias and not config.attention_out_bias:
        target = MinistralConfig(**common, head_dim=config.head_dim, sliding_window=window)
    else:
        raise ValueError(
            "portable export: attention biases "
            f"(attention_bias={config.attention_bias}, attention_out_bias={config.attention_out_bias}) have no stock "
            "transformers equivalent with per-layer windows"
        )
    target.architectures = [_ARCHITECTURES[target.model_type]]
    target.dtype = config.dtype
    kept = getattr(target, "layer_types", None) or [FULL] * target.num_hidden_layers
    if list(kept) != list(config.layer_types):
        raise ValueError(f"portable export: {target.model_type} did not keep layer_types {config.layer_types}")
    return target


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "ministral": "MinistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def export_portable(
    model,
    save_directory: str | os.PathLike,
    *,
    tokenizer=None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (a ``ZebraForCausalLM`` with only global and local layers) so that
    ``transformers.AutoModelForCausalLM.from_pretrained(save_directory)`` loads it with no ``zebra_llm`` import and
    no remote code, and computes the same logits.

    Writes ``config.json`` (Ministral / Qwen2 / Qwen3 with ``layer_types`` and ``sliding_window``),
    ``generation_config.json``, safetensors weights (sharded above ``max_shard_size``) and the tokenizer if
    given, into a temporary directory renamed into place when complete. An existing ``save_directory`` (a
    directory or a file) is replaced only with ``overwrite=True``, and never when it is the directory the
    model was loaded from, lies inside it or contains it (issue 25, item 3: the guards of ``convert``).
    """
    from huggingface_hub import save_torch_state_dict

    from .modeling_zebra import ZebraForCausalLM

    if not isinstance(model, ZebraForCausalLM):
        raise ValueError(f"export_portable takes a ZebraForCausalLM, got {type(model).__name__}")
    from .convert import check_output_path

    origin = getattr(model.config, "_name_or_path", "") or None
    check_output_path(origin, save_directory, overwrite=overwrite, what="export")
    target = portable_config(model.config)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _check_names(target, state)
    save_directory = Path(save_directory)
    with atomic_directory(save_directory) as tmp:
        target.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_torch_state_dict(state, tmp, max_shard_size=max_shard_size, metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return save_directory


def _check_names(target: PreTrainedConfig, state: dict) -> None:
    """Every tensor must have a home of the same shape in the stock model, and vice versa."""
    with torch.device("meta"):
        stock = AutoModelForCausalLM.from_config(target)
    wanted = {name: tuple(t.shape) for name, t in stock.state_dict().items()}
    if target.tie_word_embeddings:
        wanted.pop("lm_head.weight", None)
    have = {name: tuple(t.shape) for name, t in state.items()}
    if wanted != have:
        diff = sorted(set(wanted.items()) ^ set(have.items()))[:6]
        raise ValueError(f"portable export: weights do not match {target.model_type}'s layout: {diff}")


__all__ = ["export_portable", "portable_config"]
