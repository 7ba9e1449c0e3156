"""One kernel for piecewise relative positions (training-free context extension): the plan executed, and its
backends. The rule language (:class:`PiecewiseSpec`, blocks, plans) lives with the methods in ``specs.py``,
the rotations in ``rotation.py``, the CPU flash kernel and the log-sum-exp merge in ``_cpu_flash.py``.

Every training-free extension method this library ships (DCA, SelfExtend,
ReRoPE with its leaky variant, STRING) replaces RoPE's relative distance
``d = i - j`` by a rule that is piecewise over the (query ``i``, key ``j``)
plane: the plane is cut into a few *regions*, and inside region ``R`` the query
is rotated at ``query_positions(R, i)`` and the key at ``key_positions(R, j)``,
so RoPE sees ``query_positions(R, i) - key_positions(R, j)``. A method is a
:class:`PiecewiseSpec`: its regions, its two position maps, which region each
(i, j) pair falls in (``region_of``, used by the dense reference and on the thin
boundary blocks), and a *plan* cutting the queries into groups and each group's
visible keys into blocks that lie in one region (or, on a boundary, blocks
carrying a small ``[rows, keys]`` mask).

How (backend ``sdpa`` on CPU). ``q`` and ``k`` arrive rotated at their ordinary
positions (``offset + rank``). For a block of region ``R``:

* keys whose region position is their rank plus a constant ``c`` (DCA: ``-m*s``
  for chunk ``m``; identity maps: 0) stay as they are and the queries are turned
  by ``query_positions(R, i) - i - c``;
* otherwise (SelfExtend's ``j // G``, ReRoPE's 0) a rotated copy of the keys is
  made once per call and region (``O(seq * head_dim)``), and the queries are
  turned by ``query_positions(R, i) - i``.

Each block is one call of PyTorch's CPU flash kernel, which also returns the
block's log-sum-exp; all blocks of a query row are merged exactly through
those (one softmax over all of a query's keys), whichever group they come in
(a distance plan's far group shares its rows with the near groups). The backward runs the kernel's
backward per block with the *merged* output and log-sum-exp, which yields each
block's exact share of the gradient; rotations are orthogonal, so gradients are
turned back by the inverse rotation. Fractional positions (leaky ReRoPE) are
fractional rotary angles. No ``seq x seq`` tensor is built: the largest mask is
``[rows per group, rows per group]``.

Backend ``tiled`` (any device, and ``sdpa`` off the CPU) computes the same
blocks with plain matrix products in float32, key tiles of at most
:data:`KEY_TILE`, merged differentiably (autograd keeps each tile's weights, so
training memory is that of eager attention). ``reference`` is the dense oracle
:func:`reference.piecewise_attention`, built from the spec's relative-position
matrix alone.
"""

from __future__ import annotations

import functools

import torch

from ._checks import check_key_padding_mask, check_qkv, resolve_scale
from ._cpu_flash import NO_KEY_LSE, acc_dtype as _acc_dtype, cpu_flash_ops, merge, merge_rows_
from .backends import default_backend, implements, register, resolve
from .rotation import _turn, key_rotation, key_shift, rotate
from .specs import GROUP_ROWS, Block, Group, PiecewiseSpec, band_groups, distance_plan, region_blocks

KEY_TILE = 4096  # keys per matrix product on the ``tiled`` backend: bounds its [rows, keys] scores


# --- the plan executed ---------------------------------------------------------------------------


