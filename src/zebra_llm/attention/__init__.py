"""Attention variants with one shared signature.

``q`` is ``[batch, heads_q, seq_q, head_dim]``; ``k`` and ``v`` are
``[batch, heads_kv, seq_kv, head_dim]`` (grouped-query attention when
``heads_q > heads_kv``); the output has ``q``'s shape and dtype. Every function
is differentiable and works in float32, bfloat16 and float16.

Guide: docs/attention.md. (A Zebra layer's attention type selects its function in
``zebra_llm.hf.zebra_attention.LAYER_KERNELS``.)
"""

from . import reference
from .backends import BACKENDS, default_backend, set_backend, use_backend
from .dual_chunk import dca_attention
from .full import global_attention
from .global_approx import global_approx_attention
from .local import local_attention

__all__ = [
    "BACKENDS",
    "dca_attention",
    "default_backend",
    "global_approx_attention",
    "global_attention",
    "local_attention",
    "reference",
    "set_backend",
    "use_backend",
]
