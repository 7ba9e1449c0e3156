"""Dual Chunk Attention for transformers models (An et al., ICML 2024, arXiv 2402.17463).

Guide: docs/dca.md.

``apply_dca(model)`` makes a loaded Llama, Mistral, Qwen2 or Qwen3 family model
(and ``ZebraForCausalLM``'s global layers) use DCA for forward, loss and
``generate``; ``remove_dca(model)`` undoes it. Integration goes through
transformers' public extension points only: an attention function registered
with ``AttentionInterface`` under the name ``"dca"`` (``"zebra_dca"`` for Zebra
models), its mask function with
``AttentionMaskInterface`` (a ``[batch, kv_len]`` padding mask, no ``seq x seq``
tensor), and ``model.set_attn_implementation``. The settings live on the model
config as ``config.zebra_dca`` (so ``save_pretrained`` keeps them and a later
``apply_dca`` picks them up).

Positions. The model's attention module applies RoPE before calling the
attention function and before writing the cache, so the function receives the
queries rotated at their ``position_ids`` and the cached keys rotated at the
positions they were written with. DCA re-rotates the queries only (see
``zebra_llm.attention.dca``), reading the rotary frequencies from the model's
own rotary embedding at call time (``default``, ``linear``, ``dynamic``,
``yarn`` and ``llama3`` rope types; YaRN's attention factor is folded into the
rotated vectors, so it is kept exactly once). The rules it relies on, all true
for ``forward``, ``generate`` and chunked prefill:

* each row's real (non-padding) tokens carry consecutive position ids; the
  cached ones end right before the first real query of the call. A call whose
  queries break this (packed sequences, hand-made position ids) raises
  ``ValueError``;
* DCA's chunks start at each row's first real token, so a left-padded row gives
  the same result as the row alone;
* with the ``dynamic`` rope type transformers rescales the frequencies as the
  sequence grows while cached keys keep the rotation they were written with
  (as without DCA), so decoding matches a full forward only while the
  frequencies do not change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .attention import dca_attention
from .attention.dca_positions import check_geometry, relative_positions
from .hf import key_padding_mask, padding_mask_interface

ATTN_IMPLEMENTATION = "dca"
ZEBRA_ATTN_IMPLEMENTATION = "zebra_dca"  # DCA on a Zebra model's global layers, Zebra attention on the others
CONFIG_KEY = "zebra_dca"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "zebra")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
# vLLM's defaults for missing keys of ``dual_chunk_attention_config``
# (vllm/attention/backends/dual_chunk_flash_attn.py).
VLLM_DEFAULT_CHUNK_SIZE = 8192
VLLM_DEFAULT_LOCAL_SIZE = 1024


@dataclass(frozen=True)
class DCAConfig:
    """Dual Chunk Attention settings, validated at construction.

    Attributes:
        pretraining_length: ``c``, the longest position the model was trained on.
        chunk_size: ``s``, the chunk length (default ``3 * c // 4``); ``1 <= s < c``.
        temperature: apply the YaRN-style attention temperature to queries that see
            more than ``temperature_length`` keys (``zebra_llm.attention.dca_positions.
            temperature_factor``); ``False`` is the paper's DCA exactly.
        temperature_length: ``L0`` of that temperature (default ``pretraining_length``).
    """

    pretraining_length: int
    chunk_size: int | None = None
    temperature: bool = True
    temperature_length: int | None = field(default=None)

    def __post_init__(self):
        c = self.pretraining_length
        if isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"pretraining_length must be an integer, got {c!r}")
        if self.chunk_size is None:
            object.__setattr__(self, "chunk_size", max(1, 3 * c // 4))
        check_geometry(self.chunk_size, c)
        if not isinstance(self.temperature, bool):
            raise ValueError(f"temperature must be True or False, got {self.temperature!r}")
        if self.temperature_length is None:
            object.__setattr__(self, "temperature_length", c)
        t = self.temperature_length
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"temperature_length must be an integer >= 1, got {t!r}")

    @property
    def local_window(self) -> int:
        """``w = c - s``: neighbouring-chunk distances below this stay exact."""
        return self.pretraining_length - self.chunk_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DCAConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a DCA config must be a dict, got {type(data).__name__}")
        known = {"pretraining_length", "chunk_size", "temperature", "temperature_length"}
        unknown = set(data) - known - {"previous_attn_implementation"}
        if unknown:
            raise ValueError(f"unknown DCA config keys {sorted(unknown)}; allowed: {sorted(known)}")
        if "pretraining_length" not in data:
            raise ValueError("a DCA config needs pretraining_length")
        return cls(**{key: data[key] for key in known if key in data})

    @classmethod
    def from_vllm(cls, data: dict, *, temperature: bool = True) -> "DCAConfig":
        """Read vLLM's ``dual_chunk_attention_config`` (as in Qwen2.5-1M configs).

        vLLM (like ChunkLlama) calls the largest position index ``chunk_size`` and
        ``local_size`` the local window minus one, so ``c = chunk_size + 1`` and
        ``s = chunk_size - local_size``. Its ``original_max_position_embeddings``
        is the temperature's ``L0``; 0 or absent means no temperature (vLLM
        applies none then). Missing ``chunk_size``/``local_size`` take vLLM's
        defaults (8192, 1024). The ``sparse_attention_*`` keys (vLLM's sparse
        prefill) are not used: attention is computed exactly. One difference:
        vLLM rotates inter-chunk queries at ``min(2s - 1, c - 1)``, the paper
        (and this library) at ``c - 1``; they agree whenever ``2s >= c``, as in
        every Qwen2.5-1M config.
        """
        if not isinstance(data, dict):
            raise ValueError(f"dual_chunk_attention_config must be a dict, got {type(data).__name__}")
        vllm_chunk = data.get("chunk_size", VLLM_DEFAULT_CHUNK_SIZE)
        local = data.get("local_size", VLLM_DEFAULT_LOCAL_SIZE)
        original = data.get("original_max_position_embeddings", 0)
        fields = (("chunk_size", vllm_chunk), ("local_size", local), ("original_max_position_embeddings", original))
        for name, value in fields:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"dual_chunk_attention_config.{name} must be an integer >= 0, got {value!r}")
        if local >= vllm_chunk:
            raise ValueError(
                f"dual_chunk_attention_config.local_size ({local}) must be smaller than chunk_size ({vllm_chunk})"
            )
        return cls(
            pretraining_length=vllm_chunk + 1,
            chunk_size=vllm_chunk - local,
            temperature=bool(temperature and original > 0),
            temperature_length=original if original > 0 else None,
        )

    def to_vllm(self) -> dict:
        """The same settings in vLLM's ``dual_chunk_attention_config`` form."""
        return {
            "chunk_size": self.pretraining_length - 1,
            "local_size": self.local_window - 1,
            "original_max_position_embeddings": self.temperature_length if self.temperature else 0,
        }