class _Keys:
    """Per-call key bookkeeping: constant offsets per block, rotated key copies per region.

    A region whose key positions are not ``rank + constant`` gets one rotated copy of the keys, as
    far as the plan's blocks of that region reach.
    """

    def __init__(self, spec: PiecewiseSpec, k: torch.Tensor, inv_freq: torch.Tensor, groups: list[Group]):
        self.spec, self.k, self.inv_freq = spec, k, inv_freq
        self._rotated: dict[int, torch.Tensor] = {}
        self._offsets: dict[tuple[int, int, int], float | None] = {}
        self._reach: dict[int, int] = {}
        for g in groups:
            for blk in g.blocks:
                self._reach[blk.region] = max(self._reach.get(blk.region, 0), blk.k1)

    def offset(self, blk: Block) -> float | None:
        """``c`` when ``key_positions(region, j) = j + c`` over the block, else ``None``."""
        key = (blk.region, blk.k0, blk.k1)
        if key not in self._offsets:
            stated = self.spec.key_offset(blk.region)
            if stated is not None:
                self._offsets[key] = float(stated)
            else:
                diff = key_shift(self.spec, blk.region, blk.k0, blk.k1)
                self._offsets[key] = float(diff[0]) if bool((diff == diff[0]).all()) else None
        return self._offsets[key]

    def block(self, blk: Block, k: torch.Tensor | None = None) -> torch.Tensor:
        """The block's keys as scored (rotated to the region's key positions when needed)."""
        k = self.k if k is None else k
        if self.offset(blk) is not None:
            return k[:, :, blk.k0 : blk.k1]
        if blk.region not in self._rotated:
            end = max(self._reach.get(blk.region, 0), blk.k1)
            cos, sin = key_rotation(self.spec, blk.region, end, self.inv_freq, k)
            self._rotated[blk.region] = _turn(k[:, :, :end], cos, sin)
        return self._rotated[blk.region][:, :, blk.k0 : blk.k1]


def _query_shift(spec: PiecewiseSpec, group: Group, blk: Block, keys: _Keys, device) -> torch.Tensor | None:
    ranks = torch.arange(group.r0, group.r0 + group.q1 - group.q0)
    shift = spec.query_positions(blk.region, ranks).to(torch.float64) - ranks
    offset = keys.offset(blk)
    if offset is not None:
        shift = shift - offset
    if not bool(shift.any()):
        return None
    return shift.to(device)


def _allowed(spec: PiecewiseSpec, group: Group, blk: Block, device) -> torch.Tensor:
    """``[rows, keys]`` bool: the pairs of a boundary block that belong to its region."""
    i = torch.arange(group.r0, group.r0 + group.q1 - group.q0)[:, None]
    j = torch.arange(blk.k0, blk.k1)[None, :]
    return ((spec.region_of(i, j) == blk.region) & (j <= i)).to(device)


