"""Attention variants with one shared signature.

``q`` is ``[batch, heads_q, seq_q, head_dim]``; ``k`` and ``v`` are
``[batch, heads_kv, seq_kv, head_dim]`` (grouped-query attention when
``heads_q > heads_kv``); the output has ``q``'s shape and dtype. Every function
is differentiable and works in float32, bfloat16 and float16.

``VARIANTS`` maps a layer's attention type to its function; the model code
looks attention up by name rather than branching on flags. Guide: docs/attention.md.
"""

from . import reference
from .backends import BACKENDS, default_backend, set_backend, use_backend
from .dca import dca_attention
from .full import global_attention
from .global_approx import global_approx_attention
from .local import local_attention

VARIANTS = {
    "global": global_attention,
    "local": local_attention,
    "global_approx": global_approx_attention,
}

__all__ = [
    "BACKENDS",
    "VARIANTS",
    "dca_attention",
    "default_backend",
    "global_approx_attention",
    "global_attention",
    "local_attention",
    "reference",
    "set_backend",
    "use_backend",
]
