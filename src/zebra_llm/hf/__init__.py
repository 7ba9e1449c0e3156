"""Everything that plugs zebra-llm into transformers, through its public extension points.

Guide: docs/models-and-caches.md.

* ``compat``: names that changed between transformers versions (the cache argument).
* ``masks``: mask functions for ``AttentionMaskInterface`` (a ``[batch, kv_len]`` padding mask, no
  ``seq x seq`` tensor) and the checks attention functions make on what they receive.
* ``zebra_attention``: the ``"zebra"`` implementation of Zebra models (one kernel per layer type).
* ``extension``: DCA, SelfExtend, ReRoPE, STRING and sinks on a loaded model (``"zebra_extension"``; on a
  Zebra model its global layers), installed and removed.

:func:`register` (run on ``import zebra_llm``) registers the attention functions and their mask
functions under those names. The ``global_approx`` cache layers register themselves by being defined
(``zebra_llm.modeling.cache``).

Conventions of every attention function registered here:

* ``key`` and ``value`` are what the layer's cache returned (``DynamicCache``: all seen tokens for full
  layers, the last ``window - 1`` plus the new ones for sliding layers; a ``StaticCache`` buffer is cut
  to its written slots first); the queries are the last ``q_len`` of those keys.
* ``attention_mask`` is ``None`` or the ``[batch, kv_len]`` padding mask of the implementation's mask
  function.
"""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .compat import CACHE_FIELD, CACHE_KWARG, cache_kwargs, merge_cache_kwargs, output_cache
from .extension import EXTENSION_IMPLEMENTATION, extension_attention_forward
from .masks import extension_mask_interface, key_padding_mask, padding_mask_interface
from .zebra_attention import IMPLEMENTATION as ZEBRA_IMPLEMENTATION
from .zebra_attention import zebra_attention_forward

# name -> (attention function, mask function)
IMPLEMENTATIONS = {
    ZEBRA_IMPLEMENTATION: (zebra_attention_forward, padding_mask_interface),
    EXTENSION_IMPLEMENTATION: (extension_attention_forward, extension_mask_interface),
}


def register() -> None:
    """Register :data:`IMPLEMENTATIONS` with transformers' ``AttentionInterface`` and
    ``AttentionMaskInterface`` (idempotent)."""
    for name, (forward, mask) in IMPLEMENTATIONS.items():
        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, mask)


register()

__all__ = [
    "CACHE_FIELD",
    "CACHE_KWARG",
    "IMPLEMENTATIONS",
    "cache_kwargs",
    "key_padding_mask",
    "merge_cache_kwargs",
    "output_cache",
    "padding_mask_interface",
    "register",
]
