"""Mask functions for ``AttentionMaskInterface`` and the checks the attention functions make on what
they receive.

transformers builds an attention mask once per forward through the mask function registered under
the model's ``_attn_implementation`` name. Our attention functions need no ``seq x seq`` mask
(causality and windows are structural), so the mask functions here pass on only which keys are
padding: a ``[batch, kv_length]`` boolean tensor, or ``None``.
"""

from __future__ import annotations

import torch


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


def extension_mask_interface(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                             mask_function=None, attention_mask=None, local_size=None, **kwargs):
    """Mask function of the extension implementations: a ``[batch, kv]`` padding mask or ``None``.

    As :func:`padding_mask_interface`, except for fixed-size caches
    (``StaticCache``: the layer holds more slots than were written): the mask then covers
    the written slots only (all True without an ``attention_mask``), which tells the
    attention function where the keys end. A sliding layer of a fixed-size cache
    (``StaticSlidingWindowLayer``) is the same until its buffer is full: the written slots
    come first, in sequence order; once full it hands back its keys in order, as a
    dynamic sliding layer does. So the one rule (issue 25, item 5): fixed-size caches
    work under every extension, sliding-window layers included, at any prompt length.
    """
    written = int(q_offset) + q_length - int(kv_offset)
    if kv_offset == 0 and written < kv_length:
        if attention_mask is None:
            return torch.ones(batch_size, written, dtype=torch.bool)
        if attention_mask.dim() != 2:
            return attention_mask
        mask = attention_mask.to(torch.bool)[:, :written]
        if mask.shape[-1] < written:
            raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but {written} are in the cache")
        return mask
    return padding_mask_interface(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function,
                                  attention_mask, **kwargs)


def written_keys(query, key, value, attention_mask):
    """Fixed-size caches (``StaticCache``): keep only the written slots.

    :func:`extension_mask_interface` hands such layers a padding mask as wide as the
    written slots only; the keys past it were never written, and the queries are the
    last written keys. Returns ``(key, value, mask)``.
    """
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        written = attention_mask.shape[-1]
        if written < key.shape[2]:
            if written < query.shape[2]:
                raise ValueError(f"attention mask covers {written} keys, fewer than the {query.shape[2]} queries")
            key, value = key[:, :, :written], value[:, :, :written]
            if bool(attention_mask.all()):
                attention_mask = None
    return key, value, attention_mask


__all__ = ["extension_mask_interface", "key_padding_mask", "padding_mask_interface", "written_keys"]
