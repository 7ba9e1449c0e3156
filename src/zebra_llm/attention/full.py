"""Global (full causal) attention: the Zebra paper's "global" strategy and the
first layer of every Zebra group.

Memory is O(seq) on every path of the ``sdpa`` backend; no ``[seq_q, seq_kv]``
mask is built:

* no padding, as many queries as keys: SDPA's causal kernel;
* no padding, one query (decoding): SDPA with no mask (the last query sees every key); with
  padding, one call under the ``[batch, seq_kv]`` padding mask;
* right padding only (every row's real tokens come first): the causal kernel is exact for
  every real query, since a real query never reaches a padding key;
* more than one query and a longer cache (chunked prefill), and left padding or padding with
  holes: on CPU, blocks of up to ``BLOCK_ROWS`` queries each attend to the keys before their block (no mask) and
  to their own diagonal block (causal), and the two partial results are merged exactly through
  their log-sum-exp (:class:`_CausalSegments`, which also does the exact backward); a padded
  row is cut to its real tokens first (per-row slices, as ``dca.py`` does). On other devices
  the chunked case uses SDPA's lower-right causal bias, which dispatches to a fused kernel.

Outputs at padding *queries* are finite and unspecified (they are never read by a real
token): the kernels give them their own value, or, on the right-padding path, causal
attention over the row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import masks, reference
from ._checks import check_key_padding_mask, check_qkv, resolve_scale
from ._cpu_flash import cpu_flash_ops, merge_rows_
from ._flex import flex_run
from .backends import register, resolve

# Query rows per block of the merged kernel: bounds its temporaries to BLOCK_ROWS rows. Larger blocks
# were faster on a 2-core CPU at 8k tokens (left-padded prefill 2.5 s at 512, 1.3 s at 2048, 1.1 s
# unblocked; the unpadded causal kernel 1.6 s in the same run).
BLOCK_ROWS = 2048


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

    Returns the output with ``q``'s shape and dtype. Rows at padding queries are finite
    and unspecified.
    """
    check_qkv(q, k, v)
    kpm = check_key_padding_mask(key_padding_mask, k)
    impl = resolve("global", backend, q, padded=kpm is not None)
    return impl(q, k, v, scale=resolve_scale(scale, q.shape[-1]), key_padding_mask=kpm)


@register("global", "sdpa")
def _global_sdpa(q, k, v, *, scale, key_padding_mask):
    if q.shape[2] == 0:
        return q.new_empty(q.shape)
    kpm = key_padding_mask
    if kpm is not None and bool(kpm.all()):
        kpm = None
    if kpm is None or _right_padded(kpm):
        return causal_attention(q, k, v, scale=scale)
    if q.shape[2] == 1:
        # Decoding a padded batch: one row of scores per query, so the [batch, seq_kv] mask is O(seq);
        # one call for the whole batch. The query keeps its own key, as in the reference.
        allowed = kpm.clone()
        allowed[:, -1] = True
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None, None, :], scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    return _padded(q, k, v, kpm, scale)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Causal attention with the queries the last ``seq_q`` keys, no padding, O(seq) memory."""
    seq_q, seq_kv = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if seq_q == seq_kv:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if seq_q == 1:  # the last query sees every key: no mask at all
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)
    if _merged_kernel_applies(q):
        return _CausalSegments.apply(q, k, v, (_Segment(None, 0, seq_q, 0, seq_kv),), (), scale)
    return _lower_right(q, k, v, scale)


def _right_padded(kpm: torch.Tensor) -> bool:
    """Every row's real keys are a prefix of the row (True..True False..False)."""
    return bool((kpm[:, 1:] <= kpm[:, :-1]).all())


def _lower_right(q, k, v, scale):
    """Chunked prefill off the CPU: SDPA's lower-right causal bias (a fused kernel, no mask)."""
    from torch.nn.attention.bias import causal_lower_right

    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # the fused kernels behind the bias take equal head counts
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]), scale=scale)


# --- padded rows ---------------------------------------------------------------------------------


def _padded(q, k, v, kpm, scale):
    """Each row on its own real tokens. Contiguous real tokens (left padding, or left and right)
    are a slice of the row; a row with holes is gathered (a copy of that row's keys)."""
    batch, seq_q, seq_kv = q.shape[0], q.shape[2], k.shape[2]
    first_q = seq_kv - seq_q
    segments, own = [], []
    holes = []
    for b in range(batch):
        slots = kpm[b].nonzero().flatten()
        q_real = slots[slots >= first_q] - first_q
        pad_q = (~kpm[b, first_q:]).nonzero().flatten()
        if pad_q.numel():
            own.append((b, pad_q, pad_q + first_q))
        if q_real.numel() == 0:
            continue
        lo, hi = int(slots[0]), int(slots[-1]) + 1
        if hi - lo == slots.numel():
            segments.append(_Segment(b, int(q_real[0]), int(q_real[-1]) + 1, lo, hi))
        else:
            holes.append((b, slots, q_real))
    if not holes and _merged_kernel_applies(q):
        return _CausalSegments.apply(q, k, v, tuple(segments), tuple(own), scale)
    return _padded_by_rows(q, k, v, segments, own, holes, scale)


