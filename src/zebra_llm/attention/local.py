"""Sliding-window (local) attention in O(seq * window).

The ``sdpa`` backend cuts the queries into blocks of ``block`` rows. A block's
queries need only the ``block + window - 1`` keys ending at its last query, so
the keys are viewed (``unfold``, no copy) as overlapping windows, one per
block, and a single batched SDPA call scores every block against its own
window under one small band mask. Work and memory are ``seq * (block +
window)``, never ``seq^2``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from . import masks, reference
from ._checks import check_key_padding_mask, check_positive_int, check_qkv, resolve_scale
from ._cpu_flash import cpu_flash_ops
from ._flex import flex_run
from .backends import register, resolve
from .full import _global_sdpa


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal sliding-window attention: query ``i`` sees keys ``i - window < j <= i``.

    ``window`` counts the keys a query sees, itself included (transformers'
    ``sliding_window`` convention); ``window >= seq`` is global attention.
    Shapes, ``scale``, ``key_padding_mask`` and ``backend`` as in
    :func:`zebra_llm.attention.global_attention`.
    """
    check_qkv(q, k, v)
    check_positive_int("window", window)
    kpm = check_key_padding_mask(key_padding_mask, k)
    impl = resolve("local", backend, q, padded=kpm is not None)
    return impl(q, k, v, window=window, scale=resolve_scale(scale, q.shape[-1]), key_padding_mask=kpm)


def block_size_for(window: int, *, n_extra: int = 0, backward: bool = False) -> int:
    """Query rows per block.

    Each query pays ``block + window - 1`` key scores, so small blocks waste
    less; too small and per-block overhead dominates, more so in the backward
    pass and when every block carries ``n_extra`` summary keys. The sizes below
    were chosen with ``benchmarks/attention.py`` (docs/benchmarks.md).
    """
    if n_extra:
        best = 256
    else:
        best = 128 if backward else 64
    return min(best, max(16, window))


class Extra:
    """Extra keys every query may see besides its band (chunk summaries).

    keys, values: ``[B, Hkv, N, D]``; visible: ``[B, seq_q, N]`` bool; bias: a
    float added to their scores.
    """

    def __init__(self, keys, values, visible, bias):
        self.keys, self.values, self.visible, self.bias = keys, values, visible, bias


