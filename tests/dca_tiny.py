"""Tiny random models of every family DCA supports, for fast CPU tests."""

from __future__ import annotations

import torch

# Small enough that a test forward takes milliseconds; pretraining_length 16 so a
# 60-token sequence spans five chunks of 12 (or ten of 6).
PRETRAINING = 16

COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=PRETRAINING,
    pad_token_id=0,
)


def tiny_model(family: str = "llama", *, rope: dict | None = None, dtype=torch.float32, **overrides):
    """A random ``family`` causal LM (eval mode, float32 unless ``dtype``)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    rope = rope or {"rope_type": "default", "rope_theta": 10000.0}
    kw = dict(COMMON, rope_parameters=rope, **overrides)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif family == "mistral":
        kw.setdefault("sliding_window", None)
        model = MistralForCausalLM(MistralConfig(**kw))
    elif family == "mixtral":
        kw.setdefault("sliding_window", None)
        model = MixtralForCausalLM(MixtralConfig(num_local_experts=2, num_experts_per_tok=1, **kw))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))  # q/k/v projections with bias
    elif family == "qwen2_moe":
        model = Qwen2MoeForCausalLM(
            Qwen2MoeConfig(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                           shared_expert_intermediate_size=32, **kw)
        )
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **kw))  # per-head q/k RMSNorm before RoPE
    elif family == "qwen3_moe":
        model = Qwen3MoeForCausalLM(
            Qwen3MoeConfig(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, head_dim=16, **kw)
        )
    else:
        raise ValueError(family)
    return model.to(dtype).eval()


def logits(model, ids, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kw).logits


def tiny_zebra(layer_types=None, **overrides):
    """A random ZebraForCausalLM: global layers 0 and 2, local (window 8) layers 1 and 3."""
    from zebra_llm import ZebraConfig, ZebraForCausalLM

    kw = dict(COMMON, num_hidden_layers=4, window=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    kw.update(overrides)
    if layer_types is None:
        kw.update(attention="group", layer_group_size=2)
    else:
        kw["layer_types"] = layer_types
    return ZebraForCausalLM(ZebraConfig(**kw)).eval()


LAYER_TYPE_FAMILIES = ["gemma3_text", "olmo3", "ministral", "cohere2"]


def tiny_layer_types_model(family: str, *, window: int = 6):
    """A random model of a family with per-layer ``layer_types``: layer 0 sliding (``window``), layer 1 full."""
    from transformers import (
        Cohere2Config,
        Cohere2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        MinistralConfig,
        MinistralForCausalLM,
        Olmo3Config,
        Olmo3ForCausalLM,
    )

    classes = {
        "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM),
        "olmo3": (Olmo3Config, Olmo3ForCausalLM),
        "ministral": (MinistralConfig, MinistralForCausalLM),
        "cohere2": (Cohere2Config, Cohere2ForCausalLM),
    }
    config_cls, model_cls = classes[family]
    kw = dict(COMMON, layer_types=["sliding_attention", "full_attention"], sliding_window=window, head_dim=16,
              eos_token_id=1, bos_token_id=2)
    return model_cls(config_cls(**kw)).eval()
