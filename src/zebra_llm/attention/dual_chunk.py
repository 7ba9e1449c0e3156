"""Dual Chunk Attention kernels (An et al., ICML 2024, arXiv 2402.17463).

``dca_attention`` takes ``q`` and ``k`` as a RoPE model produces them (rotated
at their ordinary positions) and computes attention as if every query and key
had been rotated at its DCA position instead (``dca_positions.py``). No
``seq x seq`` tensor is built.

How (backend ``sdpa``, the default on CPU). Keys stay as they are. For keys of
chunk ``m`` and a query of rank ``r``, scoring at the DCA positions only needs
the *query* turned by ``dca_positions.query_shift`` (0 inside the query's own
chunk), because every key of one chunk is off from its DCA position by the same
``m * s``. So each query chunk attends in blocks: one per earlier chunk (inter),
one for the previous chunk (succ) and its own chunk (intra, causal), each an
ordinary attention call with one rotated copy of the queries; the blocks are
merged exactly through their log-sum-exp (one softmax over all of a query's
keys, as the paper's three partial attentions share). PyTorch's CPU flash
kernel returns that log-sum-exp; its backward, given the *merged* output
and log-sum-exp, yields each block's exact share of the gradient (the softmax
normaliser is the merged one), so gradients flow through all three partial
attentions and their merge with no detached weights. Work and memory are those
of causal attention plus one rotated query copy per block. This is the generic
piecewise kernel (``piecewise.py``) with DCA's spec (``specs.DCASpec``): DCA is
one instance of it, as SelfExtend, ReRoPE and STRING are.

Backends (chosen in ``backends.py``):
  ``sdpa``          the merged blocks above on CPU; on other devices, ``sdpa_stacked``.
  ``sdpa_stacked``  the issue's one-call form: per query chunk, the intra, succ and
                    inter query copies are concatenated along ``head_dim`` and every key
                    is placed in the matching third of a zero-padded key (values padded
                    likewise), one ordinary SDPA call per block of queries with its own
                    backward. 3x wider score and value products; any device.
  ``flex``          the merged blocks with FlexAttention (its log-sum-exp: ``return_aux``
                    from torch 2.9, ``return_lse`` before; refused clearly without either; differentiable
                    on CUDA; CPU runs it eagerly and without backward: tests only).
  ``reference``     the dense oracle ``reference.dca_attention``.

Conventions: the queries are the last real keys of each row (decoding with a
cache); ``rank`` counts a row's real (non-padding) keys, and the chunks start at
its first real token, so a left-padded row gives the same result as the row
alone. ``q`` and ``k`` carry RoPE at ``position_offset[b] + rank``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import reference
from ._checks import check_key_padding_mask, check_qkv, resolve_scale
from .backends import register, resolve
from .dca_positions import check_geometry, query_positions, query_shift, temperature_factor
from .piecewise import _cpu_flash_ops, check_inv_freq as _check_inv_freq, check_offsets as _check_offsets
from .piecewise import Group, merge as _merge, per_row as _per_row, rotate


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
    """Dual Chunk Attention.

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
        backend: force a kernel (``sdpa``, ``sdpa_stacked``, ``flex``, ``reference``).

    Returns the output with ``q``'s shape and dtype (zeros for padding queries).
    """
    check_qkv(q, k, v)
    # A public kernel: its arguments are checked here too (cheap, and a bad geometry would otherwise give a
    # silently wrong answer), by the same function DCAConfig uses.
    chunk_size, pretraining_length = check_geometry(chunk_size, pretraining_length, temperature_length)
    inv_freq = _check_inv_freq(inv_freq, q.shape[-1]).to(q.device)
    kpm = check_key_padding_mask(key_padding_mask, k)
    offsets = _check_offsets(position_offset, q.shape[0], q.device)
    impl = resolve("dca", backend, q, padded=kpm is not None)
    if q.shape[2] == 0:  # no queries (e.g. an empty chunk of a chunked prefill)
        return q.new_zeros(q.shape)
    solve = functools.partial(
        impl,
        inv_freq=inv_freq,
        chunk_size=chunk_size,
        pretraining_length=pretraining_length,
        temperature_length=temperature_length,
        scale=resolve_scale(scale, q.shape[-1]),
    )
    if kpm is None:
        return solve(q, k, v, position_offset=offsets)
    return _per_row(solve, q, k, v, kpm, offsets)


# --- the block plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One partial attention: query rows of a group against keys ``[k0, k1)``.

    ``relation`` and ``key_chunk`` fix the query rotation (``query_shift``);
    ``causal`` marks the square diagonal block (top-left causal).
    """

    relation: str
    key_chunk: int
    k0: int
    k1: int
    causal: bool