def windowed_attention(q, k, v, *, window, scale, key_padding_mask=None, extra: Extra | None = None):
    """Sliding-window attention (plus optional extra keys) in O(seq * window).

    The queries are cut into three segments: a *head* whose windows reach
    before key 0, a *body* of whole blocks, and a *tail* shorter than a block.
    Head and tail are single small SDPA calls against just the keys they can
    see. The body views the keys (``unfold``, no copy) as one overlapping
    window of ``block + window - 1`` keys per block and scores every block
    against its own window in one batched SDPA call under one shared band mask.
    """
    seq_q, seq_kv = q.shape[2], k.shape[2]
    if seq_q == 0:
        return q.new_empty(q.shape)
    off = seq_kv - seq_q  # key-axis index of query 0
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    block = block_size_for(window, n_extra=0 if extra is None else extra.keys.shape[2], backward=backward)
    head = min(seq_q, max(0, window - 1 - off))
    n_blocks = (seq_q - head) // block
    pieces = []
    if head:
        pieces.append(_direct(q, k, v, 0, head, window, scale, key_padding_mask, extra))
    if n_blocks:
        pieces.append(_body(q, k, v, head, n_blocks, block, window, scale, key_padding_mask, extra))
    tail = head + n_blocks * block
    if tail < seq_q:
        pieces.append(_direct(q, k, v, tail, seq_q, window, scale, key_padding_mask, extra))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def _direct(q, k, v, q0, q1, window, scale, kpm, extra):
    """Queries ``q0..q1-1`` against the keys their windows cover, one SDPA call."""
    off = k.shape[2] - q.shape[2]
    k0, k1 = max(0, off + q0 - window + 1), off + q1
    qi = torch.arange(off + q0, off + q1, device=q.device)[:, None]
    kj = torch.arange(k0, k1, device=q.device)[None, :]
    allowed = masks.padded(masks.sliding_window(window), kpm)(qi, kj).unsqueeze(-3)  # ([B,] 1, nq, nk)
    keys, values, mask = k[:, :, k0:k1], v[:, :, k0:k1], allowed
    if extra is not None:
        keys = torch.cat([extra.keys, keys], dim=2)
        values = torch.cat([extra.values, values], dim=2)
        mask = torch.cat(
            [
                torch.where(extra.visible[:, None, q0:q1], extra.bias, -math.inf),
                torch.where(allowed, 0.0, -math.inf).expand(q.shape[0], 1, q1 - q0, k1 - k0),
            ],
            dim=-1,
        ).to(q.dtype)
    return F.scaled_dot_product_attention(
        q[:, :, q0:q1], keys, values, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


def _body(q, k, v, q0, n_blocks, block, window, scale, kpm, extra):
    """Whole blocks of queries starting at ``q0``; every block's window lies inside the keys."""
    batch, heads, _, dim = q.shape
    heads_kv = k.shape[1]
    off = k.shape[2] - q.shape[2]
    span = block + window - 1
    k0 = off + q0 - window + 1  # >= 0 by construction of the head
    k1 = k0 + (n_blocks - 1) * block + span

    def windows(x):  # (B, H, S, ...) -> (B, nb, H, span, ...), a view
        return x[:, :, k0:k1].unfold(2, span, block).movedim(-1, 3).transpose(1, 2)

    # Query r of a block sees window slots c with r <= c <= r + window - 1.
    r = torch.arange(block, device=q.device)[:, None]
    c = torch.arange(span, device=q.device)[None, :]
    mask = (c >= r) & (c <= r + window - 1)  # (block, span), the same for every block
    if kpm is not None:
        keep = windows(kpm[:, None, :])  # (B, nb, 1, span)
        mask = mask & (keep | (c == r + window - 1))  # a query always keeps itself
    k_blocks, v_blocks = windows(k), windows(v)
    if extra is not None:
        n = extra.keys.shape[2]
        visible = extra.visible[:, q0 : q0 + n_blocks * block].reshape(batch, n_blocks, block, n)
        mask = torch.cat(
            [
                torch.where(visible, extra.bias, -math.inf),
                torch.where(mask, 0.0, -math.inf).expand(batch, n_blocks, block, span),
            ],
            dim=-1,
        ).to(q.dtype)

        def with_extra(blocks, x):
            x = x[:, None].expand(batch, n_blocks, heads_kv, n, dim)
            return torch.cat([x, blocks], dim=3)

        k_blocks, v_blocks = with_extra(k_blocks, extra.keys), with_extra(v_blocks, extra.values)

    qb = q[:, :, q0 : q0 + n_blocks * block].reshape(batch, heads, n_blocks, block, dim).transpose(1, 2)
    qb = qb.reshape(batch * n_blocks, heads, block, dim)
    k_blocks = k_blocks.reshape(batch * n_blocks, heads_kv, -1, dim)
    v_blocks = v_blocks.reshape(batch * n_blocks, heads_kv, -1, dim)
    if mask.dim() == 4:  # per (row, block): (B, nb, block, S_blk)
        mask = mask.reshape(batch * n_blocks, 1, block, -1)
    out = F.scaled_dot_product_attention(
        qb, k_blocks, v_blocks, attn_mask=mask, scale=scale, enable_gqa=heads != heads_kv
    )  # (B*nb, Hq, block, D)
    return out.view(batch, n_blocks, heads, block, dim).transpose(1, 2).reshape(batch, heads, -1, dim)


# --- flash-style band on CPU: keep the log-sum-exp, recompute block scores in backward ---------------
#
# Through plain SDPA, autograd keeps every block's keys and values (with B > 1 or GQA a copy of
# ``(block + window - 1) / block`` times K and V) and the kernel's own state per call. Here the forward
# calls the CPU flash kernel directly for its log-sum-exp and keeps only q, k, v, the output and the
# log-sum-exp (``O(seq * head_dim)``, like SDPA's global kernel); the backward recomputes each block's
# scores from them with the kernel's backward (issue 13, item 6).


def _band_pieces(seq_q, seq_kv, window, block):
    """(kind, q0, q1) segments: a head whose windows reach before key 0, whole blocks, a short tail."""
    off = seq_kv - seq_q
    head = min(seq_q, max(0, window - off))  # a body block's window starts one key early (see _piece_views)
    n_blocks = (seq_q - head) // block
    pieces = []
    if head:
        pieces.append(("direct", 0, head))
    if n_blocks:
        pieces.append(("body", head, head + n_blocks * block))
    tail = head + n_blocks * block
    if tail < seq_q:
        pieces.append(("direct", tail, seq_q))
    return pieces


def _piece_views(kind, q0, q1, q, k, window, block, dtype):
    """q rows, the key range and the additive band mask of one piece.

    ``direct``: q ``[B, H, n, D]`` against keys ``k0:k1``. ``body``: q blocks ``[B*nb, H, block, D]``
    against one window of ``span = block + window`` keys each (``unfold`` view, a copy only when
    ``B > 1``); the mask ``(block, span)`` is shared by every block.
    """
    off = k.shape[2] - q.shape[2]
    if kind == "direct":
        k0, k1 = max(0, off + q0 - window + 1), off + q1
        return q[:, :, q0:q1], (k0, k1, None), _band_mask(off + q0, off + q1, k0, k1, window, dtype, q.device)
    batch, heads, _, dim = q.shape
    n_blocks = (q1 - q0) // block
    # One key more than the band needs (slot 0, always masked): with ``window % block == 0`` the
    # windows are whole blocks long, so the backward's overlap-add is whole-block adds only.
    span = block + window
    k0 = off + q0 - window
    # Row r is absolute query window + r relative to the window's first key: the same band as a direct piece.
    mask = _band_mask(window, window + block, 0, span, window, dtype, q.device)
    qb = q[:, :, q0:q1].reshape(batch, heads, n_blocks, block, dim).transpose(1, 2)
    return qb.reshape(batch * n_blocks, heads, block, dim), (k0, k0 + (n_blocks - 1) * block + span, span), mask


@functools.lru_cache(maxsize=64)
def _band_mask(q0, q1, k0, k1, window, dtype, device):
    """Additive mask (0 / -inf) of queries ``q0..q1-1`` against keys ``k0..k1-1`` (absolute indices).

    Cached: every layer of a forward and the backward ask for the same few masks, and on a loaded machine
    each small elementwise op can wait a scheduler slice for its second thread."""
    qi = torch.arange(q0, q1, device=device)[:, None]
    kj = torch.arange(k0, k1, device=device)[None, :]
    allowed = masks.sliding_window(window)(qi, kj)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, -math.inf)


