"""KV cache layers for Zebra's layer types, through transformers' own ``DynamicCache``.

``DynamicCache(config=zebra_config)`` builds one cache layer per entry of
``config.layer_types``:

* ``full_attention`` (global): transformers' ``DynamicLayer``, every key kept.
* ``sliding_attention`` (local): transformers' ``DynamicSlidingWindowLayer``
  with ``sliding_window = config.window``; between forward calls it stores
  only the last ``window - 1`` keys and values, all a query at the next
  position can see besides itself (so never more than ``window``).
* ``global_approx``: :class:`GlobalApproxLayer` below, which keeps every key,
  because chunk summaries of the whole past are recomputed from them.

Only ``DynamicCache`` is supported: a ``StaticCache`` hands attention a
fixed-size buffer whose slots are not in sequence order, which the
structural (mask-free) attention of the ``"zebra"`` implementation cannot
read; ``ZebraModel`` refuses it with a ``ValueError``.
"""

from __future__ import annotations

from transformers.cache_utils import DynamicLayer

from .configuration_zebra import GLOBAL_APPROX


class GlobalApproxLayer(DynamicLayer):
    """Cache of a ``global_approx`` layer: all keys, like a global layer.

    Defining the class registers it with transformers (``_layer_type``), so
    ``DynamicCache(config=...)`` finds a cache class for the ``global_approx``
    entries of ``layer_types``.
    """

    _layer_type = GLOBAL_APPROX


__all__ = ["GlobalApproxLayer"]
