"""Training-free context extension (DCA, SelfExtend, ReRoPE, STRING, sinks) on a transformers model: the
attention function, and putting it on and off a loaded model.

``install`` keeps the method's :class:`ExtensionState` (its config and the spec the kernel runs) on the
attention modules it applies to, records the settings on the model config (``config.zebra_extension``,
``{"method": ..., **settings}``, so ``save_pretrained`` keeps them; models saved before kept DCA's under
``config.zebra_dca``, read as the same) and switches the model's attention implementation:

* Llama, Mistral, Qwen2/3 and the families with per-layer ``layer_types``: ``"zebra_extension"``
  (:func:`extension_attention_forward`, every method). ``sliding_attention`` layers keep their window there;
* Zebra models keep their own ``"zebra"`` implementation: only the ``global`` layers carry the state,
  and ``zebra_attention_forward`` sends a layer that has it here.

Positions. The model's attention module applies RoPE before calling the attention function and before
writing the cache, so the function receives the queries rotated at their ``position_ids`` and the
cached keys rotated at the positions they were written with. The kernels re-rotate the queries only,
reading the rotary frequencies from the model's own rotary embedding at call time (``default``,
``linear``, ``dynamic``, ``yarn`` and ``llama3`` rope types; YaRN's attention factor is folded into the
rotated vectors, so it is kept exactly once). The rules they rely on, all true for ``forward``,
``generate`` and chunked prefill:

* each row's real (non-padding) tokens carry consecutive position ids; the cached ones end right before
  the first real query of the call. A call whose queries break this (packed sequences, hand-made
  position ids) raises ``ValueError``;
* positions count from each row's first real token, so a left-padded row gives the same result as the
  row alone;
* with the ``dynamic`` rope type transformers rescales the frequencies as the sequence grows while cached
  keys keep the rotation they were written with (as without an extension), so decoding matches a full
  forward only while the frequencies do not change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import global_attention, local_attention
from ..attention.piecewise import piecewise_attention
from .masks import key_padding_mask, written_keys

EXTENSION_IMPLEMENTATION = "zebra_extension"  # every method
DCA_IMPLEMENTATION = EXTENSION_IMPLEMENTATION  # the name DCA had, kept for callers
# what install switches to; "dca" was DCA's own name before, so a config carrying it goes back to the default
METHOD_IMPLEMENTATIONS = (EXTENSION_IMPLEMENTATION, "dca")
EXTENSION_CONFIG_KEY = "zebra_extension"
LEGACY_DCA_CONFIG_KEY = "zebra_dca"  # DCA's settings in models saved before: read, never written
DCA_CONFIG_KEY = EXTENSION_CONFIG_KEY
CONFIG_KEYS = (EXTENSION_CONFIG_KEY, LEGACY_DCA_CONFIG_KEY)
_STATE = "_zebra_extension"  # the attribute of an attention module holding its ExtensionState
SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "zebra",
    # families with per-layer ``layer_types``: the method runs on full_attention layers only
    "gemma3_text", "olmo3", "ministral", "cohere2",
)
# Cohere2's full_attention layers apply no RoPE (NoPE): there is nothing to re-position there, so they
# keep ordinary causal attention and only the sliding layers carry positions (inside their window).
NOPE_FULL_ATTENTION_TYPES = ("cohere2",)
LAYER_TYPES_ALLOWED = ("full_attention", "sliding_attention")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


@dataclass(frozen=True)
class ExtensionState:
    """What the attention function needs besides its arguments (kept on each attention module)."""

    name: str  # the method, as error messages name it ("DCA", "SelfExtend", ...)
    config: object  # the method's config (extensions.config.CONFIGS)
    rotary: tuple  # (rotary embedding module,): a tuple so nn.Module does not register it as a child
    inv_freq_name: str = "inv_freq"  # the buffer full-attention layers rotate with
    spec: object = None  # the PiecewiseSpec the kernel runs (config.spec(), built once)
    nope_full: bool = False  # full-attention layers carry no RoPE (Cohere2): plain causal attention there

    def inv_freq(self, device) -> torch.Tensor:
        return getattr(self.rotary[0], self.inv_freq_name).to(device)


def extension_state(module) -> ExtensionState | None:
    """The state :func:`install` put on an attention module, or ``None``."""
    return module.__dict__.get(_STATE)


def attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj") and hasattr(m, "config")]


def default_implementation(model_config) -> str:
    return "zebra" if model_config.model_type == "zebra" else "sdpa"


def install(model, state: ExtensionState, saved: dict) -> None:
    """Put ``state`` on the attention modules the method applies to, record ``saved`` on the config
    under ``config.zebra_extension``, switch the implementation (a Zebra model keeps ``"zebra"``).

    Only one method is active at a time: installing one replaces any other (the ordinary
    implementation from before the first is kept to go back to).
    """
    config = model.config
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"model: found no attention modules in {type(model).__name__}")
    previous = config._attn_implementation
    for key in CONFIG_KEYS:  # applied before: keep what to go back to
        old = getattr(config, key, None)
        if old is not None:
            previous = old.get("previous_attn_implementation") or previous
            delattr(config, key)
    if previous in METHOD_IMPLEMENTATIONS:
        previous = default_implementation(config)
    zebra = config.model_type == "zebra"
    for module in modules:
        module.__dict__.pop(_STATE, None)
        # Zebra: the global layers only (local and global_approx windows never span more than the
        # trained context); other families: every layer, sliding ones keep their window
        if not zebra or module.attention_type == "global":
            module.__dict__[_STATE] = state
    setattr(config, EXTENSION_CONFIG_KEY, {**saved, "previous_attn_implementation": previous})
    model.set_attn_implementation("zebra" if zebra else EXTENSION_IMPLEMENTATION)


def uninstall(model, config_key: str = EXTENSION_CONFIG_KEY):
    """Undo :func:`install`: the previous implementation comes back, the state and settings go."""
    config = model.config
    saved = getattr(config, config_key)
    previous = saved.get("previous_attn_implementation") or default_implementation(config)
    model.set_attn_implementation(previous)
    delattr(config, config_key)
    for module in attention_modules(model):
        module.__dict__.pop(_STATE, None)
    return model


def extension_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered as ``"zebra_extension"`` with transformers' ``AttentionInterface`` (and
    called by ``zebra_attention_forward`` on a Zebra model's global layers).

    query: ``[B, Hq, Sq, D]`` rotated at ``position_ids``; key, value: ``[B, Hkv, Skv, D]`` (all cached
    keys); attention_mask: the ``[B, Skv]`` padding mask of ``extension_mask_interface`` or ``None``.
    Sliding-window layers (``sliding_window`` given) keep ordinary sliding-window attention, layers
    without RoPE ordinary causal attention. Returns ``([B, Sq, Hq, D], None)``.
    """
    state = extension_state(module)
    if state is None:
        raise ValueError(
            f"attention layer {getattr(module, 'layer_idx', '?')} has no context-extension settings: call "
            "zebra_llm.apply_extension(model, ...) instead of setting attn_implementation by hand"
        )
    who = state.name
    if dropout and module.training:
        raise ValueError(f"attention dropout ({dropout}) is not supported with {who}; set config.attention_dropout = 0")
    key, value, attention_mask = written_keys(query, key, value, attention_mask)
    kpm = key_padding_mask(attention_mask, key, who=f"{who} attention")
    window = kwargs.get("sliding_window")
    if window is not None:  # a sliding_attention layer keeps its window (positions never exceed it)
        out = local_attention(query, key, value, window=int(window), scale=scaling, key_padding_mask=kpm)
        return out.transpose(1, 2).contiguous(), None
    if state.nope_full:  # no RoPE in this layer: nothing to re-position
        out = global_attention(query, key, value, scale=scaling, key_padding_mask=kpm)
        return out.transpose(1, 2).contiguous(), None
    batch, _, seq_q, _ = query.shape
    offset = position_offset(kwargs.get("position_ids"), kpm, seq_q, key.shape[2], batch, query.device)
    out = piecewise_attention(query, key, value, spec=state.spec, inv_freq=state.inv_freq(query.device),
                              position_offset=offset, scale=scaling, key_padding_mask=kpm)
    return out.transpose(1, 2).contiguous(), None