def _key_windows(x, krange, block):
    """Keys ``k0:k1`` of ``x [B, H, S, D]``; for the body one window per block: ``[B*nb, H, span, D]``."""
    k0, k1, span = krange
    if span is None:
        return x[:, :, k0:k1]
    batch, heads, _, dim = x.shape
    w = x[:, :, k0:k1].unfold(2, span, block).movedim(-1, 3).transpose(1, 2)  # (B, nb, H, span, D)
    return w.reshape(-1, heads, span, dim)


def _fold_into(dst, grad, krange, block):
    """Add per-window key gradients ``[B*nb, H, span, D]`` back onto ``dst [B, H, S, D]`` (overlap-add)."""
    k0, k1, span = krange
    if span is None:
        dst[:, :, k0:k1] += grad
        return
    batch, heads, _, dim = dst.shape
    grad = grad.view(batch, -1, heads, span, dim)
    n_blocks = grad.shape[1]
    for j in range(0, span, block):  # window slots j..j+block-1 of block i land on keys k0 + i*block + j ...
        width = min(block, span - j)
        part = grad[:, :, :, j : j + width]  # (B, nb, H, width, D)
        if width == block:
            region = dst[:, :, k0 + j : k0 + j + n_blocks * block].view(batch, heads, n_blocks, block, dim)
            region += part.transpose(1, 2)
        else:
            for i in range(n_blocks):  # the last, partial slice of the window: one add per block
                a = k0 + i * block + j
                dst[:, :, a : a + width] += part[:, i]


def repeat_kv(x, groups: int):
    """Grouped-query keys or values ``[B, Hkv, S, D]`` repeated to the query heads."""
    return x if groups == 1 else x.repeat_interleave(groups, 1)


