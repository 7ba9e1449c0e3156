"""Local attention with global approximation (the Zebra paper's third strategy).

The paper does not publish its formula; this is our definition (also in the
docstring of :func:`global_approx_attention`): keys are split into consecutive
chunks of ``chunk_size`` real tokens, each summarised by the mean of its keys
and the mean of its values; query ``i`` attends, in one softmax, to its sliding
window and to the summary of every chunk whose last token is at or before
``i - window``, each summary logit raised by ``ln(chunk_size)``.

Fast paths (``sdpa``): on CPU without padding, the band runs on the flash-style
band kernel of ``local.py`` and the summaries, ``seq / chunk_size`` of them, in one
more call of the same kernel; the two are merged by log-sum-exp, and the backward
hands each part the merged output and log-sum-exp (so only q, k, v, the summaries,
the output and the log-sum-exp are saved). Otherwise the band is blocked as in
``local.py`` with the summaries prepended to every block's keys. Either way cost
and memory are ``O(seq * (window + seq / chunk_size))``.
"""

from __future__ import annotations

import math

import torch

from . import masks, reference
from ._checks import check_key_padding_mask, check_positive_int, check_qkv, resolve_scale
from ._cpu_flash import cpu_flash_ops, merge_rows_
from ._flex import flex_run
from .backends import register, resolve
from .full import _global_sdpa
from .local import (
    Extra,
    _flash_band_applies,
    _flash_block,
    band_backward,
    band_forward,
    repeat_kv,
    sum_kv_groups,
    windowed_attention,
)


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
    acc = torch.promote_types(k.dtype, torch.float32)  # means in at least float32 (float64 stays float64)
    if key_padding_mask is None:
        n = seq // chunk_size
        k_sum = k[:, :, : n * chunk_size].to(acc).view(batch, heads, n, chunk_size, dim).mean(3)
        v_sum = v[:, :, : n * chunk_size].to(acc).view(batch, heads, n, chunk_size, dim).mean(3)
        exists = torch.ones(batch, n, dtype=torch.bool, device=k.device)
        return k_sum.to(k.dtype), v_sum.to(v.dtype), exists
    n_real = key_padding_mask.sum(-1)
    n = int(n_real.max().item()) // chunk_size
    ranks = masks.key_ranks(key_padding_mask, batch, seq, device=k.device)
    # Bucket n collects padding and the incomplete tail; it is dropped.
    bucket = torch.where(key_padding_mask, ranks // chunk_size, n).clamp(max=n)
    k_sum, v_sum = [], []
    for b in range(batch):
        k_sum.append(k.new_zeros(heads, n + 1, dim, dtype=acc).index_add(1, bucket[b], k[b].to(acc)))
        v_sum.append(v.new_zeros(heads, n + 1, dim, dtype=acc).index_add(1, bucket[b], v[b].to(acc)))
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


def _summary_mask(seq_q: int, seq_kv: int, n_chunks: int, window: int, chunk_size: int, dtype, device):
    """Rows from ``r0`` on (the first query that sees a summary) and their additive mask over the
    summaries: ``ln(chunk_size)`` where visible, ``-inf`` elsewhere. Unpadded rows only (a query's
    rank is its index)."""
    q_idx = torch.arange(seq_kv - seq_q, seq_kv, device=device)
    visible = masks.chunk_summary_visible(window, chunk_size)(q_idx[:, None], torch.arange(n_chunks, device=device)[None, :])
    seen = visible.any(-1)
    r0 = int(seen.float().argmax()) if bool(seen.any()) else seq_q
    mask = torch.full((seq_q - r0, n_chunks), -math.inf, dtype=dtype, device=device)
    return r0, mask.masked_fill_(visible[r0:], math.log(chunk_size))


class _FlashBandSummaries(torch.autograd.Function):
    """The band (flash band kernel) and the chunk summaries (one flash call), merged by log-sum-exp.

    Saves q, k, v, the summaries, the output and the log-sum-exp; the backward runs each part's flash
    backward with the merged output and log-sum-exp, which gives exactly its share of the gradients.
    The summaries' gradients flow on to k and v through their means (autograd, outside)."""

    @staticmethod
    def forward(ctx, q, k, v, k_sum, v_sum, window, chunk_size, scale, block):
        groups = q.shape[1] // k.shape[1]
        out, lse = band_forward(q, repeat_kv(k, groups), repeat_kv(v, groups), window, scale, block)
        r0, mask = _summary_mask(q.shape[2], k.shape[2], k_sum.shape[2], window, chunk_size, q.dtype, q.device)
        if r0 < q.shape[2]:
            flash = cpu_flash_ops()[0]
            o_s, l_s = flash(q[:, :, r0:], repeat_kv(k_sum, groups), repeat_kv(v_sum, groups), 0.0, False,
                             attn_mask=mask, scale=scale)
            # in place: one [B, H, rows, D] temporary (the summaries' output) besides the result
            merge_rows_(out, lse, slice(r0, None), (o_s, l_s))
        ctx.save_for_backward(q, k, v, k_sum, v_sum, out, lse, mask)
        ctx.window, ctx.scale, ctx.block, ctx.r0 = window, scale, block, r0
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, k_sum, v_sum, out, lse, mask = ctx.saved_tensors
        groups, r0 = q.shape[1] // k.shape[1], ctx.r0
        grad_out = grad_out.contiguous()
        dq, dk, dv = band_backward(grad_out, q, repeat_kv(k, groups), repeat_kv(v, groups), out, lse,
                                   ctx.window, ctx.scale, ctx.block)
        ks, vs = repeat_kv(k_sum, groups), repeat_kv(v_sum, groups)
        if r0 < q.shape[2]:
            back = cpu_flash_ops()[1]
            gq, dk_sum, dv_sum = back(grad_out[:, :, r0:], q[:, :, r0:], ks, vs, out[:, :, r0:].contiguous(),
                                      lse[:, :, r0:].contiguous(), 0.0, False, attn_mask=mask, scale=ctx.scale)
            dq[:, :, r0:] += gq
        else:  # no query sees a summary
            dk_sum, dv_sum = torch.zeros_like(ks), torch.zeros_like(vs)
        return (dq, sum_kv_groups(dk, groups), sum_kv_groups(dv, groups), sum_kv_groups(dk_sum, groups),
                sum_kv_groups(dv_sum, groups), None, None, None, None)


@register("global_approx", "sdpa")
def _global_approx_sdpa(q, k, v, *, window, chunk_size, scale, key_padding_mask):
    if window >= k.shape[2]:  # no summary is ever visible: global attention
        return _global_sdpa(q, k, v, scale=scale, key_padding_mask=key_padding_mask)
    k_sum, v_sum, exists = chunk_summaries(k, v, chunk_size=chunk_size, key_padding_mask=key_padding_mask)
    if _flash_band_applies(q, key_padding_mask) and q.shape[2] and k_sum.shape[2]:
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        block = _flash_block(window, backward)
        return _FlashBandSummaries.apply(q, k, v, k_sum, v_sum, window, chunk_size, scale, block)
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