def rotary_embedding(model, who: str):
    """The model's rotary embedding module (one per decoder) and the name of the inverse-frequency
    buffer its full-attention layers use (``inv_freq``, or ``full_attention_inv_freq`` where the
    rope parameters are per layer type)."""
    found = [m for m in model.modules() if hasattr(m, "rope_type") and
             (hasattr(m, "inv_freq") or hasattr(m, "full_attention_inv_freq"))]
    if not found:
        raise ValueError(
            f"model: {who} needs a RoPE model, and {type(model).__name__} has no rotary embedding "
            "(no module with inv_freq and rope_type)"
        )
    if len(found) > 1:
        raise ValueError(f"model: found {len(found)} rotary embeddings; {who} supports models with one")
    rotary = found[0]
    rope_type, name = rotary.rope_type, "inv_freq"
    if isinstance(rope_type, dict):
        if "full_attention" not in rope_type:
            raise ValueError(f"model: the rotary embedding has no full_attention rope parameters ({sorted(rope_type)})")
        rope_type, name = rope_type["full_attention"], "full_attention_inv_freq"
    if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported by {who}; supported: {SUPPORTED_ROPE_TYPES}")
    return rotary, name


def check_family(model_config, who: str) -> None:
    """Refuse a model family, layer layout or Mistral sliding window the methods do not run on."""
    model_type = getattr(model_config, "model_type", None)
    if model_type == "gpt_oss":
        raise ValueError(
            f"model_type 'gpt_oss' is not supported by {who}: its attention sinks need an extra logit per head, "
            "which the extension kernels do not carry"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported by {who}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type == "zebra":
        if "full_attention" not in model_config.layer_types:
            raise ValueError(
                f"layer_types: {who} applies to a Zebra model's global (full_attention) layers and this one has "
                f"none ({sorted(set(model_config.layer_types))})"
            )
        return  # local and global_approx layers keep Zebra's own attention
    layer_types = getattr(model_config, "layer_types", None) or []
    other = sorted(set(layer_types) - set(LAYER_TYPES_ALLOWED))
    if other:
        raise ValueError(
            f"layer_types {other}: {who} runs on full_attention layers and keeps sliding_attention layers; "
            "other layer types are not supported"
        )
    if layer_types and "full_attention" not in layer_types:
        raise ValueError(f"layer_types: {who} applies to full_attention layers and this model has none")
    if model_type in ("mistral", "mixtral") and getattr(model_config, "sliding_window", None) is not None:
        raise ValueError(
            f"sliding_window={model_config.sliding_window}: this Mistral model uses sliding-window attention in "
            f"every layer, which {who} does not combine with; set config.sliding_window = None if the model was "
            "trained without it"
        )


def position_offset(position_ids, kpm, seq_q: int, seq_kv: int, batch: int, device) -> torch.Tensor:
    """Per row, the position id of the real token of rank 0 (``[batch]``).

    Ranks count real keys; the queries are the last ``seq_q`` keys. With more
    than one query, every real query must sit at ``offset + rank``.
    """
    first_q = seq_kv - seq_q
    if kpm is None:
        q_ranks = torch.arange(first_q, seq_kv, device=device).expand(batch, seq_q)
        real_q = None
    else:
        q_ranks = (kpm.long().cumsum(-1) - 1)[:, first_q:]
        real_q = kpm[:, first_q:]
    if position_ids is None:
        positions = torch.arange(first_q, seq_kv, device=device).expand(batch, seq_q)
    else:
        if position_ids.dim() != 2 or position_ids.shape[-1] != seq_q:
            raise ValueError(
                f"context extension takes position_ids of shape [batch, seq] = [{batch}, {seq_q}], "
                f"got {tuple(position_ids.shape)}"
            )
        positions = position_ids.to(device).expand(batch, seq_q)
    diff = positions - q_ranks  # (B, Sq): offset wherever the query is real
    if real_q is None:
        offset = diff[:, 0]
    else:
        first_real = real_q.long().argmax(-1)  # 0 for a row with no real query (its output is unused)
        offset = diff.gather(1, first_real[:, None])[:, 0]
    if seq_q > 1:
        ok = diff == offset[:, None]
        if real_q is not None:
            ok = ok | ~real_q
        if not bool(ok.all()):
            raise ValueError(
                "context extension (DCA and peers) needs each row's real tokens at consecutive position ids "
                "(counting from the row's first real token); these position_ids jump (packed sequences or "
                "hand-made positions are not supported)"
            )
    return offset


__all__ = [
    "DCA_IMPLEMENTATION",
    "EXTENSION_IMPLEMENTATION",
    "ExtensionState",
    "SUPPORTED_MODEL_TYPES",
    "SUPPORTED_ROPE_TYPES",
    "check_family",
    "extension_attention_forward",
    "extension_state",
    "install",
    "position_offset",
    "rotary_embedding",
    "uninstall",
]
