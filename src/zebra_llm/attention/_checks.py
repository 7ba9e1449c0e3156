"""Argument checks shared by every attention variant.

Each check raises ``ValueError`` naming the argument and what is allowed, so a
bad call fails at the boundary instead of deep inside a kernel.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Validate the shared tensor layout.

    ``q`` is ``[batch, heads_q, seq_q, head_dim]``; ``k`` and ``v`` are
    ``[batch, heads_kv, seq_kv, head_dim]`` with ``heads_q % heads_kv == 0`` and
    ``seq_kv >= seq_q``. When ``seq_kv > seq_q`` the queries are the *last*
    ``seq_q`` positions of the key sequence (decoding with a KV cache).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must have rank 4 [batch, heads, seq, head_dim], got shape {tuple(t.shape)}"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor (float32, bfloat16, float16), got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head_dim, got {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"heads of q ({q.shape[1]}) must be a multiple of heads of k and v ({k.shape[1]}) "
            "(grouped-query attention)"
        )
    if k.shape[2] < q.shape[2]:
        raise ValueError(
            f"k must have at least as many positions as q (queries are the last positions of the keys), "
            f"got seq_q={q.shape[2]} and seq_kv={k.shape[2]}"
        )


def check_positive_int(name: str, value) -> int:
    """``value`` when it is an integer >= 1 (the package's one integer check, ``zebra_llm._checks``)."""
    return check_int(name, value, 1)


def check_key_padding_mask(mask: torch.Tensor | None, k: torch.Tensor) -> torch.Tensor | None:
    """``key_padding_mask`` is ``[batch, seq_kv]``, True (or 1) for real tokens."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or tuple(mask.shape) != (k.shape[0], k.shape[2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"key_padding_mask must have shape [batch, seq_kv] = {(k.shape[0], k.shape[2])}, got {shape}"
        )
    mask = mask.to(device=k.device, dtype=torch.bool)
    return mask


def resolve_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)
