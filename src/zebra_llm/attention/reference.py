"""Dense, obviously-correct attention: the test oracle for every fast path.

Everything here builds the full ``[seq_q, seq_kv]`` score matrix and an
explicit boolean mask from the predicates in ``masks.py``, then does one
softmax in float32. It is O(seq^2) in time and memory and is never used on a
fast path (though ``backend="reference"`` lets a user force it for debugging).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import masks
from ._checks import check_key_padding_mask, check_positive_int, check_qkv, resolve_scale


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    *,
    scale: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention under an explicit mask.

    q: [B, Hq, Sq, D]; k, v: [B, Hkv, Skv, D]; allowed: bool, broadcastable to
    [B, Hq, Sq, Skv]; bias: float added to the scores, same broadcasting.
    """
    groups = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(groups, dim=1)  # (B, Hq, Skv, D)
    vf = v.float().repeat_interleave(groups, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), kf) * scale  # (B, Hq, Sq, Skv)
    if bias is not None:
        scores = scores + bias.float()
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", probs, vf).to(q.dtype)


def _grid(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qi = masks.query_indices(q.shape[2], k.shape[2], device=q.device)[:, None]  # (Sq, 1)
    kj = torch.arange(k.shape[2], device=q.device)[None, :]  # (1, Skv)
    return qi, kj


def _allowed(predicate, q, k, key_padding_mask) -> torch.Tensor:
    qi, kj = _grid(q, k)
    allowed = masks.padded(predicate, key_padding_mask)(qi, kj)
    # (Sq, Skv) or (B, Sq, Skv) -> broadcast over heads
    return allowed.unsqueeze(-3)


def global_attention(q, k, v, *, scale=None, key_padding_mask=None):
    """Causal full attention (dense reference)."""
    check_qkv(q, k, v)
    kpm = check_key_padding_mask(key_padding_mask, k)
    return dense_attention(q, k, v, _allowed(masks.causal, q, k, kpm), scale=resolve_scale(scale, q.shape[-1]))


def local_attention(q, k, v, *, window, scale=None, key_padding_mask=None):
    """Causal sliding-window attention (dense reference): query i sees ``i - window < j <= i``."""
    check_qkv(q, k, v)
    check_positive_int("window", window)
    kpm = check_key_padding_mask(key_padding_mask, k)
    allowed = _allowed(masks.sliding_window(window), q, k, kpm)
    return dense_attention(q, k, v, allowed, scale=resolve_scale(scale, q.shape[-1]))


def chunk_summaries(k, v, *, chunk_size, key_padding_mask=None):
    """Mean key and value of each complete chunk of real keys, one chunk at a time.

    Returns (k_sum, v_sum, exists): [B, Hkv, N, D], [B, Hkv, N, D], [B, N] where N
    is the number of complete chunks in the longest row; ``exists[b, c]`` is False
    where row b has fewer than ``(c + 1) * chunk_size`` real keys.
    """
    batch, heads, seq, dim = k.shape
    ranks = masks.key_ranks(key_padding_mask, batch, seq, device=k.device)
    real = torch.ones(batch, seq, dtype=torch.bool, device=k.device) if key_padding_mask is None else key_padding_mask
    n_real = real.sum(-1)  # (B,)
    n_chunks = int(n_real.max().item()) // chunk_size
    k_sum = k.new_zeros(batch, heads, n_chunks, dim, dtype=torch.float32)
    v_sum = k.new_zeros(batch, heads, n_chunks, dim, dtype=torch.float32)
    for b in range(batch):
        for c in range(n_chunks):
            members = real[b] & (ranks[b] // chunk_size == c)
            if members.sum() == chunk_size:
                k_sum[b, :, c] = k[b, :, members].float().mean(dim=1)
                v_sum[b, :, c] = v[b, :, members].float().mean(dim=1)
    exists = (torch.arange(n_chunks, device=k.device)[None, :] + 1) * chunk_size <= n_real[:, None]
    return k_sum.to(k.dtype), v_sum.to(v.dtype), exists


def global_approx_attention(q, k, v, *, window, chunk_size, scale=None, key_padding_mask=None):
    """Local attention with global approximation (dense reference).

    Keys are split into consecutive chunks of ``chunk_size`` real tokens; each
    chunk is summarised by the mean of its keys and the mean of its values.
    Query i attends, in one softmax, to its sliding window and to the summary
    of every chunk whose last token is at or before ``i - window``; a summary's
    logit gets ``+ln(chunk_size)`` so that it weighs as much as the
    ``chunk_size`` tokens it stands for (exactly so when they share one key).
    """
    check_qkv(q, k, v)
    check_positive_int("window", window)
    check_positive_int("chunk_size", chunk_size)
    kpm = check_key_padding_mask(key_padding_mask, k)
    batch = q.shape[0]
    k_sum, v_sum, exists = chunk_summaries(k, v, chunk_size=chunk_size, key_padding_mask=kpm)
    n_chunks = k_sum.shape[2]

    band = _allowed(masks.sliding_window(window), q, k, kpm).expand(batch, 1, q.shape[2], k.shape[2])
    ranks = masks.key_ranks(kpm, batch, k.shape[2], device=q.device)
    q_rank = ranks[:, k.shape[2] - q.shape[2] :]  # (B, Sq)
    chunk = torch.arange(n_chunks, device=q.device)
    visible = masks.chunk_summary_visible(window, chunk_size)(q_rank[:, :, None], chunk[None, None, :])
    visible = (visible & exists[:, None, :]).unsqueeze(1)  # (B, 1, Sq, N)

    allowed = torch.cat([band, visible], dim=-1)
    bias = torch.cat(
        [torch.zeros(k.shape[2], device=q.device), torch.full((n_chunks,), math.log(chunk_size), device=q.device)]
    )
    return dense_attention(
        q,
        torch.cat([k, k_sum], dim=2),
        torch.cat([v, v_sum], dim=2),
        allowed,
        scale=resolve_scale(scale, q.shape[-1]),
        bias=bias,
    )


def rope_rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE in transformers' layout (``rotate_half``), in float64.

    x: [..., L, D]; positions: [L] (any real values); inv_freq: [R/2] where the
    first ``R <= D`` dims are rotated and the rest pass through.
    """
    half = inv_freq.shape[0]
    angles = positions.to(torch.float64)[:, None] * inv_freq.to(device=x.device, dtype=torch.float64)[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)  # (L, R/2)
    x = x.to(torch.float64)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class _RealRow(NamedTuple):
    """One batch row's real tokens with RoPE taken off (float64), as the position-rule oracles see them."""

    cols: torch.Tensor  # (m,) the real queries' columns in q and in the output
    q_ranks: torch.Tensor  # (m,) their ranks among the n real keys (the last m)
    k_ranks: torch.Tensor  # (n,)
    q0: torch.Tensor  # (H, m, D)
    k0: torch.Tensor  # (H, n, D), repeated to the query heads
    v0: torch.Tensor  # (H, n, D)


def _real_rows(q, k, v, kpm, position_offset, inv_freq):
    """``(b, _RealRow)`` for every row ``b`` with a real query: ``q`` and ``k`` carry RoPE at
    ``position_offset[b] + rank`` (``rank`` counts the row's real keys; the queries are the last real keys),
    which is undone here."""
    batch, heads, seq_q, _ = q.shape
    seq_kv = k.shape[2]
    groups = heads // k.shape[1]
    offsets = torch.as_tensor(position_offset, device=q.device).expand(batch)
    for b in range(batch):
        real = torch.ones(seq_kv, dtype=torch.bool, device=q.device) if kpm is None else kpm[b]
        slots = real.nonzero().flatten()  # real key slots, in order; rank = index here
        n = slots.numel()
        q_slots = slots[slots >= seq_kv - seq_q]  # the real queries are the last real keys
        m = q_slots.numel()
        if m == 0:
            continue
        cols = q_slots - (seq_kv - seq_q)
        q_ranks = torch.arange(n - m, n, device=q.device)
        k_ranks = torch.arange(n, device=q.device)
        q0 = rope_rotate(q[b][:, cols], -(offsets[b] + q_ranks), inv_freq)
        k0 = rope_rotate(k[b][:, slots], -(offsets[b] + k_ranks), inv_freq).repeat_interleave(groups, 0)
        v0 = v[b][:, slots].to(torch.float64).repeat_interleave(groups, 0)
        yield b, _RealRow(cols, q_ranks, k_ranks, q0, k0, v0)


def dca_attention(
    q,
    k,
    v,
    *,
    inv_freq,
    chunk_size,
    pretraining_length,
    position_offset=0,
    temperature_length=None,
    scale=None,
    key_padding_mask=None,
):
    """Dual Chunk Attention (dense reference), built directly from ``relative_positions``.

    ``q`` and ``k`` carry RoPE (``inv_freq``, transformers' layout) at position
    ``position_offset[b] + rank``, where ``rank`` counts the real keys of row
    ``b`` and the queries are the last real keys. Each row's real tokens are
    un-rotated, and the score of query ``i`` and key ``j`` is computed with the
    query rotated by ``M[i, j]`` (``M = relative_positions(n_real)``) against the
    un-rotated key, so RoPE sees exactly that relative position; ``M < 0`` is
    masked. With ``temperature_length`` the logits of a query that sees more
    than that many keys are multiplied by ``(0.1 ln(n_seen / L0) + 1)^2``.
    Padding queries get a zero output. O(seq^2 * pretraining_length) time.
    """
    from .dca_positions import check_geometry, relative_positions

    check_qkv(q, k, v)
    chunk_size, pretraining_length = check_geometry(chunk_size, pretraining_length)
    kpm = check_key_padding_mask(key_padding_mask, k)
    scale = resolve_scale(scale, q.shape[-1])
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for b, row in _real_rows(q, k, v, kpm, position_offset, inv_freq):
        n, m = row.k_ranks.numel(), row.q_ranks.numel()
        rel = relative_positions(n, chunk_size=chunk_size, pretraining_length=pretraining_length)
        rel = rel.to(q.device)[n - m :]  # (m, n)
        scores = torch.full((q.shape[1], m, n), float("-inf"), dtype=torch.float64, device=q.device)
        for r in rel.unique().tolist():
            if r < 0:
                continue
            at_r = rel == r
            s_r = rope_rotate(row.q0, torch.full((m,), r, device=q.device), inv_freq) @ row.k0.transpose(-1, -2)
            scores = torch.where(at_r, s_r, scores)
        scores = scores * scale
        if temperature_length is not None:
            n_seen = (row.q_ranks + 1).to(torch.float64)
            factor = torch.clamp(0.1 * torch.log(n_seen / temperature_length) + 1.0, min=1.0) ** 2
            scores = scores * factor[:, None]
        out[b][:, row.cols] = torch.softmax(scores, dim=-1) @ row.v0
    return out.to(q.dtype)


def piecewise_attention(q, k, v, *, spec, inv_freq, position_offset=0, scale=None, key_padding_mask=None):
    """Attention under a piecewise relative-position rule (dense reference), built from
    ``spec.relative_positions`` alone.

    Same conventions as :func:`dca_attention`: each row's real tokens are un-rotated
    (``q``, ``k`` carry RoPE at ``position_offset[b] + rank``), and the score of query
    ``i`` and key ``j`` is the query rotated by ``M[i, j]`` (``M =
    spec.relative_positions(n_real)``; fractional values are fractional angles)
    against the un-rotated key, so RoPE sees exactly that relative position (``M < 0``:
    the key is hidden from the query). The logits of query ``i`` are multiplied
    by ``spec.query_scale`` when it has one.
    O(seq^2 * distinct relative positions) time: tests only.
    """
    check_qkv(q, k, v)
    kpm = check_key_padding_mask(key_padding_mask, k)
    scale = resolve_scale(scale, q.shape[-1])
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for b, row in _real_rows(q, k, v, kpm, position_offset, inv_freq):
        n, m = row.k_ranks.numel(), row.q_ranks.numel()
        rel = spec.relative_positions(n).to(q.device)[n - m :]  # (m, n)
        causal = (row.k_ranks[None, :] <= row.q_ranks[:, None]) & (rel >= 0)  # -1: a pair the rule hides
        scores = torch.full((q.shape[1], m, n), float("-inf"), dtype=torch.float64, device=q.device)
        for r in rel[causal].unique().tolist():
            at_r = (rel == r) & causal
            s_r = rope_rotate(row.q0, torch.full((m,), r, dtype=torch.float64, device=q.device), inv_freq)
            scores = torch.where(at_r, s_r @ row.k0.transpose(-1, -2), scores)
        scores = scores * scale
        factor = spec.query_scale(row.q_ranks.cpu())
        if factor is not None:
            scores = scores * factor.to(device=q.device, dtype=torch.float64)[:, None]
        out[b][:, row.cols] = torch.softmax(scores, dim=-1) @ row.v0
    return out.to(q.dtype)