# ``plan`` mirrors the piecewise kernel's (DCASpec.plan in specs.py), which cuts the same groups into its own
# Block type (region index, kind); this kernel's blocks carry the relation name and causal flag its SDPA calls
# take. The query groups themselves are piecewise.Group (rows of one chunk here), holding these Blocks.
# Both are tested against reference.dca_attention.
def plan(n_keys: int, n_queries: int, chunk_size: int) -> list[Group]:
    """Cut the queries (the last ``n_queries`` of ``n_keys``) by chunk, and list each chunk's key blocks."""
    s = chunk_size
    first = n_keys - n_queries
    groups = []
    r = first
    while r < n_keys:
        chunk = r // s
        end = min(n_keys, (chunk + 1) * s)
        blocks = [Block("inter", m, m * s, (m + 1) * s, False) for m in range(chunk - 1)]
        if chunk >= 1:
            blocks.append(Block("succ", chunk - 1, (chunk - 1) * s, chunk * s, False))
        if end - r == 1:  # one query (decoding): its whole chunk prefix in one block
            blocks.append(Block("intra", chunk, chunk * s, end, False))
        else:
            if r > chunk * s:  # queries start mid-chunk (chunked prefill): earlier keys of the chunk
                blocks.append(Block("intra", chunk, chunk * s, r, False))
            blocks.append(Block("intra", chunk, r, end, True))
        groups.append(Group(r - first, end - first, r, tuple(blocks)))
        r = end
    return groups


def _shift(group: Group, block: Block, chunk_size: int, pretraining_length: int, device) -> torch.Tensor | None:
    """Positions by which the group's queries are turned for this block, or None when all are 0."""
    if block.relation == "intra":
        return None
    ranks = torch.arange(group.r0, group.r0 + group.q1 - group.q0)
    shift = query_shift(ranks, block.relation, block.key_chunk, chunk_size, pretraining_length)
    if not bool(shift.any()):
        return None
    return shift.to(device)


def _temperature(q: torch.Tensor, n_keys: int, temperature_length: int | None) -> torch.Tensor:
    """Scale each query row by its temperature factor (queries are the last ``seq_q`` of ``n_keys``)."""
    ranks = torch.arange(n_keys - q.shape[2], n_keys)
    factor = temperature_factor(ranks, temperature_length)
    if factor is None:
        return q
    factor = factor.to(device=q.device, dtype=torch.float32)[:, None]  # (Sq, 1)
    return (q.float() * factor).to(q.dtype)


# --- sdpa: merged blocks on PyTorch's CPU flash kernel (the piecewise kernel with DCASpec) ------


def _merged_sdpa(q, k, v, *, inv_freq, chunk_size, pretraining_length, temperature_length, scale, position_offset):
    from .piecewise import _solve
    from .specs import DCASpec

    spec = DCASpec(chunk_size, pretraining_length, temperature_length)
    return _solve(q, k, v, spec=spec, inv_freq=inv_freq, scale=scale, backend="sdpa", position_offset=position_offset)


@register("dca", "sdpa")
def _dca_sdpa(q, k, v, **kw):
    if q.device.type == "cpu" and _cpu_flash_ops() is not None:
        return _merged_sdpa(q, k, v, **kw)
    return _stacked_sdpa(q, k, v, **kw)


# --- sdpa_stacked: one SDPA call per query block with the three copies side by side -------------

STACKED_BLOCK = 512  # query rows per SDPA call: bounds the [rows, keys] mask


