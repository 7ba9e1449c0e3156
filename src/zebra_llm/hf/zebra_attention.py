"""The ``"zebra"`` attention implementation of Zebra models.

Registered (``zebra_llm.hf.register``) with ``AttentionInterface`` as :func:`zebra_attention_forward` and
with ``AttentionMaskInterface`` as ``padding_mask_interface``: transformers builds one ``[batch, kv_len]``
key padding mask per forward (no ``seq x seq`` mask) and every ``ZebraAttention`` calls
:func:`zebra_attention_forward`, which runs the kernel of the module's ``attention_type``
(:data:`LAYER_KERNELS`). Causality, windows and chunk summaries are structural there, so local layers
cost O(seq * window). A global layer carrying a context-extension method (``apply_extension`` puts it on
the global layers only) runs that method instead.

Other implementations on a Zebra model:

* ``eager``, ``sdpa``, ``flash_attention_*``, ``flex_attention``: correct for ``global`` and ``local``
  layers, through transformers' own causal and sliding-window masks (the way Ministral runs); they build
  the masks those kernels need (``eager``/``sdpa``: ``seq x seq``). ``global_approx`` cannot be expressed
  as a mask: a model with such layers refuses them with a ``ValueError``.
* Any implementation registered with ``padding_mask_interface`` as its mask function is *structural*: it
  receives only padding masks and must dispatch on ``module.attention_type``, as
  :func:`zebra_attention_forward` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from ..attention import global_approx_attention, global_attention, local_attention
from .extension import extension_attention_forward, extension_state
from .masks import key_padding_mask, padding_mask_interface

IMPLEMENTATION = "zebra"


@dataclass(frozen=True)
class LayerKernel:
    """The attention of one Zebra layer type: its kernel and the settings it reads from the module."""

    function: Callable
    settings: tuple[tuple[str, str], ...] = ()  # (kernel keyword, ZebraAttention attribute)
    mask_expressible: bool = True  # False: only a structural implementation (is_structural) computes it

    def __call__(self, module, query, key, value, scale, key_padding_mask):
        settings = {keyword: getattr(module, attribute) for keyword, attribute in self.settings}
        return self.function(query, key, value, scale=scale, key_padding_mask=key_padding_mask, **settings)


LAYER_KERNELS = {
    "global": LayerKernel(global_attention),
    "local": LayerKernel(local_attention, (("window", "window"),)),
    # chunk summaries are not keys of the sequence: no attention mask expresses them
    "global_approx": LayerKernel(global_approx_attention, (("window", "window"), ("chunk_size", "approx_chunk_size")),
                                 mask_expressible=False),
}


def zebra_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention of one Zebra layer, chosen by ``module.attention_type``.

    Args:
        module: has ``attention_type`` in ``{"global", "local", "global_approx"}``, ``window`` and
            ``approx_chunk_size``.
        query: ``[batch, heads_q, q_len, head_dim]``; the queries are the last ``q_len`` positions of the keys.
        key, value: ``[batch, heads_kv, kv_len, head_dim]``, what the layer's cache returned.
        attention_mask: ``None`` or the ``[batch, kv_len]`` padding mask of ``padding_mask_interface``.
        scaling: score scale (``head_dim ** -0.5`` by default).
        dropout: must be 0; the structural kernels have no attention dropout.

    Returns ``(output [batch, q_len, heads_q, head_dim], None)`` as transformers expects.
    """
    kind = getattr(module, "attention_type", None)
    if kind not in LAYER_KERNELS:
        raise ValueError(
            f"zebra attention: module.attention_type must be one of {sorted(LAYER_KERNELS)}, got {kind!r}"
        )
    if extension_state(module) is not None:  # a global layer under DCA or another extension method
        return extension_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if dropout:
        raise ValueError(
            f"zebra attention has no attention dropout (got dropout={dropout}); set config.attention_dropout=0"
        )
    kpm = key_padding_mask(attention_mask, key, who="zebra attention")
    out = LAYER_KERNELS[kind](module, query, key, value, scaling, kpm)
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, q, D) -> (B, q, Hq, D)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``eager`` attention under its additive 4D mask (``attn_implementation="eager"``)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # (B, Hq, kv, D)
    value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, Hq, q, kv)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value)  # (B, Hq, q, D)
    return out.transpose(1, 2).contiguous(), weights


def is_structural(implementation: str | None) -> bool:
    """True when ``implementation`` gets only padding masks (``padding_mask_interface``) and therefore
    builds each layer's structure itself from ``module.attention_type``."""
    if implementation is None:
        return False
    try:
        return ALL_MASK_ATTENTION_FUNCTIONS[implementation] is padding_mask_interface
    except KeyError:
        return False


def check_implementation(attention_types: list[str], implementation: str | None) -> None:
    """Refuse an implementation that would compute some layer wrongly.

    ``attention_types`` is each layer's kind (``ZebraConfig.attention_types``); a kind no mask expresses
    (``LayerKernel.mask_expressible``: ``global_approx``) needs a structural implementation.
    """
    refused = [i for i, kind in enumerate(attention_types) if not LAYER_KERNELS[kind].mask_expressible]
    if refused and not is_structural(implementation):
        kinds = " and ".join(dict.fromkeys(attention_types[i] for i in refused))
        raise ValueError(
            f"attn_implementation={implementation!r} cannot run {kinds} layers (layers {refused}): their "
            "chunk summaries are not expressible as an attention mask; use attn_implementation='zebra' (the default)"
        )


__all__ = [
    "IMPLEMENTATION",
    "LAYER_KERNELS",
    "LayerKernel",
    "check_implementation",
    "eager_attention_forward",
    "is_structural",
    "zebra_attention_forward",
]