@dataclass(frozen=True)
class _LayerState:
    """What the attention function needs besides its arguments (kept on each attention module)."""

    config: DCAConfig
    rotary: tuple  # (rotary embedding module,): a tuple so nn.Module does not register it as a child


def resolve_config(model_config, *, pretraining_length=None, chunk_size=None, temperature=True) -> DCAConfig:
    """The DCA settings for a model config: explicit arguments, else the model's own.

    Order for ``pretraining_length`` and ``chunk_size``: an earlier ``apply_dca``
    (``config.zebra_dca``, kept by ``save_pretrained``), then vLLM's
    ``dual_chunk_attention_config``, then ``pretraining_length`` from the rope
    parameters' ``original_max_position_embeddings`` or ``max_position_embeddings``.
    ``temperature`` is always the argument (with a vLLM config, only when its
    ``original_max_position_embeddings`` is set).
    """
    if not isinstance(temperature, bool):
        raise ValueError(f"temperature must be True or False, got {temperature!r}")
    saved = getattr(model_config, CONFIG_KEY, None)
    vllm = getattr(model_config, "dual_chunk_attention_config", None)
    if saved is not None:
        base = DCAConfig.from_dict(saved)
        base = DCAConfig(base.pretraining_length, base.chunk_size, temperature, base.temperature_length)
    elif vllm is not None:
        base = DCAConfig.from_vllm(vllm, temperature=temperature)
    else:
        base = None
    if base is not None and pretraining_length is None:
        if chunk_size is None:
            return base
        return DCAConfig(base.pretraining_length, chunk_size, base.temperature, base.temperature_length)
    if pretraining_length is None:
        pretraining_length = _model_pretraining_length(model_config)
    return DCAConfig(pretraining_length, chunk_size, temperature)


