"""Which keys a query sees, as small composable predicates.

A predicate takes broadcastable integer tensors of *absolute* query and key
indices and returns a boolean tensor: True where the query may attend to the
key. The dense reference evaluates them on full index grids; the FlexAttention
backend uses them as ``mask_mod``; the blocked SDPA backend evaluates them on
one block at a time. How attention is computed is a separate choice (see
``backends.py``).

Sliding-window convention (transformers' ``sliding_window``): ``window`` is the
number of keys a query sees, itself included, so query ``i`` sees keys ``j``
with ``i - window < j <= i``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Predicate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def causal(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return kv_idx <= q_idx


def sliding_window(window: int) -> Predicate:
    """Causal band of ``window`` keys ending at the query itself."""

    def predicate(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (kv_idx <= q_idx) & (kv_idx > q_idx - window)

    return predicate


def chunk_summary_visible(window: int, chunk_size: int) -> Predicate:
    """Summary of chunk ``c`` (keys ``c*C .. c*C + C - 1``) is visible to query ``i``
    when the chunk ends before the query's window starts: ``c*C + C - 1 <= i - window``."""

    def predicate(q_idx: torch.Tensor, chunk_idx: torch.Tensor) -> torch.Tensor:
        return chunk_idx * chunk_size + chunk_size - 1 <= q_idx - window

    return predicate


def query_indices(seq_q: int, seq_kv: int, device=None) -> torch.Tensor:
    """Absolute key-axis index of each query: queries are the last ``seq_q`` keys."""
    return torch.arange(seq_kv - seq_q, seq_kv, device=device)


def padded(predicate: Predicate, key_padding_mask: torch.Tensor | None) -> Predicate:
    """Restrict ``predicate`` to real keys (``key_padding_mask[b, j]`` True).

    A query always keeps its own key, padding or not: a padded query then has a
    finite (ignored) output instead of a NaN that would leak through later
    layers. The result has a leading batch dimension: ``[batch, q, kv]``.
    """
    if key_padding_mask is None:
        return predicate

    def inner(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        keep = key_padding_mask[:, kv_idx.reshape(-1)].reshape(-1, *kv_idx.shape)
        return predicate(q_idx, kv_idx) & (keep | (kv_idx == q_idx))

    return inner


def key_ranks(key_padding_mask: torch.Tensor | None, batch: int, seq_kv: int, device=None) -> torch.Tensor:
    """Index of each key among the real keys of its row, ``[batch, seq_kv]``.

    Used by ``global_approx`` so that chunk boundaries follow the real tokens
    (a left-padded row gets the same chunks as the same row unpadded). Padding
    keys get the rank of the last real key before them (or -1).
    """
    if key_padding_mask is None:
        return torch.arange(seq_kv, device=device).expand(batch, seq_kv)
    return key_padding_mask.long().cumsum(-1) - 1