def sum_kv_groups(grad, groups: int):
    """The gradient of :func:`repeat_kv`: ``[B, Hq, S, D]`` summed back to ``[B, Hkv, S, D]``."""
    if groups == 1:
        return grad
    return grad.view(grad.shape[0], grad.shape[1] // groups, groups, *grad.shape[2:]).sum(2)


def band_forward(q, kr, vr, window, scale, block):
    """Sliding-window attention of ``q`` over ``kr``, ``vr`` (already repeated to the query heads) with
    the CPU flash kernel, piece by piece: ``(out, lse)``, ``lse`` the log-sum-exp of each query's scores."""
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
    flash = cpu_flash_ops()[0]
    for kind, q0, q1 in _band_pieces(q.shape[2], kr.shape[2], window, block):
        qp, krange, mask = _piece_views(kind, q0, q1, q, kr, window, block, q.dtype)
        o, l = flash(qp, _key_windows(kr, krange, block), _key_windows(vr, krange, block), 0.0, False,
                     attn_mask=mask, scale=scale)
        _put_rows(out, o, q0, q1, kind)
        _put_rows(lse.unsqueeze(-1), l.unsqueeze(-1), q0, q1, kind)
    return out, lse


def band_backward(grad_out, q, kr, vr, out, lse, window, scale, block):
    """Gradients ``(dq, dkr, dvr)`` of the band part (``dkr``, ``dvr`` per query head).

    ``out`` and ``lse`` are those of the whole attention the band is part of: with another key set merged
    in by log-sum-exp (``global_approx``'s summaries) they are the merged ones, and the result is then
    exactly the band keys' share of the merged attention's gradients."""
    grad_out = grad_out.contiguous()
    dq = torch.empty_like(q)
    dk = torch.zeros_like(kr)
    dv = torch.zeros_like(vr)
    back = cpu_flash_ops()[1]
    for kind, q0, q1 in _band_pieces(q.shape[2], kr.shape[2], window, block):
        qp, krange, mask = _piece_views(kind, q0, q1, q, kr, window, block, q.dtype)
        op, _, _ = _piece_views(kind, q0, q1, out, kr, window, block, q.dtype)
        gp, _, _ = _piece_views(kind, q0, q1, grad_out, kr, window, block, q.dtype)
        lp, _, _ = _piece_views(kind, q0, q1, lse.unsqueeze(-1), kr, window, block, q.dtype)
        gq, gk, gv = back(gp, qp, _key_windows(kr, krange, block), _key_windows(vr, krange, block), op,
                          lp.squeeze(-1), 0.0, False, attn_mask=mask, scale=scale)
        _put_rows(dq, gq, q0, q1, kind)
        _fold_into(dk, gk, krange, block)
        _fold_into(dv, gv, krange, block)
    return dq, dk, dv


class _FlashBand(torch.autograd.Function):
    """Sliding-window attention on CPU that saves only q, k, v, out and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v, window, scale, block):
        groups = q.shape[1] // k.shape[1]
        out, lse = band_forward(q, repeat_kv(k, groups), repeat_kv(v, groups), window, scale, block)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.window, ctx.scale, ctx.block = window, scale, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        groups = q.shape[1] // k.shape[1]
        dq, dk, dv = band_backward(grad_out, q, repeat_kv(k, groups), repeat_kv(v, groups), out, lse,
                                   ctx.window, ctx.scale, ctx.block)
        return dq, sum_kv_groups(dk, groups), sum_kv_groups(dv, groups), None, None, None


def _put_rows(dst, piece, q0, q1, kind):
    """Write a piece's rows (``[B, H, n, X]`` or body ``[B*nb, H, block, X]``) into ``dst [B, H, S, X]``."""
    batch, heads = dst.shape[:2]
    if kind == "direct":
        dst[:, :, q0:q1] = piece
        return
    block, width = piece.shape[2], piece.shape[3]
    dst[:, :, q0:q1].view(batch, heads, -1, block, width).copy_(piece.view(batch, -1, heads, block, width).transpose(1, 2))


def _flash_block(window: int, backward: bool) -> int:
    """``block_size_for``, moved down to a divisor of ``window`` within a factor 2 when there is one (whole-block
    overlap-adds in backward, see ``_piece_views``)."""
    best = block_size_for(window, backward=backward)
    for b in range(best, max(1, best // 2) - 1, -1):
        if window % b == 0:
            return b
    return best


def _flash_band_applies(q, key_padding_mask) -> bool:
    return q.device.type == "cpu" and key_padding_mask is None and q.dtype in (torch.float32, torch.float64)


@register("local", "sdpa")
def _local_sdpa(q, k, v, *, window, scale, key_padding_mask):
    if window >= k.shape[2]:  # every query sees all earlier keys: global attention
        return _global_sdpa(q, k, v, scale=scale, key_padding_mask=key_padding_mask)
    if _flash_band_applies(q, key_padding_mask) and q.shape[2]:
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return _FlashBand.apply(q, k, v, window, scale, _flash_block(window, backward))
    return windowed_attention(q, k, v, window=window, scale=scale, key_padding_mask=key_padding_mask)


@register("local", "flex")
def _local_flex(q, k, v, *, window, scale, key_padding_mask):
    return flex_run(
        q,
        k,
        v,
        scale=scale,
        predicate=masks.sliding_window(window),
        key_padding_mask=key_padding_mask,
        q_offset=k.shape[2] - q.shape[2],
        cache_key=("local", window),
    )


@register("local", "flash_attn")
def _local_flash(q, k, v, *, window, scale, key_padding_mask):
    from flash_attn import flash_attn_func

    # flash-attn's window_size=(left, right) counts keys to the left besides the
    # query itself, so our window w is (w - 1, 0).
    out = flash_attn_func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        softmax_scale=scale,
        causal=True,
        window_size=(window - 1, 0),
    )
    return out.transpose(1, 2)


@register("local", "reference")
def _local_reference(q, k, v, *, window, scale, key_padding_mask):
    return reference.local_attention(q, k, v, window=window, scale=scale, key_padding_mask=key_padding_mask)
