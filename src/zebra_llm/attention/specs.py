"""The training-free extension methods as piecewise relative-position rules, and the language they are
written in (:class:`PiecewiseSpec`, :class:`Block`, :class:`Group` and the plan helpers).

Each method below is a :class:`PiecewiseSpec`: its
regions of (query ``i``, key ``j``), the positions at which queries and keys are
rotated in each region, and the plan the kernel follows. ``d = i - j``; positions
are ranks (the ``r``-th real token of a row has rank ``r``). The dense oracle
(``reference.piecewise_attention``) reads only ``relative_positions``.

* :class:`DCASpec`: Dual Chunk Attention (An et al., ICML 2024, arXiv 2402.17463);
  rules in ``dca_positions.py``.
* :class:`SelfExtendSpec`: SelfExtend (Jin et al., ICML 2024, arXiv 2401.01325), as
  in the official code (github.com/datamllab/LongLM, ``self_extend_patch/Llama.py``):
  ``d < W``: ``d``; else query at ``i // G + W - W // G``, key at ``j // G``.
* :class:`ReRoPESpec`: ReRoPE and leaky ReRoPE (Su, 2023, github.com/bojone/rerope,
  ``rerope_patch.py`` and ``leaky_rerope_patch.py``): ``d < w``: ``d``; else ``w``
  (query at ``w``, key at 0), or leaky ``w + (d - w) / k`` (query at
  ``i / k + w - w / k``, key at ``j / k``: fractional angles).
* :class:`StringSpec`: STRING (An et al., 2024, arXiv 2410.18745, github.com/HKUNLP/STRING,
  ``string_for_llama.py``): ``d < S``: ``d``; else ``d - S + W`` (query at ``i - S + W``).
* :class:`SinksSpec`: attention sinks with LM-Infinite's Lambda-shaped mask and distance limit (Han et
  al., NAACL 2024, arXiv 2308.16137, github.com/Glaciohound/LM-Infinite, ``models/llama.py``): a query
  sees the first ``n_sink`` tokens and its last ``window`` keys, nothing else; ``d < window``: ``d``;
  a sink farther away: ``min(d, L)`` (query at ``L``, key at 0 where ``d >= L``).
"""

from __future__ import annotations

import math

import torch

from dataclasses import dataclass

from .._checks import check_int
from .dca_positions import check_geometry, query_positions as dca_query_positions, temperature_factor

# --- the spec language: regions, position maps, plans (the kernel, piecewise.py, runs them) ------------

GROUP_ROWS = 768  # query rows per near group on distance plans: bounds the boundary masks; from 768 query
# rows PyTorch's CPU flash kernel works in 256-row tiles (64 below), about a quarter faster per pair


@dataclass(frozen=True)
class Block:
    """Keys ``[k0, k1)`` of one region for a query group.

    ``kind``: ``"full"`` (every query sees every key of the block), ``"causal"``
    (the square diagonal block, top-left causal), or ``"mask"`` (a boundary:
    which pairs belong to ``region`` comes from ``spec.region_of``).
    """

    region: int
    k0: int
    k1: int
    kind: str = "full"


@dataclass(frozen=True)
class Group:
    """Query rows ``[q0, q1)`` of the call, of ranks ``r0 .. r0 + q1 - q0 - 1``."""

    q0: int
    q1: int
    r0: int
    blocks: tuple[Block, ...]