def _stacked_sdpa(q, k, v, *, inv_freq, chunk_size, pretraining_length, temperature_length, scale, position_offset):
    s, c = chunk_size, pretraining_length
    batch, heads, seq_q, dim = q.shape
    heads_kv, n_keys = k.shape[1], k.shape[2]
    first = n_keys - seq_q
    q = _temperature(q, n_keys, temperature_length)
    offset = position_offset.to(q.device)[:, None]  # (B, 1)
    # Keys move to their DCA positions j mod s (one rotation per row: offsets differ).
    j = torch.arange(n_keys, device=q.device)
    k_dca = rotate(k, (j % s - j)[None, :] - offset, inv_freq)
    ranks = torch.arange(first, n_keys, device=q.device)
    copies = [
        rotate(q, (query_positions(ranks, rel, s, c) - ranks)[None, :] - offset, inv_freq)
        for rel in ("inter", "succ", "intra")
    ]
    q3 = torch.cat(copies, dim=-1)  # (B, Hq, Sq, 3D): [inter | succ | intra]
    outs = []
    for g in plan(n_keys, seq_q, s):
        chunk = g.r0 // s
        end = g.r0 + g.q1 - g.q0  # keys [0, end) are visible to the group
        inter_end, succ_end = max(0, (chunk - 1) * s), chunk * s
        k3 = k.new_zeros(batch, heads_kv, end, 3 * dim)
        k3[:, :, :inter_end, :dim] = k_dca[:, :, :inter_end]
        k3[:, :, inter_end:succ_end, dim : 2 * dim] = k_dca[:, :, inter_end:succ_end]
        k3[:, :, succ_end:end, 2 * dim :] = k_dca[:, :, succ_end:end]
        # Values padded to 3D: PyTorch's fused CPU kernel needs equal q/k/v widths.
        v3 = F.pad(v[:, :, :end], (0, 2 * dim))
        kj = torch.arange(end, device=q.device)
        for r0 in range(g.q0, g.q1, STACKED_BLOCK):
            r1 = min(g.q1, r0 + STACKED_BLOCK)
            qi = torch.arange(first + r0, first + r1, device=q.device)[:, None]
            stop = first + r1
            o = F.scaled_dot_product_attention(
                q3[:, :, r0:r1], k3[:, :, :stop], v3[:, :, :stop], attn_mask=kj[None, :stop] <= qi,
                scale=scale, enable_gqa=heads != heads_kv,
            )
            outs.append(o[..., :dim])
    return torch.cat(outs, dim=2)


@register("dca", "sdpa_stacked")
def _dca_stacked(q, k, v, **kw):
    return _stacked_sdpa(q, k, v, **kw)


# --- flex: merged blocks with FlexAttention's log-sum-exp ---------------------------------------


@functools.lru_cache(maxsize=64)
def _causal_block_mask(n: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        lambda b, h, q_idx, kv_idx: kv_idx <= q_idx, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device,
        _compile=device.startswith("cuda"),
    )


@functools.lru_cache(maxsize=None)
def _flex_fn(on_cuda: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if on_cuda:
        # Block shapes change with the chunk index and the sequence length: compile for dynamic shapes.
        return torch.compile(flex_attention, dynamic=True)
    return flex_attention  # eager on CPU (tests only); PyTorch's warning about that is left visible


def _flex_lse_kwargs() -> dict:
    """How this torch asks FlexAttention for the log-sum-exp.

    ``return_aux=AuxRequest(lse=True)`` exists from torch 2.9; torch 2.5-2.8 have
    ``return_lse=True`` (deprecated in 2.9); anything older has no FlexAttention
    log-sum-exp at all.
    """
    import inspect

    from torch.nn.attention import flex_attention as fa

    params = inspect.signature(fa.flex_attention).parameters
    if "return_aux" in params and hasattr(fa, "AuxRequest"):
        return {"return_aux": fa.AuxRequest(lse=True)}
    if "return_lse" in params:
        return {"return_lse": True}
    raise ValueError(
        f"backend 'flex' for DCA needs FlexAttention's log-sum-exp (torch >= 2.5), this is torch {torch.__version__}; "
        "use backend 'sdpa'"
    )


def _flex_lse(result):
    out, aux = result
    return out, (aux.lse if hasattr(aux, "lse") else aux)


@register("dca", "flex")
def _dca_flex(q, k, v, *, inv_freq, chunk_size, pretraining_length, temperature_length, scale, position_offset):
    del position_offset
    lse_kwargs = _flex_lse_kwargs()
    n_keys = k.shape[2]
    q = _temperature(q, n_keys, temperature_length)
    flex = _flex_fn(q.device.type == "cuda")
    outs = []
    for g in plan(n_keys, q.shape[2], chunk_size):
        qg = q[:, :, g.q0 : g.q1]
        acc = None
        for blk in g.blocks:
            qb = rotate(qg, _shift(g, blk, chunk_size, pretraining_length, q.device), inv_freq)
            mask = _causal_block_mask(g.q1 - g.q0, str(q.device)) if blk.causal else None
            part = _flex_lse(flex(
                qb, k[:, :, blk.k0 : blk.k1], v[:, :, blk.k0 : blk.k1], block_mask=mask, scale=scale,
                enable_gqa=q.shape[1] != k.shape[1], **lse_kwargs,
            ))
            acc = _merge(acc, part)  # differentiable: FlexAttention's lse carries gradients on CUDA
        outs.append(acc[0].to(q.dtype))
    return torch.cat(outs, dim=2)


@register("dca", "reference")
def _dca_reference(q, k, v, *, inv_freq, chunk_size, pretraining_length, temperature_length, scale, position_offset):
    return reference.dca_attention(
        q, k, v, inv_freq=inv_freq, chunk_size=chunk_size, pretraining_length=pretraining_length,
        position_offset=position_offset, temperature_length=temperature_length, scale=scale,
    )