def _float_mask(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _flash_block(flash, q, k, v, causal: bool, scale: float):
    """One unmasked block on the CPU flash kernel, ``(out, lse)``. A single query row with grouped key/value
    heads goes in as ``heads / kv_heads`` rows of its key/value head (what transformers' ``pack_gqa`` does for
    SDPA), so decoding reads each cached key once per key/value head instead of once per query head."""
    batch, heads, rows, dim = q.shape
    kv_heads = k.shape[1]
    if rows == 1 and heads > kv_heads and not causal:
        o, l = flash(q.reshape(batch, kv_heads, heads // kv_heads, dim), k, v, 0.0, False, scale=scale)
        return o.reshape(batch, heads, 1, dim), l.reshape(batch, heads, 1)
    return flash(q, k, v, 0.0, causal, scale=scale)


class _MergedBlocks(torch.autograd.Function):
    """Every group and block of one call on the CPU flash kernel, forward and exact backward."""

    @staticmethod
    def forward(ctx, q, k, v, spec, groups, inv_freq, scale):
        flash, _ = cpu_flash_ops()
        batch, heads, seq_q, _ = q.shape
        acc_dtype = _acc_dtype(q.dtype)
        keys = _Keys(spec, k, inv_freq, groups)
        acc_out = q.new_zeros(q.shape, dtype=acc_dtype)
        lse = q.new_full((batch, heads, seq_q), NO_KEY_LSE, dtype=acc_dtype)
        written = []  # row ranges holding a result: a group whose rows are all new stores its first block
        for g in groups:
            qg = q[:, :, g.q0 : g.q1]
            fresh = not any(g.q0 < b and a < g.q1 for a, b in written)
            turned = {}  # the group's queries rotated per (region, key offset): blocks share them
            for blk in g.blocks:
                key = (blk.region, keys.offset(blk))
                if key not in turned:
                    turned[key] = rotate(qg, _query_shift(spec, g, blk, keys, q.device), inv_freq)
                qb = turned[key]
                kb, vb = keys.block(blk), v[:, :, blk.k0 : blk.k1]
                if blk.kind == "mask":
                    allowed = _allowed(spec, g, blk, q.device)
                    if not bool(allowed.any()):
                        continue
                    o, l = flash(qb, kb, vb, 0.0, False, attn_mask=_float_mask(allowed, q.dtype), scale=scale)
                    # the kernel reports lse 0 for a row with no allowed key: it has none
                    l = l.masked_fill(~allowed.any(-1), NO_KEY_LSE)
                else:
                    o, l = _flash_block(flash, qb, kb, vb, blk.kind == "causal", scale)
                if fresh:  # nothing to merge with yet: store (saves a pass over the rows)
                    acc_out[:, :, g.q0 : g.q1] = o
                    lse[:, :, g.q0 : g.q1] = l
                    fresh = False
                else:
                    merge_rows_(acc_out, lse, slice(g.q0, g.q1), (o, l))
            written.append((g.q0, g.q1))
        out = acc_out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = (spec, groups, inv_freq, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        _, flash_backward = cpu_flash_ops()
        q, k, v, out, lse = ctx.saved_tensors
        spec, groups, inv_freq, scale = ctx.plan
        acc_dtype = _acc_dtype(q.dtype)
        keys = _Keys(spec, k, inv_freq, groups)
        grad_out = grad_out.contiguous()
        dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        dk = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
        for g in groups:
            rows = slice(g.q0, g.q1)
            qg = q[:, :, rows]
            g_out = grad_out[:, :, rows].contiguous()
            o, l = out[:, :, rows].contiguous(), lse[:, :, rows].contiguous()
            for blk in g.blocks:
                mask = None
                if blk.kind == "mask":
                    allowed = _allowed(spec, g, blk, q.device)
                    if not bool(allowed.any()):
                        continue
                    mask = _float_mask(allowed, q.dtype)
                shift = _query_shift(spec, g, blk, keys, q.device)
                ks = slice(blk.k0, blk.k1)
                # With the merged output and log-sum-exp the kernel's backward gives this block's exact
                # share: P = exp(score - lse_merged), dS = P * (dP - rowsum(dO * O_merged)).
                dqb, dkb, dvb = flash_backward(
                    g_out, rotate(qg, shift, inv_freq).contiguous(), keys.block(blk).contiguous(),
                    v[:, :, ks].contiguous(), o, l, 0.0, blk.kind == "causal", attn_mask=mask, scale=scale,
                )
                dq[:, :, rows] += rotate(dqb.to(acc_dtype), None if shift is None else -shift, inv_freq)
                if keys.offset(blk) is None:
                    dkb = rotate(dkb.to(acc_dtype), -key_shift(spec, blk.region, blk.k0, blk.k1).to(q.device), inv_freq)
                dk[:, :, ks] += dkb.to(acc_dtype)
                dv[:, :, ks] += dvb.to(acc_dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def _tiled_block(qb, kb, vb, *, kind, allowed, scale):
    """One block by plain matrix products (float32), split into key tiles; returns (out, lse)."""
    groups = qb.shape[1] // kb.shape[1]
    acc = None
    work = _acc_dtype(qb.dtype)
    qf = qb.to(work)
    m = qb.shape[2]
    for t0 in range(0, kb.shape[2], KEY_TILE):
        t1 = min(kb.shape[2], t0 + KEY_TILE)
        kt = kb[:, :, t0:t1].to(work).repeat_interleave(groups, dim=1)
        vt = vb[:, :, t0:t1].to(work).repeat_interleave(groups, dim=1)
        scores = (qf @ kt.transpose(-1, -2)) * scale
        if kind == "causal":
            ok = torch.arange(t0, t1, device=qb.device)[None, :] <= torch.arange(m, device=qb.device)[:, None]
        elif allowed is not None:
            ok = allowed[:, t0:t1]
        else:
            ok = None
        if ok is not None:
            scores = scores.masked_fill(~ok, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        probs = torch.nan_to_num(torch.exp(scores - lse[..., None]), nan=0.0)
        acc = merge(acc, (probs @ vt, lse))
    return acc


def _flex_block(qb, kb, vb, *, kind, allowed, scale):
    """One block on FlexAttention (its log-sum-exp carries gradients on CUDA); a boundary block (at most
    ``GROUP_ROWS`` square) by :func:`_tiled_block` with its small mask."""
    if kind == "mask":
        return _tiled_block(qb, kb, vb, kind=kind, allowed=allowed, scale=scale)
    from ._flex import flex_with_lse

    return flex_with_lse(qb, kb, vb, causal=kind == "causal", scale=scale)


def _flash_attn_block(qb, kb, vb, *, kind, allowed, scale):
    """One block on flash-attn (``[B, S, H, D]`` layout; its log-sum-exp ``[B, H, S]``, no gradient through
    it); a boundary block by :func:`_tiled_block`."""
    if kind == "mask":
        return _tiled_block(qb, kb, vb, kind=kind, allowed=allowed, scale=scale)
    from flash_attn import flash_attn_func

    out, lse, _ = flash_attn_func(qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), softmax_scale=scale,
                                  causal=kind == "causal", return_attn_probs=True)
    return out.transpose(1, 2), lse


def _run_blocks(q, k, v, spec, groups, inv_freq, scale, block_fn):
    """Every group and block of the plan through ``block_fn(qb, kb, vb, kind=, allowed=, scale=) -> (out,
    lse)``, merged differentiably (autograd keeps each block's weights)."""
    keys = _Keys(spec, k, inv_freq, groups)
    parts = []  # (q0, q1, (out, lse)) of each group
    for g in groups:
        qg = q[:, :, g.q0 : g.q1]
        acc = None
        for blk in g.blocks:
            allowed = _allowed(spec, g, blk, q.device) if blk.kind == "mask" else None
            if allowed is not None and not bool(allowed.any()):
                continue
            qb = rotate(qg, _query_shift(spec, g, blk, keys, q.device), inv_freq)
            acc = merge(acc, block_fn(qb, keys.block(blk), v[:, :, blk.k0 : blk.k1], kind=blk.kind,
                                      allowed=allowed, scale=scale))
        if acc is not None:
            parts.append((g.q0, g.q1, acc))
    # groups may share rows (a distance plan's far group): merge, differentiably, per stretch of rows
    cuts = sorted({c for q0, q1, _ in parts for c in (q0, q1)})
    outs = []
    for u, w in zip(cuts, cuts[1:]):
        acc = None
        for q0, q1, (out, lse) in parts:
            if q0 <= u and w <= q1:
                acc = merge(acc, (out[:, :, u - q0 : w - q0], lse[:, :, u - q0 : w - q0]))
        outs.append(acc[0].to(q.dtype))
    return torch.cat(outs, dim=2)


STACKED_BLOCK = 512  # query rows per SDPA call of ``sdpa_stacked``: bounds its [rows, keys] mask


def _run_stacked(q, k, v, spec, groups, inv_freq, scale):
    """``sdpa_stacked``: per query group, one query copy per region side by side along ``head_dim`` and each
    key, turned to its block's region, in that region's slot of a zero-padded key (values padded likewise),
    so one ordinary SDPA call per block of rows scores every key in its region. For plans whose groups do
    not share rows and carry no boundary masks (DCA's); R regions make the products R times wider."""
    if any(blk.kind == "mask" for g in groups for blk in g.blocks) or any(
        a.q1 > b.q0 for a, b in zip(groups, groups[1:])
    ):
        raise ValueError(
            f"backend 'sdpa_stacked' needs a plan of disjoint query groups without boundary masks (DCA's); "
            f"{spec.name}'s plan has them: use 'sdpa'"
        )
    batch, heads, seq_q, dim = q.shape
    heads_kv, n_keys = k.shape[1], k.shape[2]
    first = n_keys - seq_q
    n_regions = len(spec.regions)
    ranks = torch.arange(first, n_keys)
    # offsets cancel: queries and keys keep their ordinary rotation plus the turn to the region's positions
    copies = [rotate(q, (spec.query_positions(r, ranks).to(torch.float64) - ranks).to(q.device), inv_freq)
              for r in range(n_regions)]
    q_all = torch.cat(copies, dim=-1)  # (B, Hq, Sq, R*D)
    turned = [rotate(k, key_shift(spec, r, 0, n_keys).to(k.device), inv_freq) for r in range(n_regions)]
    v_all = torch.nn.functional.pad(v, (0, (n_regions - 1) * dim))  # the fused CPU kernel needs equal widths
    outs = []
    for g in groups:
        end = g.r0 + g.q1 - g.q0  # keys [0, end) can be visible to the group
        k_all = k.new_zeros(batch, heads_kv, end, n_regions * dim)
        seen = torch.zeros(end, dtype=torch.bool, device=q.device)
        for blk in g.blocks:
            r = blk.region
            k_all[:, :, blk.k0 : blk.k1, r * dim : (r + 1) * dim] = turned[r][:, :, blk.k0 : blk.k1]
            seen[blk.k0 : blk.k1] = True
        kj = torch.arange(end, device=q.device)
        for r0 in range(g.q0, g.q1, STACKED_BLOCK):
            r1 = min(g.q1, r0 + STACKED_BLOCK)
            qi = torch.arange(first + r0, first + r1, device=q.device)[:, None]
            o = torch.nn.functional.scaled_dot_product_attention(
                q_all[:, :, r0:r1], k_all, v_all[:, :, :end], attn_mask=(kj[None, :] <= qi) & seen[None, :],
                scale=scale, enable_gqa=heads != heads_kv,
            )
            outs.append(o[..., :dim])
    return torch.cat(outs, dim=2)


# --- backends (registered in backends.py with the other variants: the same choice and ``auto`` rule) ----


def _prepared(q, k, spec):
    """The queries scaled by the spec's logit multiplier, and the plan."""
    n_keys = k.shape[2]
    ranks = torch.arange(n_keys - q.shape[2], n_keys)
    factor = spec.query_scale(ranks)
    if factor is not None:
        q = (q.to(_acc_dtype(q.dtype)) * factor.to(q.device, _acc_dtype(q.dtype))[:, None]).to(q.dtype)
    return q, spec.plan(n_keys, q.shape[2])


@register("piecewise", "sdpa")
def _piecewise_sdpa(q, k, v, *, spec, inv_freq, scale, position_offset):
    """PyTorch's CPU flash kernel per block (exact backward); ``tiled`` off the CPU."""
    q, groups = _prepared(q, k, spec)
    if q.device.type == "cpu" and cpu_flash_ops() is not None:
        return _MergedBlocks.apply(q, k, v, spec, groups, inv_freq, scale)
    return _run_blocks(q, k, v, spec, groups, inv_freq, scale, _tiled_block)


@register("piecewise", "tiled")
def _piecewise_tiled(q, k, v, *, spec, inv_freq, scale, position_offset):
    q, groups = _prepared(q, k, spec)
    return _run_blocks(q, k, v, spec, groups, inv_freq, scale, _tiled_block)


@register("piecewise", "sdpa_stacked")
def _piecewise_stacked(q, k, v, *, spec, inv_freq, scale, position_offset):
    q, groups = _prepared(q, k, spec)
    return _run_stacked(q, k, v, spec, groups, inv_freq, scale)


@register("piecewise", "flex")
def _piecewise_flex(q, k, v, *, spec, inv_freq, scale, position_offset):
    q, groups = _prepared(q, k, spec)
    return _run_blocks(q, k, v, spec, groups, inv_freq, scale, _flex_block)


@register("piecewise", "flash_attn", grad=False)
def _piecewise_flash_attn(q, k, v, *, spec, inv_freq, scale, position_offset):
    q, groups = _prepared(q, k, spec)
    return _run_blocks(q, k, v, spec, groups, inv_freq, scale, _flash_attn_block)


@register("piecewise", "reference")
def _piecewise_reference(q, k, v, *, spec, inv_freq, scale, position_offset):
    from .reference import piecewise_attention as dense

    return dense(q, k, v, spec=spec, inv_freq=inv_freq, position_offset=position_offset, scale=scale)


# --- entry point ---------------------------------------------------------------------------------


def piecewise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    spec: PiecewiseSpec,
    inv_freq: torch.Tensor,
    position_offset: int | torch.Tensor = 0,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention under the relative-position rule ``spec``.

    Args:
        q: ``[batch, heads_q, seq_q, head_dim]`` with RoPE applied at each query's position.
        k, v: ``[batch, heads_kv, seq_kv, head_dim]``; ``k`` with RoPE applied. The queries are
            the last ``seq_q`` real keys.
        spec: the method's :class:`PiecewiseSpec` (built, and so checked, once: by the method's config).
        inv_freq: the model's rotary inverse frequencies ``[rotary_dim / 2]`` (transformers'
            ``rotate_half`` layout; dims past ``rotary_dim`` are not rotated).
        position_offset: int or ``[batch]``: row ``b``'s real token of rank ``r`` was rotated
            at ``position_offset[b] + r`` (only the reference needs it: offsets cancel).
        scale: score scale, default ``1/sqrt(head_dim)``.
        key_padding_mask: optional ``[batch, seq_kv]`` bool, True for real tokens. Ranks count
            real tokens, so a left-padded row equals the row alone.
        backend: one of ``backends.supported("piecewise")`` (``sdpa``: CPU flash blocks, ``tiled``
            elsewhere; ``tiled``; ``sdpa_stacked``; ``flex``; ``flash_attn``; ``reference``), or
            ``auto``/``None``: the ``use_backend`` choice, else the ``auto`` rule every variant follows
            (a chosen backend this variant lacks counts as ``auto``).

    Returns the output with ``q``'s shape and dtype (zeros for padding queries).
    """
    check_qkv(q, k, v)
    if not isinstance(spec, PiecewiseSpec):
        raise ValueError(f"spec must be a PiecewiseSpec, got {type(spec).__name__}")
    inv_freq = check_inv_freq(inv_freq, q.shape[-1]).to(q.device)
    kpm = check_key_padding_mask(key_padding_mask, k)
    offsets = check_offsets(position_offset, q.shape[0], q.device)
    name = backend
    if name is None:
        name = default_backend()
        if name != "auto" and not implements("piecewise", name):
            name = "auto"  # a backend chosen for other variants only
    # every row runs on its own real tokens (per_row), so no call of the kernel sees a padding mask
    impl = resolve("piecewise", name, q, padded=False)
    if q.shape[2] == 0:
        return q.new_zeros(q.shape)
    scale = resolve_scale(scale, q.shape[-1])
    # a backend named in the call runs the plan (tests compare backends); a default choice takes the short cut
    if backend in (None, "auto") and impl is not _piecewise_reference and _plain(spec, kpm, k.shape[2]):
        return _plain_causal(q, k, v, kpm, scale)
    if kpm is None:
        return impl(q, k, v, spec=spec, inv_freq=inv_freq, scale=scale, position_offset=offsets)
    solve = functools.partial(impl, spec=spec, inv_freq=inv_freq, scale=scale)
    return per_row(solve, q, k, v, kpm, offsets)


def _plain(spec: PiecewiseSpec, kpm: torch.Tensor | None, n_keys: int) -> bool:
    """Every row of the batch is short enough for the rule to be ordinary causal attention."""
    longest = n_keys if kpm is None else int(kpm.sum(dim=1).max())
    if longest > spec.plain_length:
        return False
    factor = spec.query_scale(torch.arange(longest))
    return factor is None or bool((factor == 1).all())


def _plain_causal(q, k, v, kpm, scale):
    """A batch whose rows the rule leaves as they are: one causal call for the whole batch (the global
    variant's paths; padded: a ``[batch, seq_kv]`` mask when decoding, row segments otherwise) instead of
    a plan (one per row when padded). ``q`` and ``k`` are rotated at ``offset + rank``, so their products
    already carry each pair's rank distance. Serving decodes such batches at every step, and a method
    inside the trained context costs what the unmodified model does."""
    from .full import global_attention

    out = global_attention(q, k, v, scale=scale, key_padding_mask=kpm)
    if kpm is None:
        return out
    real_q = kpm[:, k.shape[2] - q.shape[2] :]
    return out.masked_fill(~real_q[:, None, :, None], 0)  # zeros at padding queries, as per_row gives


def check_inv_freq(inv_freq, head_dim: int) -> torch.Tensor:
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1 or not inv_freq.is_floating_point():
        raise ValueError("inv_freq must be a 1-D floating tensor (the model's rotary inverse frequencies)")
    if not 1 <= 2 * inv_freq.shape[0] <= head_dim:
        raise ValueError(f"inv_freq has {inv_freq.shape[0]} frequencies; 2 * that must be in [2, head_dim={head_dim}]")
    return inv_freq


def check_offsets(position_offset, batch: int, device) -> torch.Tensor:
    offsets = torch.as_tensor(position_offset, device=device)
    if offsets.is_floating_point() or offsets.dim() > 1 or (offsets.dim() == 1 and offsets.shape[0] != batch):
        raise ValueError(f"position_offset must be an int or an integer tensor of shape [batch]={batch}")
    return offsets.to(torch.long).expand(batch)


def per_row(solve, q, k, v, kpm, offsets):
    """Padded batches: every row on its own real tokens (a view when they are contiguous)."""
    seq_q, seq_kv = q.shape[2], k.shape[2]
    first_q = seq_kv - seq_q
    out = q.new_zeros(q.shape)
    for b in range(q.shape[0]):
        slots = kpm[b].nonzero().flatten()
        q_slots = slots[slots >= first_q] - first_q
        m = q_slots.numel()
        if m == 0:
            continue
        lo, hi = int(slots[0]), int(slots[-1]) + 1
        if hi - lo == slots.numel():  # left or right padding: slice
            q0 = int(q_slots[0])
            out[b : b + 1, :, q0 : q0 + m] = solve(
                q[b : b + 1, :, q0 : q0 + m], k[b : b + 1, :, lo:hi], v[b : b + 1, :, lo:hi],
                position_offset=offsets[b : b + 1],
            )
        else:
            kb, vb = k[b : b + 1].index_select(2, slots), v[b : b + 1].index_select(2, slots)
            ob = solve(q[b : b + 1].index_select(2, q_slots), kb, vb, position_offset=offsets[b : b + 1])
            out[b, :, q_slots] = ob[0]
    return out


__all__ = [
    "Block",
    "GROUP_ROWS",
    "Group",
    "KEY_TILE",
    "PiecewiseSpec",
    "band_groups",
    "distance_plan",
    "merge",
    "region_blocks",
    "per_row",
    "piecewise_attention",
    "rotate",
]
