"""Zebra models: Llama blocks whose attention is chosen per layer (``ZebraConfig.layer_types``).

Song et al. (2023, arXiv 2312.08618): every block is Llama's
(pre-RMSNorm, grouped-query attention with RoPE in every layer, SwiGLU MLP);
only the keys a layer's queries see differ. Each ``ZebraAttention`` carries its
``attention_type`` (``global`` / ``local`` / ``global_approx``), ``window`` and
``approx_chunk_size`` and calls the attention function registered under
``config._attn_implementation`` (``"zebra"`` by default, see ``zebra_llm.hf.zebra_attention``).
The weights are named as Llama's (and Qwen3's ``q_norm``/``k_norm``), so
Llama-family state dicts load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, StaticLayer
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ..hf import CACHE_FIELD, CACHE_KWARG, merge_cache_kwargs
from ..hf.zebra_attention import IMPLEMENTATION, check_implementation, eager_attention_forward, is_structural
from . import cache as _cache  # noqa: F401  (registers the global_approx cache layer)
from .configuration_zebra import ATTENTION_OF_LAYER_TYPE, FULL, GLOBAL_APPROX, SLIDING, ZebraConfig


class ZebraRMSNorm(nn.Module):
    """RMSNorm computed in float32 (Llama's)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class ZebraMLP(nn.Module):
    """SwiGLU: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: ZebraConfig):
        super().__init__()
        h, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=config.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class ZebraRotaryEmbedding(nn.Module):
    """RoPE cos/sin for any ``rope_parameters['rope_type']`` transformers implements
    (default, linear, dynamic, yarn, longrope, llama3, ...)."""

    def __init__(self, config: ZebraConfig, device=None):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        init_fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config, device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: ZebraConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Su et al.'s frequencies ``base ** (-2k / head_dim)``; no attention scaling."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update  # recomputes inv_freq for the dynamic / longrope types
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # (B, S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, D)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: ``[B, H, S, D]``; cos, sin: ``[B, S, D]``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class ZebraAttention(nn.Module):
    """Grouped-query attention of one layer.

    Attributes read by the attention functions: ``attention_type`` (``"global"``,
    ``"local"`` or ``"global_approx"``), ``window``, ``approx_chunk_size``,
    ``sliding_window`` (``window`` on local layers, else None: what transformers'
    flash-attention path reads), ``scaling``, ``num_key_value_groups``.
    """

    def __init__(self, config: ZebraConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.layer_type = config.layer_types[layer_idx]
        self.attention_type = ATTENTION_OF_LAYER_TYPE[self.layer_type]
        self.window = config.window
        self.approx_chunk_size = config.approx_chunk_size
        self.sliding_window = config.window if self.layer_type == SLIDING else None
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        h, hq, hkv = config.hidden_size, config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(h, hq, bias=config.attention_bias)
        self.k_proj = nn.Linear(h, hkv, bias=config.attention_bias)
        self.v_proj = nn.Linear(h, hkv, bias=config.attention_bias)
        self.o_proj = nn.Linear(hq, h, bias=config.attention_out_bias)
        if config.qk_norm:
            # Qwen3: RMSNorm over each head's features before RoPE.
            self.q_norm = ZebraRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = ZebraRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache = merge_cache_kwargs(past_key_values, cache, "ZebraAttention")
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape)  # (B, S, Hq, D)
        k = self.k_proj(hidden_states).view(hidden_shape)  # (B, S, Hkv, D)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hkv, S, D)
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = position_embeddings
        q = apply_rotary(q.transpose(1, 2), cos, sin)  # (B, Hq, S, D)
        k = apply_rotary(k.transpose(1, 2), cos, sin)  # (B, Hkv, S, D)
        if cache is not None:
            _check_room(cache, self.layer_idx, k.shape[2])
            # global / global_approx layers get every key so far; local layers the last window-1 plus the new ones
            k, v = cache.update(k, v, self.layer_idx)
            if is_structural(self.config._attn_implementation):
                k, v, attention_mask = _written_part(cache, self.layer_idx, k, v, attention_mask)

        attention_fn: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention_fn(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        out = out.reshape(*input_shape, -1).contiguous()  # (B, S, Hq*D)
        return self.o_proj(out), weights


def _written_part(cache: Cache, layer_idx: int, k, v, attention_mask):
    """The keys a fixed-size cache layer has actually written, in sequence order.

    A ``StaticCache`` layer returns its whole buffer: a global (or global_approx) layer's slots past
    the tokens seen so far are empty, and so are a sliding layer's until the window has filled. The
    structural kernels read keys in order with the queries last, so the buffer is cut to the written
    slots (and the padding mask, laid out over the same slots, with it). Dynamic layers pass through.
    """
    layer = cache.layers[layer_idx] if hasattr(cache, "layers") else None
    if not isinstance(layer, StaticLayer) or k is not layer.keys:
        return k, v, attention_mask  # dynamic, or a sliding layer that returned exactly its window
    if getattr(layer, "is_sliding", False):
        written = min(layer.cumulative_length_int, layer.max_cache_len)
    else:
        written = int(layer.cumulative_length)
    if written == k.shape[2]:
        return k, v, attention_mask
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        attention_mask = attention_mask[:, :written]
    return k[:, :, :written], v[:, :, :written], attention_mask


def _check_room(cache: Cache, layer_idx: int, n_new: int) -> None:
    """``ValueError`` before a fixed-size global layer would be written past ``max_cache_len``
    (transformers' own error is an index error from deep inside ``index_copy_``)."""
    layer = cache.layers[layer_idx] if hasattr(cache, "layers") else None
    if not isinstance(layer, StaticLayer) or getattr(layer, "is_sliding", False):
        return  # dynamic layers grow; sliding ones keep their window
    held = int(layer.cumulative_length) if layer.is_initialized else 0
    if held + n_new > layer.max_cache_len:
        raise ValueError(
            f"the StaticCache has max_cache_len={layer.max_cache_len} but layer {layer_idx} would hold "
            f"{held + n_new} tokens ({held} cached + {n_new} new); create it with a larger max_cache_len"
        )


def _refuse_packed(position_ids, attention_mask, shape, implementation) -> None:
    """``ValueError`` when position ids restart (or jump) between consecutive real tokens of a row.

    Only the tokens of this forward are checked, skipping padding (``attention_mask`` 0), so the
    position ids ``generate`` gives a left-padded batch pass.
    """
    batch, q_len = shape
    pos = position_ids[None] if position_ids.dim() == 1 else position_ids
    if pos.dim() != 2 or pos.shape[-1] != q_len or q_len < 2 or torch.compiler.is_compiling():
        return
    pos = pos.expand(batch, q_len)
    real = torch.ones(batch, q_len, dtype=torch.bool, device=pos.device)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and attention_mask.shape[-1] >= q_len:
        real = attention_mask[:, -q_len:].to(device=pos.device, dtype=torch.bool)
    slot = torch.arange(q_len, device=pos.device).expand(batch, q_len)
    last_real = torch.cummax(torch.where(real, slot, -1), dim=-1).values  # last real slot at or before t
    prev = torch.nn.functional.pad(last_real[:, :-1], (1, 0), value=-1)  # last real slot before t
    step = pos - pos.gather(-1, prev.clamp(min=0))
    bad = real & (prev >= 0) & (step != 1)
    if bool(bad.any()):
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"packed sequences are not supported here: position_ids of row {b} go from "
            f"{int(pos[b, prev[b, t]])} to {int(pos[b, t])} at token {t} (they must count up by 1 over the real "
            f"tokens of a row). attn_implementation={implementation!r} with a cache, an attention_mask or the "
            "'zebra' kernels would attend across the document boundary; put each sequence in its own row "
            "(with an attention_mask), or use a mask-based implementation (sdpa, eager, flex_attention, "
            "flash_attention_*) with use_cache=False and no attention_mask"
        )


class ZebraDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: ZebraConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.self_attn = ZebraAttention(config, layer_idx)
        self.mlp = ZebraMLP(config)
        self.input_layernorm = ZebraRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = ZebraRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        attn_out, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=merge_cache_kwargs(past_key_values, cache, "ZebraDecoderLayer"),
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class ZebraPreTrainedModel(PreTrainedModel):
    config_class = ZebraConfig
    config: ZebraConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ZebraDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    _can_record_outputs = {"hidden_states": ZebraDecoderLayer, "attentions": ZebraAttention}

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """``"zebra"`` unless another implementation is asked for; refuse one that cannot run every layer."""
        implementation = super().get_correct_attn_implementation(
            IMPLEMENTATION if requested_attention is None else requested_attention, is_init_check
        )
        check_implementation(self.config.attention_types, implementation)
        return implementation


class ZebraModel(ZebraPreTrainedModel):
    def __init__(self, config: ZebraConfig):
        config.check()
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([ZebraDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = ZebraRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = ZebraRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    # ZebraModel.forward and ZebraForCausalLM.forward share transformers' argument list by its convention
    # (every causal LM in transformers writes it out), so generation and the Trainer see the usual names.
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        past_key_values = merge_cache_kwargs(past_key_values, cache, "ZebraModel")
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("ZebraModel: give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        implementation = self.config._attn_implementation
        check_implementation(self.config.attention_types, implementation)
        structural = is_structural(implementation)

        if position_ids is not None and not isinstance(attention_mask, dict):
            # transformers keeps packed documents apart only without a cache and without an attention mask,
            # and only for mask-based implementations; everywhere else attention would cross the boundary.
            if structural or past_key_values is not None or use_cache or attention_mask is not None:
                _refuse_packed(position_ids, attention_mask, inputs_embeds.shape[:2], implementation)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)

        # One mask per distinct layer type, built once per forward (a dict may come ready-made from generate).
        if not isinstance(mask_by_type := attention_mask, dict):
            mask_kwargs = {
                "config": self.config,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                CACHE_KWARG: past_key_values,
                "position_ids": position_ids,
            }
            kinds = set(self.config.layer_types)
            mask_by_type = {}
            if FULL in kinds or GLOBAL_APPROX in kinds:
                # global_approx layers cache every key, so they see the same padding as global layers
                mask_by_type[FULL] = mask_by_type[GLOBAL_APPROX] = create_causal_mask(**mask_kwargs)
            if SLIDING in kinds:
                mask_by_type[SLIDING] = create_sliding_window_causal_mask(**mask_kwargs)
        elif GLOBAL_APPROX not in mask_by_type and FULL in mask_by_type:
            mask_by_type = {**mask_by_type, GLOBAL_APPROX: mask_by_type[FULL]}

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask_by_type[layer.layer_type],
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **{CACHE_KWARG: past_key_values},
                **kwargs,
            )
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm(hidden_states),
            **{CACHE_FIELD: past_key_values if use_cache else None},
        )


class ZebraForCausalLM(ZebraPreTrainedModel, GenerationMixin):
    """Zebra language model: ``ZebraModel`` plus the LM head (tied to the embeddings when
    ``config.tie_word_embeddings``)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ZebraConfig):
        super().__init__(config)
        self.model = ZebraModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        past_key_values = merge_cache_kwargs(past_key_values, cache, "ZebraForCausalLM")
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        # logits_to_keep: an int keeps the last n positions (0 = all), a tensor lists positions
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "ZebraAttention",
    "ZebraDecoderLayer",
    "ZebraForCausalLM",
    "ZebraMLP",
    "ZebraModel",
    "ZebraPreTrainedModel",
    "ZebraRMSNorm",
    "ZebraRotaryEmbedding",
]
