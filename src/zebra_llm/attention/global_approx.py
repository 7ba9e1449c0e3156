"""Local attention with global approximation (the Zebra paper's third strategy).

The paper does not publish its formula; this is our definition (also in the
docstring of :func:`global_approx_attention`): keys are split into consecutive
chunks of ``chunk_size`` real tokens, each summarised by the mean of its keys
and the mean of its values; query ``i`` attends, in one softmax, to its sliding
window and to the summary of every chunk whose last token is at or before
``i - window``, each summary logit raised by ``ln(chunk_size)``.

Fast path (``sdpa``): the band is blocked as in ``local.py`` and the summaries,
``seq / chunk_size`` of them, are prepended to every block's keys, so cost and
memory are ``O(seq * (window + seq / chunk_size))``.
"""

from __future__ import annotations

import math

import torch

from . import masks, reference
from ._checks import check_key_padding_mask, check_positive_int, check_qkv, resolve_scale
from ._flex import flex_run
from .backends import register, resolve
from .full import _global_sdpa
from .local import Extra, windowed_attention


def global_approx_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    chunk_size: int,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Sliding window plus mean summaries of the chunks before it.

    Keys are split into consecutive chunks of ``chunk_size`` real tokens (with a
    ``key_padding_mask``, padding is skipped, so a padded row has the chunks of
    the same row unpadded). A chunk's summary key and value are the means of its
    keys and values. Query ``i`` attends, in one softmax, to its local window
    (``i - window < j <= i``) and to the summary of every complete chunk whose
    last token is at or before ``i - window``; each summary's logit gets
    ``+ln(chunk_size)`` so that it carries the mass of the ``chunk_size`` tokens
    it stands for. With ``window >= seq`` no summary is ever visible and the
    result equals global attention.

    Shapes, ``scale``, ``key_padding_mask`` and ``backend`` as in
    :func:`zebra_llm.attention.global_attention`.
    """
    check_qkv(q, k, v)
    check_positive_int("window", window)
    check_positive_int("chunk_size", chunk_size)
    kpm = check_key_padding_mask(key_padding_mask, k)
    impl = resolve("global_approx", backend, q, padded=kpm is not None)
    return impl(
        q, k, v, window=window, chunk_size=chunk_size, scale=resolve_scale(scale, q.shape[-1]), key_padding_mask=kpm
    )


def chunk_summaries(k, v, *, chunk_size, key_padding_mask=None):
    """Vectorised twin of ``reference.chunk_summaries``: (k_sum, v_sum, exists)."""
    batch, heads, seq, dim = k.shape
    if key_padding_mask is None:
        n = seq // chunk_size
        k_sum = k[:, :, : n * chunk_size].float().view(batch, heads, n, chunk_size, dim).mean(3)
        v_sum = v[:, :, : n * chunk_size].float().view(batch, heads, n, chunk_size, dim).mean(3)
        exists = torch.ones(batch, n, dtype=torch.bool, device=k.device)
        return k_sum.to(k.dtype), v_sum.to(v.dtype), exists
    n_real = key_padding_mask.sum(-1)
    n = int(n_real.max().item()) // chunk_size
    ranks = masks.key_ranks(key_padding_mask, batch, seq, device=k.device)
    # Bucket n collects padding and the incomplete tail; it is dropped.
    bucket = torch.where(key_padding_mask, ranks // chunk_size, n).clamp(max=n)
    k_sum, v_sum = [], []
    for b in range(batch):
        k_sum.append(k.new_zeros(heads, n + 1, dim, dtype=torch.float32).index_add(1, bucket[b], k[b].float()))
        v_sum.append(v.new_zeros(heads, n + 1, dim, dtype=torch.float32).index_add(1, bucket[b], v[b].float()))
    k_sum = (torch.stack(k_sum)[:, :, :n] / chunk_size).to(k.dtype)
    v_sum = (torch.stack(v_sum)[:, :, :n] / chunk_size).to(v.dtype)
    exists = (torch.arange(n, device=k.device)[None, :] + 1) * chunk_size <= n_real[:, None]
    return k_sum, v_sum, exists


def _summary_visibility(q, k, *, window, chunk_size, key_padding_mask, exists):
    """``[B, seq_q, n_chunks]``: which summaries each query sees."""
    batch, seq_q, seq_kv = q.shape[0], q.shape[2], k.shape[2]
    ranks = masks.key_ranks(key_padding_mask, batch, seq_kv, device=q.device)
    q_rank = ranks[:, seq_kv - seq_q :]
    chunk = torch.arange(exists.shape[1], device=q.device)
    visible = masks.chunk_summary_visible(window, chunk_size)(q_rank[:, :, None], chunk[None, None, :])
    return visible & exists[:, None, :]


@register("global_approx", "sdpa")
def _global_approx_sdpa(q, k, v, *, window, chunk_size, scale, key_padding_mask):
    if window >= k.shape[2]:  # no summary is ever visible: global attention
        return _global_sdpa(q, k, v, scale=scale, key_padding_mask=key_padding_mask)
    k_sum, v_sum, exists = chunk_summaries(k, v, chunk_size=chunk_size, key_padding_mask=key_padding_mask)
    visible = _summary_visibility(
        q, k, window=window, chunk_size=chunk_size, key_padding_mask=key_padding_mask, exists=exists
    )
    extra = None
    if k_sum.shape[2] and bool(visible.any()):
        extra = Extra(k_sum, v_sum, visible, math.log(chunk_size))
    return windowed_attention(q, k, v, window=window, scale=scale, key_padding_mask=key_padding_mask, extra=extra)


@register("global_approx", "flex")
def _global_approx_flex(q, k, v, *, window, chunk_size, scale, key_padding_mask):
    k_sum, v_sum, exists = chunk_summaries(k, v, chunk_size=chunk_size, key_padding_mask=key_padding_mask)
    if k_sum.shape[2] == 0:
        return flex_run(
            q, k, v, scale=scale, predicate=masks.sliding_window(window),
            key_padding_mask=key_padding_mask, q_offset=k.shape[2] - q.shape[2],
        )
    visible = _summary_visibility(
        q, k, window=window, chunk_size=chunk_size, key_padding_mask=key_padding_mask, exists=exists
    )

    def extra_visible(b, q_idx, c):
        return visible[b, q_idx, c]

    return flex_run(
        q,
        torch.cat([k, k_sum], dim=2),
        torch.cat([v, v_sum], dim=2),
        scale=scale,
        predicate=masks.sliding_window(window),
        key_padding_mask=key_padding_mask,
        q_offset=k.shape[2] - q.shape[2],
        n_band_keys=k.shape[2],
        extra_visible=extra_visible,
        extra_bias=math.log(chunk_size),
    )


@register("global_approx", "reference")
def _global_approx_reference(q, k, v, *, window, chunk_size, scale, key_padding_mask):
    return reference.global_approx_attention(
        q, k, v, window=window, chunk_size=chunk_size, scale=scale, key_padding_mask=key_padding_mask
    )