class PiecewiseSpec:
    """A relative-position rule as regions with query/key position maps.

    Subclasses set ``name`` and ``regions`` and implement the maps, ``region_of``
    and ``plan``. Positions are ranks: the ``r``-th real token of a row (the
    first real token has rank 0). ``integral`` says whether every position is an
    integer (``relative_positions`` is then a long tensor).
    """

    name: str = "piecewise"
    regions: tuple[str, ...] = ()
    integral: bool = True

    def query_positions(self, region: int, ranks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def key_positions(self, region: int, ranks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def key_offset(self, region: int) -> int | None:
        """``c`` when ``key_positions(region, j) == j + c`` for every rank ``j``; ``None`` when not known
        (the kernel then checks each block's keys). A spec states it where it holds, to save that check."""
        return None

    def region_of(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Region index of each pair (broadcast ``i`` against ``j``; meaningful for ``j <= i``); ``-1`` for a
        pair the rule hides (a key the query does not see at all)."""
        raise NotImplementedError

    def plan(self, n_keys: int, n_queries: int) -> list[Group]:
        """Groups and blocks for the last ``n_queries`` of ``n_keys`` real tokens."""
        raise NotImplementedError

    def query_scale(self, ranks: torch.Tensor) -> torch.Tensor | None:
        """Logit multiplier per query (``[len(ranks)]`` float64), or ``None`` for none."""
        return None

    @property
    def plain_length(self) -> int:
        """A row length (in real tokens) up to which the rule is ordinary causal attention: every pair
        visible at its own distance (logit multipliers aside, which ``query_scale`` says). A row no longer
        than this needs no plan (``piecewise_attention`` then runs a padded batch as one causal call).
        It may be a lower bound (SelfExtend is also exact one token further when ``G`` divides ``W``,
        ReRoPE at ``d = w``, sinks wherever the keys past the window are sinks); 0 when not stated."""
        return 0

    def relative_positions(self, seq_len: int) -> torch.Tensor:
        """``[seq_len, seq_len]``: what RoPE sees for query ``i`` and key ``j``; ``-1`` above the diagonal."""
        check_int("seq_len", seq_len, 0)
        n = torch.arange(seq_len)
        i, j = n[:, None], n[None, :]
        region = self.region_of(i, j).expand(seq_len, seq_len)
        dtype = torch.long if self.integral else torch.float64
        rel = torch.full((seq_len, seq_len), -1, dtype=dtype)
        for r in range(len(self.regions)):
            at = (region == r) & (j <= i)
            value = self.query_positions(r, n)[:, None] - self.key_positions(r, n)[None, :]
            rel = torch.where(at, value.to(dtype), rel)
        return rel


def band_groups(n_keys: int, n_queries: int, boundary: int, rows: int = GROUP_ROWS) -> list[Group]:
    """Query groups of at most ``min(rows, boundary)`` rows, each with its keys ``(i - boundary, i]`` in
    region 0: a masked band (keys near for some of the group's rows only, ``[a - boundary + 1, b -
    boundary)``), the keys near for all of them, and the causal diagonal block."""
    step = max(1, min(rows, boundary))
    first = n_keys - n_queries
    groups = []
    for a in range(first, n_keys, step):
        b = min(n_keys, a + step)
        band0, band1 = max(0, a - boundary + 1), max(0, b - boundary)  # mixed keys: near for later rows
        blocks = []
        if b - a == 1:  # one query (decoding): its near keys and itself in one block
            blocks.append(Block(0, band0, b))
        else:
            if band1 > band0:
                blocks.append(Block(0, band0, band1, "mask"))
            if a > band1:
                blocks.append(Block(0, band1, a))
            blocks.append(Block(0, a, b, "causal"))
        groups.append(Group(a - first, b - first, a, tuple(blocks)))
    return groups


def distance_plan(n_keys: int, n_queries: int, boundary: int, rows: int = GROUP_ROWS) -> list[Group]:
    """The plan of a rule with two regions split by distance: 0 (near) for ``i - j < boundary``,
    1 (far) for ``i - j >= boundary``.

    Near: :func:`band_groups`. Far: *one* group of every query with a far key (ranks ``i >= boundary``)
    against keys ``[0, n_keys - boundary)``: query ``i`` sees keys ``j <= i - boundary``,
    which is a top-left causal square (after a block every row sees in full when the
    queries start past the boundary). The far group overlaps the near groups' rows; the
    kernel merges every block of a query row, whichever group it comes in.
    """
    groups = band_groups(n_keys, n_queries, boundary, rows)
    first = n_keys - n_queries
    f = max(first, boundary)  # the first query with a far key
    if f < n_keys:
        if n_keys - f == 1:
            far = (Block(1, 0, f - boundary + 1),)
        else:
            square = Block(1, f - boundary, n_keys - boundary, "causal")
            far = (Block(1, 0, f - boundary), square) if f > boundary else (square,)
        groups.append(Group(f - first, n_keys - first, f, far))
    return groups


def region_blocks(spec: "PiecewiseSpec", r0: int, r1: int, k0: int, k1: int, regions) -> list[Block]:
    """Blocks of keys ``[k0, k1)`` for query ranks ``[r0, r1)``, one per region of ``regions`` that has a
    pair there: ``full`` where every pair of the block is in it, else a ``mask`` block. For a few keys
    (the region is looked up on the whole ``[rows, keys]`` grid)."""
    i = torch.arange(r0, r1)[:, None]
    j = torch.arange(k0, k1)[None, :]
    region = torch.where(j <= i, spec.region_of(i, j), -1)
    blocks = []
    for r in regions:
        at = region == r
        if bool(at.all()):
            blocks.append(Block(r, k0, k1))
        elif bool(at.any()):
            blocks.append(Block(r, k0, k1, "mask"))
    return blocks


# --- the methods ---------------------------------------------------------------------------------


class DCASpec(PiecewiseSpec):
    """Dual Chunk Attention: regions intra (same chunk), succ (previous chunk), inter (earlier).

    Keys sit at ``j mod s``; queries at ``i mod s`` (intra), ``min(s + i mod s, c - 1)``
    (succ), ``c - 1`` (inter). ``temperature_length``: the optional YaRN-style logit
    temperature of ``dca_positions.temperature_factor``.
    """

    name = "dca"
    regions = ("intra", "succ", "inter")

    def __init__(self, chunk_size: int, pretraining_length: int, temperature_length: int | None = None):
        self.chunk_size, self.pretraining_length = check_geometry(chunk_size, pretraining_length, temperature_length)
        self.temperature_length = temperature_length

    def query_positions(self, region, ranks):
        return dca_query_positions(ranks, self.regions[region], self.chunk_size, self.pretraining_length)

    def key_positions(self, region, ranks):
        return ranks % self.chunk_size

    def region_of(self, i, j):
        gap = i // self.chunk_size - j // self.chunk_size
        return torch.clamp(gap, 0, 2)

    def query_scale(self, ranks):
        return temperature_factor(ranks, self.temperature_length)

    @property
    def plain_length(self):
        # intra: i mod s - j mod s = i - j; succ: min(s + i mod s, c - 1) - j mod s = i - j while i < c;
        # inter (from 2s on) never is
        return min(self.pretraining_length, 2 * self.chunk_size)

    def plan(self, n_keys, n_queries):
        """Query groups by chunk; per group one block per earlier chunk, the previous chunk, and its own."""
        s = self.chunk_size
        first = n_keys - n_queries
        groups = []
        r = first
        while r < n_keys:
            chunk = r // s
            end = min(n_keys, (chunk + 1) * s)
            blocks = [Block(2, m * s, (m + 1) * s) for m in range(chunk - 1)]
            if chunk >= 1:
                blocks.append(Block(1, (chunk - 1) * s, chunk * s))
            if end - r == 1:  # one query (decoding): its whole chunk prefix in one block
                blocks.append(Block(0, chunk * s, end))
            else:
                if r > chunk * s:  # queries start mid-chunk (chunked prefill): earlier keys of the chunk
                    blocks.append(Block(0, chunk * s, r))
                blocks.append(Block(0, r, end, "causal"))
            groups.append(Group(r - first, end - first, r, tuple(blocks)))
            r = end
        return groups


class DistanceSplitSpec(PiecewiseSpec):
    """A rule with two regions split by distance: ``d < boundary`` (region 0, the keys' own positions)
    and ``d >= boundary`` (region 1, the method's remapped positions). SelfExtend, ReRoPE and STRING are
    of this shape; a subclass names its ``boundary`` and the positions of region 1."""

    @property
    def boundary(self) -> int:
        raise NotImplementedError

    def key_offset(self, region):
        return 0 if region == 0 else None

    def region_of(self, i, j):
        return ((i - j) >= self.boundary).long()

    @property
    def plain_length(self):
        return self.boundary

    def plan(self, n_keys, n_queries):
        return distance_plan(n_keys, n_queries, self.boundary)


class SelfExtendSpec(DistanceSplitSpec):
    """SelfExtend: neighbour attention for ``d < W``, grouped attention beyond.

    Grouped region: query at ``i // G + W - W // G``, key at ``j // G``, so the
    relative position is ``W`` at ``d = W`` when ``G`` divides ``W`` and grows by one
    every ``G`` tokens. The official prefill uses ``W - W / G`` (true division) and
    its decoding path ``W - W // G``; they agree whenever ``G`` divides ``W`` (all the
    paper's settings); this follows the integer form so positions stay integers.
    ``scale_base``: the official optional log scaling of queries,
    ``max(1, log(rank + 1) / log(scale_base))`` (off by default, as there).
    """

    name = "self_extend"
    regions = ("neighbor", "group")

    def __init__(self, group_size: int, neighbor_window: int, scale_base: int | None = None):
        self.group_size = check_int("group_size", group_size, 1)
        self.neighbor_window = check_int("neighbor_window", neighbor_window, 1)
        self.scale_base = None if scale_base is None else check_int("scale_base", scale_base, 2)

    def query_positions(self, region, ranks):
        if region == 0:
            return ranks
        g, w = self.group_size, self.neighbor_window
        return ranks // g + w - w // g

    def key_positions(self, region, ranks):
        return ranks if region == 0 else ranks // self.group_size

    @property
    def boundary(self):
        return self.neighbor_window

    def query_scale(self, ranks):
        if self.scale_base is None:
            return None
        return (torch.log(ranks.to(torch.float64) + 1) / math.log(self.scale_base)).clamp(min=1.0)


class ReRoPESpec(DistanceSplitSpec):
    """ReRoPE: exact positions for ``d < w``; beyond, ``w`` (or leaky ``w + (d - w) / k``).

    ``logn_length``: the official code multiplies queries by
    ``max(1, log(position + 1) / log(training_length))`` (log-n scaling); ``None`` turns it off.
    """

    name = "rerope"
    regions = ("window", "rectified")

    def __init__(self, window: int, leak: float | None = None, logn_length: int | None = None):
        self.window = check_int("window", window, 1)
        if leak is not None:
            if isinstance(leak, bool) or not isinstance(leak, (int, float)) or not math.isfinite(leak) or leak < 1:
                raise ValueError(f"leak must be None or a finite number >= 1, got {leak!r}")
            leak = float(leak)
        self.leak = leak
        self.logn_length = None if logn_length is None else check_int("logn_length", logn_length, 2)
        self.integral = leak is None

    def query_positions(self, region, ranks):
        if region == 0:
            return ranks
        w = self.window
        if self.leak is None:
            return torch.full_like(ranks, w)
        return ranks.to(torch.float64) / self.leak + w - w / self.leak

    def key_positions(self, region, ranks):
        if region == 0:
            return ranks
        if self.leak is None:
            return torch.zeros_like(ranks)
        return ranks.to(torch.float64) / self.leak

    @property
    def boundary(self):
        return self.window

    def query_scale(self, ranks):
        if self.logn_length is None:
            return None
        factor = (torch.log(ranks.to(torch.float64) + 1) / math.log(self.logn_length)).clamp(min=1.0)
        return None if bool((factor == 1).all()) else factor


class StringSpec(DistanceSplitSpec):
    """STRING: ``d < S``: ``d``; ``d >= S``: ``d - S + W`` (query shifted to ``i - S + W``).

    The seam follows the official decoding path (keys ``d < S`` in the sliding part,
    ``d >= S`` in the shifted part). Its prefill (flash-attn ``window_size=[S, 0]``
    for the sliding part and the shifted part from ``d >= S``) counts the key at
    exactly ``d = S`` in both parts; this library counts it once, in the shifted
    part, so prefill and cached decoding agree. ``attention_factor``: the official
    code scales cos and sin of both queries and keys by it (``0.1 ln 2 + 1``), so the
    logits are multiplied by its square, for every query.
    """

    name = "string"
    regions = ("local", "shifted")

    def __init__(self, shifted_offset: int, local_value: int, attention_factor: float = 1.0):
        self.shifted_offset = check_int("shifted_offset", shifted_offset, 1)
        self.local_value = check_int("local_value", local_value, 0)
        if self.local_value > self.shifted_offset:
            raise ValueError(
                f"local_value must be <= shifted_offset ({shifted_offset}) so that shifted distances shrink, "
                f"got {local_value}"
            )
        if isinstance(attention_factor, bool) or not isinstance(attention_factor, (int, float)) or not (
            math.isfinite(attention_factor) and attention_factor > 0
        ):
            raise ValueError(f"attention_factor must be a finite number > 0, got {attention_factor!r}")
        self.attention_factor = float(attention_factor)

    def query_positions(self, region, ranks):
        return ranks if region == 0 else ranks - self.shifted_offset + self.local_value

    def key_positions(self, region, ranks):
        return ranks

    def key_offset(self, region):
        return 0

    @property
    def boundary(self):
        return self.shifted_offset

    def query_scale(self, ranks):
        if self.attention_factor == 1.0:
            return None
        return torch.full(ranks.shape, self.attention_factor**2, dtype=torch.float64)


class SinksSpec(PiecewiseSpec):
    """Attention sinks on a Lambda-shaped mask with a distance limit (LM-Infinite's rule).

    Query ``i`` sees keys ``i - window < j <= i`` (region ``window``, exact distances) and the first
    ``n_sink`` tokens (the attention sinks of StreamingLLM, Xiao et al., ICLR 2024, arXiv 2309.17453; LM-
    Infinite's ``global_branch``) at ``min(d, distance_limit)``: exact below the limit (region ``sink``),
    ``distance_limit`` from it on (region ``capped``: query at ``distance_limit``, key at 0, as the official
    code's "stationary" query and un-rotated key). Every other key is hidden. LM-Infinite runs Llama-2
    (trained on 4096) with ``local_branch 4096``, ``global_branch 100``, ``limit_distance 4096``.
    StreamingLLM's rule differs in the sinks' positions only: it places the rolling cache's keys at their
    cache slots, so a sink ``j`` sits at ``min(i, n_sink + window - 1) - j``; this spec follows LM-Infinite.
    """

    name = "sinks"
    regions = ("window", "sink", "capped")

    def __init__(self, n_sink: int, window: int, distance_limit: int):
        self.n_sink = check_int("n_sink", n_sink, 0)
        self.window = check_int("window", window, 1)
        self.distance_limit = check_int("distance_limit", distance_limit, 1)

    def query_positions(self, region, ranks):
        return torch.full_like(ranks, self.distance_limit) if region == 2 else ranks

    def key_positions(self, region, ranks):
        return torch.zeros_like(ranks) if region == 2 else ranks

    def key_offset(self, region):
        return None if region == 2 else 0

    @property
    def plain_length(self):
        return self.window  # every key inside the window, at its own distance

    def region_of(self, i, j):
        d = i - j
        sink = torch.where(d < self.distance_limit, 1, 2)
        return torch.where(d < self.window, 0, torch.where(j < self.n_sink, sink, -1))

    def plan(self, n_keys, n_queries):
        """Near groups of :func:`band_groups` (the window); each group's sinks past the window, by region."""
        groups = []
        for g in band_groups(n_keys, n_queries, self.window):
            r1 = g.r0 + g.q1 - g.q0
            sinks_end = min(self.n_sink, max(0, r1 - self.window))  # sinks out of the window for some row
            extra = region_blocks(self, g.r0, r1, 0, sinks_end, (1, 2)) if sinks_end else []
            groups.append(Group(g.q0, g.q1, g.r0, tuple(extra) + g.blocks))
        return groups


__all__ = [
    "GROUP_ROWS",
    "Block",
    "DCASpec",
    "DistanceSplitSpec",
    "Group",
    "PiecewiseSpec",
    "ReRoPESpec",
    "SelfExtendSpec",
    "SinksSpec",
    "StringSpec",
    "band_groups",
    "distance_plan",
    "region_blocks",
]
