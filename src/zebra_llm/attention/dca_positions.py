"""Position rules of Dual Chunk Attention (An et al., ICML 2024, arXiv 2402.17463, Section 3).

With ``c`` = ``pretraining_length`` and ``s`` = ``chunk_size`` (``s < c``), the
sequence is cut into chunks of ``s`` tokens. Every key ``j`` sits at position
``j mod s``; query ``i`` uses one of three positions, by where the key lies:

* intra-chunk (same chunk):            ``i mod s``
* successive-chunk (previous chunk):   ``min(s + i mod s, c - 1)``
* inter-chunk (any earlier chunk):     ``c - 1``

so the relative position ``query position - key position`` never exceeds
``c - 1`` and is always ``>= 0``. Inside one chunk it is ``i - j``, exactly as
without DCA, and between neighbouring chunks it stays ``i - j`` while that is
below ``c`` (the local window ``w = c - s`` keeps precise distances).

Everything here is integer bookkeeping on plain tensors: the dense reference
(``reference.dca_attention``) reads relative positions from
:func:`relative_positions`; the kernel runs ``specs.DCASpec``, built on these rules.
"""

from __future__ import annotations

import torch

from .._checks import check_int

RELATIONS = ("intra", "succ", "inter")


def check_geometry(chunk_size, pretraining_length, temperature_length=None) -> tuple[int, int | None]:
    """Validate DCA's geometry, the one definition of it (building ``specs.DCASpec`` runs it, which ``DCAConfig``
    does once; ``DCAConfig.check_settings`` asks it about ``chunk_size`` alone before the model is known):
    ``chunk_size`` (s) and ``pretraining_length`` (c) integers with ``1 <= s < c``; ``temperature_length``
    None or an integer >= 1. ``pretraining_length=None``: not known yet (it defaults to the model's trained
    context), so ``chunk_size`` is checked alone."""
    for name, value in (("pretraining_length", pretraining_length), ("chunk_size", chunk_size)):
        if (isinstance(value, bool) or not isinstance(value, int)) and not (name == "pretraining_length" and value is None):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if pretraining_length is not None and pretraining_length < 2:
        raise ValueError(f"pretraining_length must be >= 2, got {pretraining_length}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if pretraining_length is not None and chunk_size >= pretraining_length:
        raise ValueError(
            f"chunk_size must be smaller than pretraining_length ({pretraining_length}) so that the local window "
            f"pretraining_length - chunk_size is at least 1, got chunk_size={chunk_size}"
        )
    if temperature_length is not None and (
        isinstance(temperature_length, bool) or not isinstance(temperature_length, int) or temperature_length < 1
    ):
        raise ValueError(f"temperature_length must be None or an integer >= 1, got {temperature_length!r}")
    return chunk_size, pretraining_length


def key_positions(ranks: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Position of each key: ``j mod s``."""
    return ranks % chunk_size


def query_positions(ranks: torch.Tensor, relation: str, chunk_size: int, pretraining_length: int) -> torch.Tensor:
    """Position of each query for keys in the given relation (``intra``, ``succ`` or ``inter``)."""
    s, c = chunk_size, pretraining_length
    if relation == "intra":
        return ranks % s
    if relation == "succ":
        return torch.clamp(s + ranks % s, max=c - 1)
    if relation == "inter":
        return torch.full_like(ranks, c - 1)
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def relative_positions(seq_len: int, *, chunk_size: int, pretraining_length: int) -> torch.LongTensor:
    """Relative position each query sees for each key, ``[seq_len, seq_len]``, ``-1`` above the diagonal.

    Entry ``[i, j]`` (``j <= i``) is the query's position for the chunk relation
    of ``i`` and ``j`` minus the key's position ``j mod s``. For ``seq_len=12,
    chunk_size=6, pretraining_length=10`` this is the paper's Figure 2(c).
    """
    check_int("seq_len", seq_len, 0)
    s, c = check_geometry(chunk_size, pretraining_length)
    i = torch.arange(seq_len)[:, None]  # (L, 1)
    j = torch.arange(seq_len)[None, :]  # (1, L)
    chunk_gap = i // s - j // s
    q_pos = torch.where(
        chunk_gap == 0,
        query_positions(i, "intra", s, c),
        torch.where(chunk_gap == 1, query_positions(i, "succ", s, c), query_positions(i, "inter", s, c)),
    )
    rel = q_pos - key_positions(j, s)
    return torch.where(j <= i, rel, torch.full_like(rel, -1))


def query_shift(ranks: torch.Tensor, relation: str, key_chunk: int, chunk_size: int, pretraining_length: int):
    """Rotation (in positions) that turns ordinary RoPE into DCA for one block of keys.

    The fast kernels keep every key rotated at its ordinary position (``offset +
    j``) and rotate only the queries. For keys of chunk ``m`` (positions
    ``offset + m*s + (j mod s)``) and query rank ``r`` (ordinary position
    ``offset + r``), scoring at DCA positions ``t`` (query) and ``j mod s``
    (key) needs the query turned by ``t - r + m*s``; the offset cancels. This
    is 0 for intra-chunk keys, ``min(0, c - 1 - s - r mod s)`` for the
    previous chunk, and ``c - 1 - r + m*s`` for an earlier chunk ``m``.
    """
    target = query_positions(ranks, relation, chunk_size, pretraining_length)
    return target - ranks + key_chunk * chunk_size


def temperature_factor(ranks: torch.Tensor, temperature_length: int | None) -> torch.Tensor | None:
    """Logit multiplier per query, or ``None`` when no query needs one.

    YaRN's attention temperature (Peng et al., 2023, arXiv 2309.00071):
    ``sqrt(1/t) = 0.1 ln(L / L0) + 1`` multiplies both queries and keys,
    so the logits are multiplied by ``(0.1 ln(L / L0) + 1)^2``. ChunkLlama and
    vLLM's DCA for Qwen2.5-1M apply it with ``L`` the sequence length and
    ``L0`` the pretraining length. Here ``L`` is the number of keys the query
    sees (``rank + 1``), so a query's output depends only on its own prefix:
    decoding token by token gives the same result as one forward pass. Queries
    with ``rank + 1 <= L0`` are unchanged.
    """
    if temperature_length is None:
        return None
    n_seen = ranks.to(torch.float64) + 1
    if not bool((n_seen > temperature_length).any()):
        return None
    factor = (0.1 * torch.log(n_seen / temperature_length) + 1.0).clamp(min=1.0)
    return factor * factor


__all__ = [
    "RELATIONS",
    "check_geometry",
    "key_positions",
    "query_positions",
    "query_shift",
    "relative_positions",
    "temperature_factor",
]

