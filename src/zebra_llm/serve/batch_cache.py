"""Joining, dropping and reusing rows of transformers ``DynamicCache`` objects, for batched decoding.

The server decodes every active request in one forward call. Each request is prefilled alone (batch 1,
no padding); when it joins the decode batch its cache is stacked under the others', **left-padded** to
the batch's length, and a ``[batch, length]`` boolean padding mask says which slots are real. Why this
is exact under every attention the library installs:

* ``sdpa`` / ``eager`` (unmodified models): transformers builds the causal mask from the 2D padding
  mask, and each row gets its own ``position_ids`` (its count of real tokens), so a padded row sees the
  keys and positions it would see alone.
* DCA, SelfExtend, ReRoPE, STRING (``zebra_llm.hf.extension``): positions count from each row's first
  real token and the kernels take the same padding mask, so a left-padded row gives the result of the
  row alone (the rule stated in that module and tested there).
* Sliding-window layers (Zebra's local layers, ``sliding_attention`` layers): the layer keeps the last
  ``window - 1`` keys of the batch's length ``L``. With left padding the real keys of every row sit at
  the right end, so the last ``window - 1`` slots of a padded row hold exactly the real keys the row
  alone would keep (``min(n_i, window - 1)`` of them) and padding before them. The layer's
  ``cumulative_length`` is the batch length ``L``, which places the mask's slice over those slots.

The tensors of a prefilled (batch-1) cache are never changed in place: ``DynamicLayer.update``
concatenates into a new tensor, so a snapshot of one (for the prefix cache) only keeps references. The
decode batch is different: ``DynamicLayer.update`` would copy the whole batch's cache at every step (at 16
requests of 1k tokens on SmolLM2, 0.75 GB per step, longer than the step's matrix products), so the
batch's full-attention layers are :class:`GrowingLayer` objects, which write each step's keys into spare
capacity in place and hand the attention views of the written slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer


HEADROOM = 256  # spare slots a batch's full-attention layers get when they are built or grown


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer of a decode batch: keys and values in a buffer with spare slots.

    ``update`` writes the new keys in place (growing the buffer by ``HEADROOM`` slots, or doubling it for
    long sequences, when it is full) and leaves ``keys`` / ``values`` as views of the written slots, which
    it returns, as ``DynamicLayer`` returns its concatenated tensors. The buffers belong to this layer
    alone (built from copies), so writing into them changes no other cache or snapshot.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.is_initialized = True
        self.device = keys.device
        self._n = keys.shape[2]
        self._k = self._buffer(keys, self._n + HEADROOM)
        self._v = self._buffer(values, self._n + HEADROOM)
        self._views()

    @staticmethod
    def _buffer(t: torch.Tensor, capacity: int) -> torch.Tensor:
        b, h, n, d = t.shape  # (B, H_kv, S, D)
        buf = t.new_empty(b, h, capacity, d)
        buf[:, :, :n] = t
        return buf

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[2]
        if self._n + n > self._k.shape[2]:
            capacity = self._n + n + max(HEADROOM, self._n)
            self._k, self._v = self._buffer(self.keys, capacity), self._buffer(self.values, capacity)
        self._k[:, :, self._n: self._n + n] = key_states
        self._v[:, :, self._n: self._n + n] = value_states
        self._n += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a decode batch drops rows through BatchCache.keep")


def _set_layer(cache, i: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Layer ``i`` of a decode batch's cache holds ``keys``, ``values`` (fresh tensors): a full-attention
    layer becomes a :class:`GrowingLayer` over them, a sliding one keeps its class."""
    layer = cache.layers[i]
    if _is_sliding(layer):
        layer.keys, layer.values = keys, values
    elif type(layer) in (DynamicLayer, GrowingLayer):  # a model's own layer class (Zebra's) is kept
        cache.layers[i] = GrowingLayer(keys, values)
    else:
        layer.keys, layer.values = keys, values


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"cache: expected a transformers DynamicCache with .layers, got {type(cache).__name__}")
    return layers


def _is_sliding(layer) -> bool:
    return bool(getattr(layer, "is_sliding", False))


