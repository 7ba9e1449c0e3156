"""Keys and values across a context-parallel group: a halo for local layers, an all-gather for global ones.

Context parallelism splits every sequence of ``length`` tokens (a multiple of the group size ``N``) into
``N`` contiguous slices of ``n = length / N`` tokens; rank ``r`` of the group holds positions
``r*n .. (r+1)*n - 1`` of the queries, keys and values of every layer. Attention then needs keys from other
ranks, and how many depends on the layer:

* a **local** (sliding-window) layer: query ``i`` sees keys ``i - window < j <= i``, so rank ``r`` needs the
  ``window - 1`` keys before its slice, the *halo*, sent point to point by the rank(s) before it (several
  ranks when ``window - 1 > n``). In backward the halo's key/value gradients go back the same way and are
  added to the senders' own. The bytes sent per layer are O(window), whatever the sequence length
  (:func:`halo_keys`);
* a **global** layer (and DCA or another extension method on it, which re-positions only the queries):
  every earlier key, so the keys and values are all-gathered over the group, and their gradients are
  reduce-scattered back in backward: exact, O(length) bytes per layer (:func:`gathered_keys`).

Both return keys and values that end at this rank's last query, so the ordinary kernels
(``local_attention``, ``global_attention``, ``dca_attention``, ...) run unchanged with their usual
convention: the queries are the last ``q_len`` positions of the keys. Causal attention makes the
contiguous layout uneven (the last rank's global queries see every key); the per-layer communication
stays the simple, cheap one above, which is what a Zebra layout is for.

:class:`Shard` says which slice a rank holds and counts the bytes each rank sends (``stats``), by layer
kind and direction, for ``benchmarks/context_parallel.py``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class Shard:
    """This process's contiguous slice of a sequence split over a context-parallel group.

    ``group`` is the process group of the slices (``None``: the default group); ``rank`` and ``size`` are
    this process's rank in it and its size; ``length`` is the whole (padded) sequence length, a multiple
    of ``size``. ``stats[(kind, direction)]`` counts the bytes this rank sent (``kind`` ``"halo"`` or
    ``"all_gather"``, ``direction`` ``"forward"`` or ``"backward"``).
    """

    group: object
    rank: int
    size: int
    length: int
    stats: dict = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self):
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"context parallel: rank {self.rank} is not in a group of size {self.size}")
        if self.length % self.size:
            raise ValueError(
                f"context parallel: the sequence length ({self.length}) must be a multiple of the group size "
                f"({self.size}); pad it first (zebra_llm.train.context_parallel pads batches)"
            )

    @property
    def n(self) -> int:
        """Tokens per rank."""
        return self.length // self.size

    @property
    def start(self) -> int:
        return self.rank * self.n

    @property
    def end(self) -> int:
        return self.start + self.n

    def peer(self, rank: int) -> int:
        """The global rank of ``rank`` of this group (what point-to-point calls take)."""
        return dist.get_global_rank(self.group, rank) if self.group is not None else rank

    def count(self, kind: str, direction: str, tensors) -> None:
        self.stats[(kind, direction)] += sum(t.numel() * t.element_size() for t in tensors)


def halo_plan(rank: int, size: int, n: int, halo: int) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """Who sends what for a halo of ``halo`` tokens (the keys before each rank's slice of ``n``).

    Returns ``(sends, receives)`` of rank ``rank``: ``sends`` lists ``(destination, lo, hi)`` with the
    slice ``lo:hi`` of this rank's own tokens that the destination needs; ``receives`` lists
    ``(source, lo, hi)`` with where the source's piece goes in this rank's halo buffer (which holds
    global positions ``start - min(halo, start) .. start - 1``). Every pair exchanges at most one piece.
    """
    sends, receives = [], []
    start = rank * n
    first = start - min(halo, start)  # first global position of this rank's halo
    for src in range(first // n, rank):
        lo = max(src * n, first)
        receives.append((src, lo - first, (src + 1) * n - first))
    for dst in range(rank + 1, size):
        need = max(0, dst * n - halo)  # first position the destination's halo holds
        if need >= (rank + 1) * n:
            break
        sends.append((dst, max(start, need) - start, n))
    return sends, receives


def _exchange(shard: Shard, outgoing: list[tuple[int, torch.Tensor]], incoming: list[tuple[int, torch.Tensor]]):
    """Point-to-point: send each ``(rank, tensor)`` of ``outgoing``, receive into each of ``incoming``."""
    ops = [dist.P2POp(dist.isend, t, shard.peer(r), shard.group) for r, t in outgoing]
    ops += [dist.P2POp(dist.irecv, t, shard.peer(r), shard.group) for r, t in incoming]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


class _Halo(torch.autograd.Function):
    """``x [B, H, n, F]`` (this rank's keys and values, side by side) -> the halo ``[B, H, h, F]``."""

    @staticmethod
    def forward(ctx, x, halo: int, shard: Shard):
        sends, receives = halo_plan(shard.rank, shard.size, shard.n, halo)
        ctx.plan, ctx.shard, ctx.shape = (sends, receives), shard, x.shape
        b, h, _, f = x.shape
        outgoing = [(dst, x[:, :, lo:hi].contiguous()) for dst, lo, hi in sends]
        incoming = [(src, x.new_empty(b, h, hi - lo, f)) for src, lo, hi in receives]
        shard.count("halo", "forward", [t for _, t in outgoing])
        _exchange(shard, outgoing, incoming)
        if not incoming:
            return x.new_empty(b, h, 0, f)
        return torch.cat([t for _, t in incoming], dim=2)

    @staticmethod
    def backward(ctx, grad):
        (sends, receives), shard = ctx.plan, ctx.shard
        b, h, _, f = ctx.shape
        # the halo's gradient goes back to the ranks it came from; ours comes from the ranks we sent to
        outgoing = [(src, grad[:, :, lo:hi].contiguous()) for src, lo, hi in receives]
        incoming = [(dst, grad.new_empty(b, h, hi - lo, f)) for dst, lo, hi in sends]
        shard.count("halo", "backward", [t for _, t in outgoing])
        _exchange(shard, outgoing, incoming)
        out = grad.new_zeros(ctx.shape)
        for (_, lo, hi), (_, piece) in zip(sends, incoming):
            out[:, :, lo:hi] += piece
        return out, None, None


class _AllGather(torch.autograd.Function):
    """``x [B, H, n, F]`` -> ``[B, H, length, F]`` in rank order; backward: reduce-scatter of the gradient."""

    @staticmethod
    def forward(ctx, x, shard: Shard):
        ctx.shard = shard
        local = x.movedim(2, 0).contiguous()  # (n, B, H, F): the collectives split dim 0
        out = local.new_empty(shard.length, *local.shape[1:])
        shard.count("all_gather", "forward", [local] * (shard.size - 1))  # a ring sends N-1 slices per rank
        dist.all_gather_into_tensor(out, local, group=shard.group)
        return out.movedim(0, 2)  # (B, H, length, F)

    @staticmethod
    def backward(ctx, grad):
        shard = ctx.shard
        full = grad.movedim(2, 0).contiguous()  # (length, B, H, F)
        out = full.new_empty(shard.n, *full.shape[1:])
        shard.count("all_gather", "backward", [out] * (shard.size - 1))
        # every rank's queries put gradient on every earlier key: summed where the key lives
        dist.reduce_scatter_tensor(out, full, op=dist.ReduceOp.SUM, group=shard.group)
        return out.movedim(0, 2), None


def _check(k: torch.Tensor, v: torch.Tensor, shard: Shard) -> None:
    if k.shape[:3] != v.shape[:3] or k.shape[2] != shard.n:
        raise ValueError(
            f"context parallel: keys {tuple(k.shape)} and values {tuple(v.shape)} must hold this rank's "
            f"{shard.n} tokens ([batch, heads_kv, {shard.n}, head_dim])"
        )


def halo_keys(k: torch.Tensor, v: torch.Tensor, *, window: int, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's keys and values preceded by the ``window - 1`` before its slice (fewer at the start).

    ``k``, ``v``: ``[batch, heads_kv, n, head_dim]`` of this rank's slice. Returns ``[batch, heads_kv,
    h + n, head_dim]`` with ``h = min(window - 1, start)``: what sliding-window attention of this rank's
    queries (the last ``n``) reads. Differentiable; the halo's gradient returns to its ranks.
    """
    _check(k, v, shard)
    if window < 1:
        raise ValueError(f"context parallel: window must be >= 1, got {window}")
    d = k.shape[-1]
    kv = torch.cat([k, v], dim=-1)  # one exchange for both: (B, H, n, Dk + Dv)
    if shard.size > 1 and window > 1:
        kv = torch.cat([_Halo.apply(kv, window - 1, shard), kv], dim=2)
    return kv[..., :d], kv[..., d:]


def gathered_keys(k: torch.Tensor, v: torch.Tensor, *, shard: Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """Every key and value up to this rank's last query: ``[batch, heads_kv, end, head_dim]``.

    All-gathered over the group (backward: reduce-scatter), then cut at ``shard.end``: causal queries see
    nothing later, so the kernels' convention (queries are the last keys) holds.
    """
    _check(k, v, shard)
    d = k.shape[-1]
    kv = torch.cat([k, v], dim=-1)
    if shard.size > 1:
        kv = _AllGather.apply(kv, shard)[:, :, : shard.end]
    return kv[..., :d], kv[..., d:]


__all__ = ["Shard", "gathered_keys", "halo_keys", "halo_plan"]
