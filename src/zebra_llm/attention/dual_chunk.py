"""Dual Chunk Attention as a kernel call (An et al., ICML 2024, arXiv 2402.17463).

DCA is one piecewise relative-position rule (``specs.DCASpec``: regions intra, succ and inter, positions
from ``dca_positions.py``) run by the one kernel of the extension methods (``piecewise.py``), with its
backends (``sdpa``: CPU flash blocks merged through their log-sum-exp, exact backward; ``tiled``;
``sdpa_stacked``: the three query copies side by side in one SDPA call per block of queries; ``flex``;
``flash_attn``, inference only; ``reference``) and the ``auto`` rule of ``backends.py``. A model with DCA
applied builds its spec once, from its ``DCAConfig``; :func:`dca_attention` is for callers holding the
bare settings (benchmarks, context-parallel training), and builds the spec, which checks the geometry.
"""

from __future__ import annotations

import torch

from .piecewise import piecewise_attention
from .specs import DCASpec


def dca_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    inv_freq: torch.Tensor,
    chunk_size: int,
    pretraining_length: int,
    position_offset: int | torch.Tensor = 0,
    temperature_length: int | None = None,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Dual Chunk Attention: :func:`piecewise.piecewise_attention` with ``DCASpec(chunk_size,
    pretraining_length, temperature_length)``.

    Args:
        q: ``[batch, heads_q, seq_q, head_dim]``, RoPE applied at each query's position.
        k, v: ``[batch, heads_kv, seq_kv, head_dim]``; ``k`` with RoPE applied. The queries
            are the last ``seq_q`` real keys.
        inv_freq: the model's rotary inverse frequencies, ``[rotary_dim / 2]`` (transformers'
            ``rotate_half`` layout; dims past ``rotary_dim`` are not rotated).
        chunk_size: ``s``; pretraining_length: ``c`` (``1 <= s < c``).
        position_offset: int or ``[batch]``: row ``b``'s real token of rank ``r`` was rotated
            at position ``position_offset[b] + r``.
        temperature_length: ``L0`` of the YaRN-style temperature (see
            ``dca_positions.temperature_factor``), or ``None`` for the paper's DCA exactly.
        scale: score scale, default ``1/sqrt(head_dim)``.
        key_padding_mask: optional ``[batch, seq_kv]`` bool, True for real tokens.
        backend: force a kernel (``sdpa``, ``tiled``, ``sdpa_stacked``, ``flex``, ``flash_attn``, ``reference``).

    Returns the output with ``q``'s shape and dtype (zeros for padding queries).
    """
    spec = DCASpec(chunk_size, pretraining_length, temperature_length)
    return piecewise_attention(q, k, v, spec=spec, inv_freq=inv_freq, position_offset=position_offset,
                               scale=scale, key_padding_mask=key_padding_mask, backend=backend)


__all__ = ["dca_attention"]