def _padded_by_rows(q, k, v, segments, own, holes, scale):
    """Padded rows one at a time with ``causal_attention`` (other devices, and rows with holes)."""
    groups = q.shape[1] // k.shape[1]
    out = q.new_zeros(q.shape)
    for b, q_rows, slots in own:
        out[b, :, q_rows] = v[b, :, slots].repeat_interleave(groups, dim=0)
    for s in segments:
        rows = slice(s.row, s.row + 1)
        out[rows, :, s.q0 : s.q1] = causal_attention(
            q[rows, :, s.q0 : s.q1], k[rows, :, s.k0 : s.k1], v[rows, :, s.k0 : s.k1], scale=scale
        )
    for b, slots, q_real in holes:
        kb, vb = k[b : b + 1].index_select(2, slots), v[b : b + 1].index_select(2, slots)
        out[b, :, q_real] = causal_attention(q[b : b + 1].index_select(2, q_real), kb, vb, scale=scale)[0]
    return out


# --- the merged kernel (CPU) -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """Queries ``[q0, q1)`` of batch row ``row`` (every row when None) are the last keys of ``[k0, k1)``
    and attend causally to those keys."""

    row: int | None
    q0: int
    q1: int
    k0: int
    k1: int


def _merged_kernel_applies(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and cpu_flash_ops() is not None


def _blocks(seg: _Segment):
    """Query blocks of a segment and their two key ranges: ``prefix`` (every key before the block,
    no mask; may be empty) and ``diag`` (the block's own keys, causal)."""
    for a in range(seg.q0, seg.q1, BLOCK_ROWS):
        b = min(seg.q1, a + BLOCK_ROWS)
        d0 = seg.k1 - (seg.q1 - a)  # key slot of query row a
        d1 = seg.k1 - (seg.q1 - b)
        rows = slice(None) if seg.row is None else slice(seg.row, seg.row + 1)
        parts = []
        if d0 > seg.k0:
            parts.append((slice(seg.k0, d0), False))
        parts.append((slice(d0, d1), True))
        yield rows, slice(a, b), parts


class _CausalSegments(torch.autograd.Function):
    """Causal attention over segments (see :class:`_Segment`) plus padding queries that output their
    own value, forward and exact backward, on PyTorch's CPU flash kernel.

    Each query block attends to the keys before it (no mask) and to its diagonal block (causal); the
    two partial results are merged through their log-sum-exp into the exact softmax over both.
    Given the *merged* output and log-sum-exp, the kernel's backward of each part is that part's
    exact share of the gradient (``P = exp(score - lse_merged)``, ``dS = P (dP - rowsum(dO * O))``).
    """

    @staticmethod
    def forward(ctx, q, k, v, segments, own, scale):
        fwd, _ = cpu_flash_ops()
        wide = torch.promote_types(q.dtype, torch.float32)
        groups = q.shape[1] // k.shape[1]
        out = q.new_zeros(q.shape)
        lse = q.new_zeros(q.shape[:3], dtype=wide)
        for b, q_rows, slots in own:
            out[b, :, q_rows] = v[b, :, slots].repeat_interleave(groups, dim=0)
        for seg in segments:
            for rows, qs, parts in _blocks(seg):
                qb = q[rows, :, qs]
                acc_out = acc_lse = None
                for keys, causal in parts:
                    o, l = fwd(qb, k[rows, :, keys], v[rows, :, keys], 0.0, causal, scale=scale)
                    if acc_out is None:
                        acc_out, acc_lse = o.to(wide), l.to(wide)
                    else:
                        merge_rows_(acc_out, acc_lse, slice(None), (o, l))
                out[rows, :, qs] = acc_out.to(q.dtype)
                lse[rows, :, qs] = acc_lse
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = (segments, own, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        _, bwd = cpu_flash_ops()
        q, k, v, out, lse = ctx.saved_tensors
        segments, own, scale = ctx.plan
        wide = lse.dtype
        groups = q.shape[1] // k.shape[1]
        grad_out = grad_out.contiguous()
        dq = torch.zeros(q.shape, dtype=wide, device=q.device)
        dk = torch.zeros(k.shape, dtype=wide, device=k.device)
        dv = torch.zeros(v.shape, dtype=wide, device=v.device)
        for seg in segments:
            for rows, qs, parts in _blocks(seg):
                qb = q[rows, :, qs].contiguous()
                g, o, l = (t[rows, :, qs].contiguous() for t in (grad_out, out, lse))
                for keys, causal in parts:
                    dqb, dkb, dvb = bwd(
                        g, qb, k[rows, :, keys].contiguous(), v[rows, :, keys].contiguous(), o, l, 0.0, causal,
                        scale=scale,
                    )
                    dq[rows, :, qs] += dqb.to(wide)
                    dk[rows, :, keys] += dkb.to(wide)
                    dv[rows, :, keys] += dvb.to(wide)
        for b, q_rows, slots in own:
            g = grad_out[b, :, q_rows].to(wide)  # (Hq, n, D)
            dv[b, :, slots] += g.view(k.shape[1], groups, *g.shape[1:]).sum(1)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


# --- other backends ------------------------------------------------------------------------------


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