def has_sliding_layers(cache) -> bool:
    return any(_is_sliding(layer) for layer in _layers(cache))


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, H, S, D]`` -> ``[B, H, length, D]`` with zeros before the keys."""
    extra = length - t.shape[2]
    return t if extra == 0 else F.pad(t, (0, 0, extra, 0))


@dataclass
class BatchCache:
    """A decode batch: a ``DynamicCache`` whose rows are left-padded to ``length`` slots, and its mask.

    ``mask``: ``[batch, length]`` bool, True where a slot holds a real token; ``lengths[i]``: row i's
    count of real tokens (the position id of its next token).
    """

    cache: object
    mask: torch.Tensor
    lengths: list[int]

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def single(cls, cache, length: int, device) -> "BatchCache":
        """A batch of one row from a cache prefilled with ``length`` real tokens (no padding)."""
        return cls(cache, torch.ones(1, length, dtype=torch.bool, device=device), [length])

    def own(self) -> None:
        """Give the batch layers of its own (:class:`GrowingLayer`, copies): before the first decode step of
        a batch made from one prefilled cache, whose tensors a prefix-cache snapshot may share."""
        for i, layer in enumerate(_layers(self.cache)):
            if not _is_sliding(layer):
                _set_layer(self.cache, i, layer.keys, layer.values)

    def append(self, others: "list[BatchCache]") -> None:
        """Stack the rows of ``others`` under this batch's, all left-padded to the longest length, in one
        concatenation per layer (joining rows one at a time would copy the batch's cache once per row)."""
        if not others:
            return
        parts = [self, *others]
        length = max(p.length for p in parts)
        layers = [_layers(p.cache) for p in parts]
        for i, mine in enumerate(layers[0]):
            group = [p_layers[i] for p_layers in layers]
            if not all(layer.is_initialized for layer in group):
                raise ValueError("cache: a layer of a prefilled cache holds no keys")
            slots = max(layer.keys.shape[2] for layer in group)
            _set_layer(self.cache, i, torch.cat([_left_pad(layer.keys, slots) for layer in group], dim=0),
                       torch.cat([_left_pad(layer.values, slots) for layer in group], dim=0))
            if _is_sliding(mine):
                mine.cumulative_length = length
        self.mask = torch.cat([F.pad(p.mask, (length - p.length, 0), value=False) for p in parts], dim=0)
        self.lengths = [n for p in parts for n in p.lengths]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices, in order), then drop the slots that are padding in every row."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        self.lengths = [self.lengths[i] for i in rows]
        real = self.mask.any(0)
        first = int(real.long().argmax()) if bool(real.any()) else self.length
        self.mask = self.mask[:, first:]
        length = self.length
        for i, layer in enumerate(_layers(self.cache)):
            k, v = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            # A full layer holds `length` slots; a sliding one min(length, window - 1): the last ones.
            slots = min(k.shape[2], length)
            _set_layer(self.cache, i, k[:, :, k.shape[2] - slots:], v[:, :, v.shape[2] - slots:])
            if _is_sliding(layer):
                layer.cumulative_length = length

    def extend_mask(self) -> None:
        """One more real slot in every row (the token the next decode step writes)."""
        self.mask = F.pad(self.mask, (0, 1), value=True)
        self.lengths = [n + 1 for n in self.lengths]


@dataclass(frozen=True)
class Snapshot:
    """The state of a batch-1 cache after a prompt's prefill: per layer (keys, values), by reference."""

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    truncatable: bool  # no sliding layer: the snapshot may be cut to any shorter prefix

    @classmethod
    def take(cls, ids, cache) -> "Snapshot":
        layers = _layers(cache)
        return cls(tuple(ids), tuple((layer.keys, layer.values) for layer in layers), not has_sliding_layers(cache))

    @classmethod
    def from_row(cls, ids, cache, row: int) -> "Snapshot":
        """Row ``row`` of a batched cache whose row holds ``ids`` in its last ``len(ids)`` slots (left
        padding before), copied so the snapshot does not keep the whole batch alive."""
        n = len(ids)
        layers = _layers(cache)
        if has_sliding_layers(cache):
            raise ValueError("cache: rows of a cache with sliding-window layers are not snapshot")
        return cls(tuple(ids), tuple((layer.keys[row: row + 1, :, -n:].clone(), layer.values[row: row + 1, :, -n:].clone())
                                     for layer in layers), True)

    def usable_prefix(self, ids) -> int:
        """How many leading tokens of ``ids`` this snapshot can provide (at most ``len(ids) - 1``: the
        last prompt token is always computed, its logits start the generation)."""
        limit = min(len(self.ids), len(ids) - 1)
        n = 0
        while n < limit and self.ids[n] == ids[n]:
            n += 1
        if self.truncatable:
            return n
        return n if n == len(self.ids) else 0

    def restore(self, cache, n: int) -> None:
        """Fill a fresh batch-1 ``cache`` (same layer types) with the first ``n`` tokens of the snapshot."""
        for layer, (k, v) in zip(_layers(cache), self.layers, strict=True):
            if not layer.is_initialized:
                layer.lazy_initialization(k, v)
            if _is_sliding(layer):
                if n != len(self.ids):
                    raise ValueError("cache: a sliding-window layer's snapshot cannot be cut")
                layer.keys, layer.values = k, v
                layer.cumulative_length = n
            else:
                layer.keys, layer.values = k[:, :, :n], v[:, :, :n]


__all__ = ["BatchCache", "GrowingLayer", "Snapshot", "has_sliding_layers"]
