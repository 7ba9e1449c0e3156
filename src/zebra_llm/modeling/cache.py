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

``StaticCache(config=zebra_config, max_cache_len=n)`` (and ``generate(...,
cache_implementation="static")``) builds transformers' ``StaticLayer`` for
global layers, ``StaticSlidingWindowLayer`` (``window`` slots) for local layers
and :class:`StaticGlobalApproxLayer` below for ``global_approx`` layers. Such a
layer returns its whole fixed-size buffer, whose slots past the tokens written
so far are empty; ``ZebraAttention`` cuts the buffer to the written slots before
the structural (mask-free) kernels of the ``"zebra"`` implementation read it, so
a static cache gives the same logits as the dynamic one. Mask-based
implementations (``sdpa``, ``eager``, ...) read the whole buffer under
transformers' own masks, as for Llama.
"""

from __future__ import annotations

from transformers.cache_utils import DynamicLayer, StaticLayer

from .configuration_zebra import GLOBAL_APPROX


class GlobalApproxLayer(DynamicLayer):
    """Cache of a ``global_approx`` layer: all keys, like a global layer.

    Defining the class registers it with transformers (``_layer_type``), so
    ``DynamicCache(config=...)`` finds a cache class for the ``global_approx``
    entries of ``layer_types``.
    """

    _layer_type = GLOBAL_APPROX


class StaticGlobalApproxLayer(StaticLayer):
    """Fixed-size cache of a ``global_approx`` layer: every key up to ``max_cache_len``, like a global layer.

    Registered with transformers (``_layer_type``) so that ``StaticCache(config=...)`` builds it.
    """

    _layer_type = GLOBAL_APPROX


__all__ = ["GlobalApproxLayer", "StaticGlobalApproxLayer"]
