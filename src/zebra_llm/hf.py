"""Glue between this library's attention functions and transformers' public
extension points (``AttentionInterface`` and ``AttentionMaskInterface``).

transformers builds an attention mask once per forward through the mask
function registered under the model's ``_attn_implementation`` name, and then
calls the attention function registered under the same name in every layer.
Our attention functions need no ``seq x seq`` mask: causality and windows are
structural, so the only thing the mask function passes on is which keys are
padding, as a ``[batch, kv_length]`` boolean tensor (or ``None``).

Conventions of every attention function registered by zebra_llm:
  * ``key`` and ``value`` are what the layer's cache returned (``DynamicCache``:
    all seen tokens for full layers, the last ``window - 1`` plus the new ones for
    sliding layers; a ``StaticCache`` buffer is first cut to its written slots by
    ``ZebraAttention``); the queries are the last ``q_len`` of those keys.
  * ``attention_mask`` is ``None`` or the ``[batch, kv_len]`` padding mask built
    by :func:`padding_mask_interface`.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.24 renamed the cache argument of model forwards and mask functions from
# ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40); pass the one it has.
CACHE_KWARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
# The same rename for the field of output objects (``CausalLMOutputWithPast.cache``).
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{name: cache}`` for a model forward or ``generate`` under the installed transformers' name."""
    return {CACHE_KWARG: cache}


def output_cache(output):
    """The cache an output object carries, read under the installed transformers' field name."""
    return getattr(output, CACHE_FIELD)


def merge_cache_kwargs(past_key_values, cache, where: str):
    """The cache a forward was given under either name (``cache`` from transformers >= 5.24)."""
    if cache is None:
        return past_key_values
    if past_key_values is not None and past_key_values is not cache:
        raise ValueError(f"{where}: give the cache as cache or as past_key_values, not both")
    return cache


def padding_mask_interface(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask function for ``AttentionMaskInterface``: the 2D padding mask of the
    keys this layer will see, ``[batch, kv_length]`` bool, or ``None`` when no
    key is padding."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        return attention_mask  # a user-built 4D mask: the attention function rejects it clearly
    mask = attention_mask.to(torch.bool)[:, kv_offset : kv_offset + kv_length]
    if mask.shape[-1] < kv_length:  # keys past the mask are not written yet (static caches)
        mask = torch.nn.functional.pad(mask, (0, kv_length - mask.shape[-1]), value=False)
    if bool(mask.all()):
        return None
    return mask


def key_padding_mask(attention_mask, key: torch.Tensor, *, who: str = "zebra_llm attention") -> torch.Tensor | None:
    """Validate the ``attention_mask`` an attention function received and return
    it as a ``[batch, kv_len]`` key padding mask (or ``None``)."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(
            f"{who} takes a 2D padding attention_mask [batch, seq] (or None), got {shape}; "
            "custom 4D masks are not supported because the variant's structure (causal, window, chunks) is "
            "built in"
        )
    kv_len = key.shape[2]
    if attention_mask.shape[-1] != kv_len:
        if attention_mask.shape[-1] < kv_len:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} keys but the layer sees {kv_len}"
            )
        attention_mask = attention_mask[:, -kv_len:]
    return attention_mask.to(device=key.device, dtype=torch.bool)
