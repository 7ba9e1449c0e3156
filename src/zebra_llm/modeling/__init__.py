"""Zebra models on transformers: config, model, KV cache, conversion and portable export.

Importing this package registers, through transformers' public extension points:

* the model type ``zebra`` with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``;
* the attention implementation ``"zebra"`` (``AttentionInterface`` and ``AttentionMaskInterface``,
  through ``zebra_llm.hf``);
* the ``global_approx`` cache layer (a ``CacheLayerMixin`` subclass with ``_layer_type``).

Guide: docs/zebra.md.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from ..hf.zebra_attention import eager_attention_forward, is_structural, zebra_attention_forward
from .cache import GlobalApproxLayer
from .configuration_zebra import ZebraConfig
from .convert import convert_checkpoint, convert_to_zebra, zebra_config_from
from .export import export_portable, portable_config
from .modeling_zebra import (
    ZebraAttention,
    ZebraDecoderLayer,
    ZebraForCausalLM,
    ZebraModel,
    ZebraPreTrainedModel,
)
from .presets import list_presets

AutoConfig.register(ZebraConfig.model_type, ZebraConfig, exist_ok=True)
AutoModel.register(ZebraConfig, ZebraModel, exist_ok=True)
AutoModelForCausalLM.register(ZebraConfig, ZebraForCausalLM, exist_ok=True)

__all__ = [
    "GlobalApproxLayer",
    "ZebraAttention",
    "ZebraConfig",
    "ZebraDecoderLayer",
    "ZebraForCausalLM",
    "ZebraModel",
    "ZebraPreTrainedModel",
    "convert_checkpoint",
    "convert_to_zebra",
    "eager_attention_forward",
    "export_portable",
    "is_structural",
    "list_presets",
    "portable_config",
    "zebra_attention_forward",
    "zebra_config_from",
]