def _model_pretraining_length(model_config) -> int:
    rope = getattr(model_config, "rope_parameters", None) or {}
    original = rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None
    length = original or getattr(model_config, "max_position_embeddings", None)
    if not isinstance(length, int) or length < 2:
        raise ValueError(
            "pretraining_length: the model config records no max_position_embeddings; pass pretraining_length="
        )
    return length


def _rotary_embedding(model):
    """The model's rotary embedding module (one per decoder)."""
    found = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "rope_type")]
    if not found:
        raise ValueError(
            f"model: DCA needs a RoPE model, and {type(model).__name__} has no rotary embedding "
            "(no module with inv_freq and rope_type)"
        )
    if len(found) > 1:
        raise ValueError(f"model: found {len(found)} rotary embeddings; DCA supports models with one")
    rotary = found[0]
    rope_type = rotary.rope_type
    if not isinstance(rope_type, str) or rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported by DCA; supported: {SUPPORTED_ROPE_TYPES}")
    return rotary


def _attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj") and hasattr(m, "config")]


def _check_family(model_config) -> None:
    model_type = getattr(model_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported by DCA; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type == "zebra":
        if "full_attention" not in model_config.layer_types:
            raise ValueError(
                f"layer_types: DCA applies to a Zebra model's global (full_attention) layers and this one has "
                f"none ({sorted(set(model_config.layer_types))})"
            )
        return  # local and global_approx layers keep Zebra's own attention
    layer_types = getattr(model_config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        raise ValueError(
            f"layer_types {sorted(set(layer_types))}: DCA replaces full attention and this model has other "
            "(sliding-window) layers"
        )
    if model_type in ("mistral", "mixtral") and getattr(model_config, "sliding_window", None) is not None:
        raise ValueError(
            f"sliding_window={model_config.sliding_window}: this Mistral model uses sliding-window attention, "
            "which DCA does not combine with; set config.sliding_window = None if the model was trained without it"
        )


def apply_dca(model, *, pretraining_length: int | None = None, chunk_size: int | None = None, temperature: bool = True):
    """Make ``model`` use Dual Chunk Attention from now on (forward, loss, ``generate``).

    Args:
        model: a loaded transformers causal LM of the Llama, Mistral (incl. Mixtral),
            Qwen2 or Qwen3 families (incl. their MoE variants), or a ``ZebraForCausalLM``,
            where DCA runs on the global layers (attention implementation ``"zebra_dca"``;
            local and ``global_approx`` layers keep Zebra's attention: a local window
            never spans more than the trained context anyway).
        pretraining_length: ``c``; default from the model (see :func:`resolve_config`).
        chunk_size: ``s``; default ``3 * c // 4`` (or the model's DCA config).
        temperature: YaRN-style temperature beyond ``c`` (see ``DCAConfig``).

    Returns the same model. Raises ``ValueError`` naming the setting for invalid
    settings, an unsupported model family or rope type, or a model without RoPE.
    """
    config = model.config
    _check_family(config)
    rotary = _rotary_embedding(model)
    dca = resolve_config(config, pretraining_length=pretraining_length, chunk_size=chunk_size, temperature=temperature)
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"model: found no attention modules in {type(model).__name__}")
    register()
    implementation = ZEBRA_ATTN_IMPLEMENTATION if config.model_type == "zebra" else ATTN_IMPLEMENTATION
    previous = config._attn_implementation
    saved = getattr(config, CONFIG_KEY, None)
    if previous in (ATTN_IMPLEMENTATION, ZEBRA_ATTN_IMPLEMENTATION):  # applied before: keep what to go back to
        previous = (saved or {}).get("previous_attn_implementation") or _default_implementation(config)
    state = _LayerState(dca, (rotary,))
    for module in modules:
        module.__dict__["_zebra_dca"] = state
    setattr(config, CONFIG_KEY, {**dca.to_dict(), "previous_attn_implementation": previous})
    model.set_attn_implementation(implementation)
    return model


def _default_implementation(model_config) -> str:
    return "zebra" if model_config.model_type == "zebra" else "sdpa"


def remove_dca(model):
    """Undo :func:`apply_dca`: the previous attention implementation and outputs come back."""
    config = model.config
    saved = getattr(config, CONFIG_KEY, None)
    if saved is None:
        raise ValueError("model: DCA is not applied (config has no zebra_dca)")
    previous = saved.get("previous_attn_implementation") or _default_implementation(config)
    model.set_attn_implementation(previous)
    delattr(config, CONFIG_KEY)
    for module in _attention_modules(model):
        module.__dict__.pop("_zebra_dca", None)
    return model


def dca_config(model) -> DCAConfig | None:
    """The DCA settings in effect on ``model``, or ``None``."""
    saved = getattr(model.config, CONFIG_KEY, None)
    return None if saved is None else DCAConfig.from_dict(saved)


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
                f"DCA takes position_ids of shape [batch, seq] = [{batch}, {seq_q}], got {tuple(position_ids.shape)}"
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
                "DCA needs each row's real tokens at consecutive position ids (counting from the row's first real "
                "token); these position_ids jump (packed sequences or hand-made positions are not supported)"
            )
    return offset


