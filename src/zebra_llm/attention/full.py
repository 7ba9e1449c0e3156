"""Global (full causal) attention: the Zebra paper's "global" strategy and the
first layer of every Zebra group."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import masks, reference
from ._checks import check_key_padding_mask, check_qkv, resolve_scale
from ._flex import flex_run
from .backends import register, resolve


def global_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal full attention.

    Args:
        q: ``[batch, heads_q, seq_q, head_dim]``.
        k, v: ``[batch, heads_kv, seq_kv, head_dim]``, ``heads_q % heads_kv == 0``.
            If ``seq_kv > seq_q`` the queries are the last ``seq_q`` key positions.
        scale: score scale, default ``1/sqrt(head_dim)``.
        key_padding_mask: optional ``[batch, seq_kv]`` bool, True for real tokens.
        backend: force a kernel (see ``zebra_llm.attention.backends``).

    Returns the output with ``q``'s shape and dtype.
    """
    check_qkv(q, k, v)
    kpm = check_key_padding_mask(key_padding_mask, k)
    impl = resolve("global", backend, q, padded=kpm is not None)
    return impl(q, k, v, scale=resolve_scale(scale, q.shape[-1]), key_padding_mask=kpm)


@register("global", "sdpa")
def _global_sdpa(q, k, v, *, scale, key_padding_mask):
    gqa = q.shape[1] != k.shape[1]
    seq_q, seq_kv = q.shape[2], k.shape[2]
    if key_padding_mask is None and seq_q == seq_kv:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if key_padding_mask is None and seq_q == 1:
        # The last query sees every key: no mask at all.
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    # Chunked prefill or padding: the mask is [seq_q, seq_kv] (per row with padding).
    qi = masks.query_indices(seq_q, seq_kv, device=q.device)[:, None]
    kj = torch.arange(seq_kv, device=q.device)[None, :]
    allowed = masks.padded(masks.causal, key_padding_mask)(qi, kj).unsqueeze(-3)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=gqa)


@register("global", "flex")
def _global_flex(q, k, v, *, scale, key_padding_mask):
    return flex_run(
        q,
        k,
        v,
        scale=scale,
        predicate=masks.causal,
        key_padding_mask=key_padding_mask,
        q_offset=k.shape[2] - q.shape[2],
        cache_key=("global",),
    )


@register("global", "flash_attn")
def _global_flash(q, k, v, *, scale, key_padding_mask):
    from flash_attn import flash_attn_func

    # flash-attn takes [batch, seq, heads, dim] and aligns causality bottom-right.
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=True)
    return out.transpose(1, 2)


@register("global", "reference")
def _global_reference(q, k, v, *, scale, key_padding_mask):
    return reference.global_attention(q, k, v, scale=scale, key_padding_mask=key_padding_mask)