def dca_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered as ``"dca"`` with transformers' ``AttentionInterface``.

    query: ``[B, Hq, Sq, D]`` rotated at ``position_ids``; key, value: ``[B, Hkv, Skv, D]``
    (all cached keys); attention_mask: the ``[B, Skv]`` padding mask of
    :func:`zebra_llm.hf.padding_mask_interface` or ``None``. Returns
    ``([B, Sq, Hq, D], None)``.
    """
    state = module.__dict__.get("_zebra_dca")
    if state is None:
        raise ValueError(
            f"attention layer {getattr(module, 'layer_idx', '?')} has no DCA settings: call zebra_llm.apply_dca(model) "
            "instead of setting attn_implementation='dca' by hand"
        )
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"sliding_window={kwargs['sliding_window']}: DCA does not combine with sliding-window layers")
    if dropout and module.training:
        raise ValueError(f"attention dropout ({dropout}) is not supported with DCA; set config.attention_dropout = 0")
    kpm = key_padding_mask(attention_mask, key, who="dca attention")
    batch, _, seq_q, _ = query.shape
    offset = position_offset(kwargs.get("position_ids"), kpm, seq_q, key.shape[2], batch, query.device)
    cfg = state.config
    rotary = state.rotary[0]
    out = dca_attention(
        query,
        key,
        value,
        inv_freq=rotary.inv_freq.to(query.device),
        chunk_size=cfg.chunk_size,
        pretraining_length=cfg.pretraining_length,
        position_offset=offset,
        temperature_length=cfg.temperature_length if cfg.temperature else None,
        scale=scaling,
        key_padding_mask=kpm,
    )  # (B, Hq, Sq, D)
    return out.transpose(1, 2).contiguous(), None


def zebra_dca_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``"zebra_dca"``: DCA on a Zebra model's global layers, ``zebra_attention_forward`` on the others.

    Registered with ``padding_mask_interface`` as its mask function, so Zebra treats
    it as a structural implementation (only padding masks, the layer's structure
    built from ``module.attention_type``).
    """
    if getattr(module, "attention_type", None) == "global":
        return dca_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    from .modeling import zebra_attention_forward

    return zebra_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


_registered = False


def register() -> None:
    """Register ``"dca"`` and ``"zebra_dca"`` with transformers' AttentionInterface and
    AttentionMaskInterface (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, forward in ((ATTN_IMPLEMENTATION, dca_attention_forward),
                          (ZEBRA_ATTN_IMPLEMENTATION, zebra_dca_attention_forward)):
        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, padding_mask_interface)
    _registered = True


__all__ = [
    "ATTN_IMPLEMENTATION",
    "DCAConfig",
    "SUPPORTED_MODEL_TYPES",
    "SUPPORTED_ROPE_TYPES",
    "ZEBRA_ATTN_IMPLEMENTATION",
    "apply_dca",
    "dca_attention_forward",
    "dca_config",
    "register",
    "relative_positions",
    "remove_dca",
    "resolve_config",
    "zebra_dca_attention_forward",
]

