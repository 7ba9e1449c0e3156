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
from .loading import trained_context

ATTN_IMPLEMENTATION = "dca"
ZEBRA_ATTN_IMPLEMENTATION = "zebra_dca"  # DCA on a Zebra model's global layers, Zebra attention on the others
CONFIG_KEY = "zebra_dca"
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
            temperature_factor``). Default ``False``: the paper's DCA exactly, as ChunkLlama
            runs it; the project's SmolLM2 passkey results lost retrieval with it at 16k-32k.
            A vLLM ``dual_chunk_attention_config`` with ``original_max_position_embeddings``
            turns it on (Qwen2.5-1M is run that way).
        temperature_length: ``L0`` of that temperature (default ``pretraining_length``).
    """

    pretraining_length: int
    chunk_size: int | None = None
    temperature: bool = False
    temperature_length: int | None = field(default=None)

    def __post_init__(self):
        c = self.pretraining_length
        if isinstance(c, bool) or not isinstance(c, int):
            raise ValueError(f"pretraining_length must be an integer, got {c!r}")
        if self.chunk_size is None:
            object.__setattr__(self, "chunk_size", max(1, 3 * c // 4))
        if not isinstance(self.temperature, bool):
            raise ValueError(f"temperature must be True or False, got {self.temperature!r}")
        if self.temperature_length is None:
            object.__setattr__(self, "temperature_length", c)
        check_geometry(self.chunk_size, c, self.temperature_length)

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
    def chunkllama(cls, trained_length: int, *, temperature: bool = False) -> "DCAConfig":
        """ChunkLlama's own defaults (github.com/HKUNLP/ChunkLlama, ``replace_with_chunkllama``):
        largest position index ``3c/4`` (its ``chunk_size``) and local window ``c/8`` (its
        ``local_window``), read in the same form as vLLM's config, so chunks are about ``5c/8``
        long and the least-trained quarter of positions is never used."""
        if isinstance(trained_length, bool) or not isinstance(trained_length, int) or trained_length < 16:
            raise ValueError(
                f"trained_length must be an integer >= 16 for the chunkllama preset, got {trained_length!r}"
            )
        base = cls.from_vllm({"chunk_size": trained_length * 3 // 4, "local_size": trained_length // 8})
        return cls(base.pretraining_length, base.chunk_size, temperature, trained_length if temperature else None)

    @classmethod
    def from_settings(cls, pretraining_length=None, chunk_size=None, temperature=None, temperature_length=None,
                      preset=None, trained_length=None) -> "DCAConfig":
        """Settings as ``apply_extension(model, "dca", ...)`` takes them (``preset``: ``paper`` or
        ``chunkllama``; ``trained_length``: the model's, for the defaults)."""
        if temperature is None:
            temperature = False
        cls.check_settings(pretraining_length, chunk_size, preset=preset)
        if preset == "chunkllama":
            base = cls.chunkllama(trained_length, temperature=temperature)
            return cls(base.pretraining_length, base.chunk_size, temperature,
                       temperature_length or (trained_length if temperature else None))
        if pretraining_length is None:
            pretraining_length = trained_length
        if pretraining_length is None:
            raise ValueError("dca: give pretraining_length= (the model's trained context)")
        return cls(pretraining_length, chunk_size, temperature, temperature_length)

    @classmethod
    def check_settings(cls, pretraining_length=None, chunk_size=None, *, preset=None) -> None:
        """Check what :meth:`from_settings` can check before the model is known (its trained context
        is the default ``pretraining_length``), so a bad option fails before a model is loaded."""
        if preset not in (None, "paper", "chunkllama"):
            raise ValueError(f"preset must be 'paper' or 'chunkllama', got {preset!r}")
        if preset == "chunkllama" and (pretraining_length is not None or chunk_size is not None):
            raise ValueError("preset=chunkllama sets pretraining_length and chunk_size; do not give them too")
        if chunk_size is not None:
            check_geometry(chunk_size, pretraining_length)
        elif pretraining_length is not None:
            cls(pretraining_length)

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

    config: object  # DCAConfig, or the extension's config
    rotary: tuple  # (rotary embedding module,): a tuple so nn.Module does not register it as a child
    inv_freq_name: str = "inv_freq"  # the buffer full-attention layers rotate with
    spec: object = None  # the PiecewiseSpec of a non-DCA extension method
    nope_full: bool = False  # full-attention layers carry no RoPE (Cohere2): plain causal attention there

    def inv_freq(self, device) -> torch.Tensor:
        return getattr(self.rotary[0], self.inv_freq_name).to(device)


def resolve_config(model_config, *, pretraining_length=None, chunk_size=None, temperature=None,
                   preset=None) -> DCAConfig:
    """The DCA settings for a model config: explicit arguments, else the model's own.

    Order for ``pretraining_length`` and ``chunk_size``: an earlier ``apply_dca``
    (``config.zebra_dca``, kept by ``save_pretrained``), then vLLM's
    ``dual_chunk_attention_config``, then ``pretraining_length`` from the rope
    parameters' ``original_max_position_embeddings`` or ``max_position_embeddings``.
    ``temperature``: the argument when given; else the saved setting, else on for a vLLM
    config with ``original_max_position_embeddings`` (as vLLM runs Qwen2.5-1M), else off
    (the paper's DCA). ``preset="chunkllama"``: ChunkLlama's defaults (:meth:`DCAConfig.chunkllama`).
    """
    if temperature is not None and not isinstance(temperature, bool):
        raise ValueError(f"temperature must be True or False, got {temperature!r}")
    if preset is not None:
        return DCAConfig.from_settings(pretraining_length, chunk_size, temperature, preset=preset,
                                       trained_length=trained_context(model_config))
    saved = getattr(model_config, CONFIG_KEY, None)
    vllm = getattr(model_config, "dual_chunk_attention_config", None)
    if saved is not None:
        base = DCAConfig.from_dict(saved)
        keep = base.temperature if temperature is None else temperature
        base = DCAConfig(base.pretraining_length, base.chunk_size, keep, base.temperature_length)
    elif vllm is not None:
        base = DCAConfig.from_vllm(vllm, temperature=True if temperature is None else temperature)
    else:
        base = None
    if base is not None and pretraining_length is None:
        if chunk_size is None:
            return base
        return DCAConfig(base.pretraining_length, chunk_size, base.temperature, base.temperature_length)
    if pretraining_length is None:
        pretraining_length = trained_context(model_config)
    return DCAConfig(pretraining_length, chunk_size, bool(temperature))


def _rotary_embedding(model, who: str = "DCA"):
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


def _attention_modules(model):
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj") and hasattr(m, "config")]


def _check_family(model_config, who: str = "DCA") -> None:
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


def apply_dca(model, *, pretraining_length: int | None = None, chunk_size: int | None = None,
              temperature: bool | None = None, preset: str | None = None):
    """Make ``model`` use Dual Chunk Attention from now on (forward, loss, ``generate``).

    Shorthand for ``zebra_llm.apply_extension(model, "dca", ...)``.

    Args:
        model: a loaded transformers causal LM of the Llama, Mistral (incl. Mixtral),
            Qwen2 or Qwen3 families (incl. their MoE variants), a model with per-layer
            ``layer_types`` (Gemma 3, OLMo 3, Ministral, Cohere2, Qwen2 with sliding layers:
            DCA on ``full_attention`` layers, sliding layers keep their window), or a
            ``ZebraForCausalLM``, where DCA runs on the global layers (attention implementation
            ``"zebra_dca"``; local and ``global_approx`` layers keep Zebra's attention: a local
            window never spans more than the trained context anyway).
        pretraining_length: ``c``; default from the model (see :func:`resolve_config`).
        chunk_size: ``s``; default ``3 * c // 4`` (or the model's DCA config).
        temperature: YaRN-style temperature beyond ``c`` (see ``DCAConfig``); default off
            (on when the model's config carries a vLLM ``dual_chunk_attention_config`` with it).
        preset: ``"chunkllama"`` for ChunkLlama's own defaults (:meth:`DCAConfig.chunkllama`).

    Returns the same model. Raises ``ValueError`` naming the setting for invalid
    settings, an unsupported model family or rope type, or a model without RoPE.
    """
    config = model.config
    _check_family(config)
    rotary, inv_freq_name = _rotary_embedding(model)
    dca = resolve_config(config, pretraining_length=pretraining_length, chunk_size=chunk_size,
                         temperature=temperature, preset=preset)
    _install(model, CONFIG_KEY, ATTN_IMPLEMENTATION, ZEBRA_ATTN_IMPLEMENTATION,
             _LayerState(dca, (rotary,), inv_freq_name, None, config.model_type in NOPE_FULL_ATTENTION_TYPES),
             dca.to_dict())
    return model


def _install(model, config_key: str, implementation: str, zebra_implementation: str, state, saved: dict) -> None:
    """Put ``state`` on every attention module, record ``saved`` on the config, switch the implementation.

    Only one extension is active at a time: applying one replaces any other (the previous
    ordinary implementation is kept to go back to).
    """
    config = model.config
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"model: found no attention modules in {type(model).__name__}")
    register()
    ours = {ATTN_IMPLEMENTATION, ZEBRA_ATTN_IMPLEMENTATION, EXTENSION_IMPLEMENTATION, ZEBRA_EXTENSION_IMPLEMENTATION}
    previous = config._attn_implementation
    if previous in ours:  # applied before: keep what to go back to
        for key in (CONFIG_KEY, EXTENSION_CONFIG_KEY):
            old = getattr(config, key, None)
            if old is not None:
                previous = old.get("previous_attn_implementation") or previous
                delattr(config, key)
        if previous in ours:
            previous = _default_implementation(config)
    for module in modules:
        module.__dict__.pop("_zebra_dca", None)
        module.__dict__["_zebra_dca"] = state
    setattr(config, config_key, {**saved, "previous_attn_implementation": previous})
    model.set_attn_implementation(zebra_implementation if config.model_type == "zebra" else implementation)


def _default_implementation(model_config) -> str:
    return "zebra" if model_config.model_type == "zebra" else "sdpa"


def remove_dca(model):
    """Undo :func:`apply_dca`: the previous attention implementation and outputs come back."""
    config = model.config
    saved = getattr(config, CONFIG_KEY, None)
    if saved is None:
        raise ValueError("model: DCA is not applied (config has no zebra_dca)")
    return _uninstall(model, CONFIG_KEY)


def _uninstall(model, config_key: str):
    config = model.config
    saved = getattr(config, config_key)
    previous = saved.get("previous_attn_implementation") or _default_implementation(config)
    model.set_attn_implementation(previous)
    delattr(config, config_key)
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


def written_keys(query, key, value, attention_mask):
    """Fixed-size caches (``StaticCache``): keep only the written slots.

    :func:`extension_mask_interface` hands such layers a padding mask as wide as the
    written slots only; the keys past it were never written, and the queries are the
    last written keys. Returns ``(key, value, mask)``.
    """
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        written = attention_mask.shape[-1]
        if written < key.shape[2]:
            if written < query.shape[2]:
                raise ValueError(f"attention mask covers {written} keys, fewer than the {query.shape[2]} queries")
            key, value = key[:, :, :written], value[:, :, :written]
            if bool(attention_mask.all()):
                attention_mask = None
    return key, value, attention_mask


def _attend(module, query, key, value, attention_mask, scaling, dropout, kwargs, who: str):
    """The shared body of the extension attention functions: checks, fixed-size caches, sliding
    and NoPE layers, positions. Returns ``([B, Sq, Hq, D], None)``."""
    state = module.__dict__.get("_zebra_dca")
    if state is None:
        raise ValueError(
            f"attention layer {getattr(module, 'layer_idx', '?')} has no {who} settings: call "
            "zebra_llm.apply_extension(model, ...) instead of setting attn_implementation by hand"
        )
    if dropout and module.training:
        raise ValueError(f"attention dropout ({dropout}) is not supported with {who}; set config.attention_dropout = 0")
    key, value, attention_mask = written_keys(query, key, value, attention_mask)
    kpm = key_padding_mask(attention_mask, key, who=f"{who} attention")
    window = kwargs.get("sliding_window")
    if window is not None:  # a sliding_attention layer keeps its window (positions never exceed it)
        from .attention import local_attention

        out = local_attention(query, key, value, window=int(window), scale=scaling, key_padding_mask=kpm)
        return out.transpose(1, 2).contiguous(), None
    if state.nope_full:  # no RoPE in this layer: nothing to re-position
        from .attention import global_attention

        out = global_attention(query, key, value, scale=scaling, key_padding_mask=kpm)
        return out.transpose(1, 2).contiguous(), None
    batch, _, seq_q, _ = query.shape
    offset = position_offset(kwargs.get("position_ids"), kpm, seq_q, key.shape[2], batch, query.device)
    inv_freq = state.inv_freq(query.device)
    if state.spec is None:  # DCA: its own backends (sdpa, sdpa_stacked, flex, reference)
        cfg = state.config
        out = dca_attention(
            query, key, value, inv_freq=inv_freq, chunk_size=cfg.chunk_size,
            pretraining_length=cfg.pretraining_length, position_offset=offset,
            temperature_length=cfg.temperature_length if cfg.temperature else None, scale=scaling,
            key_padding_mask=kpm,
        )
    else:
        from .attention.piecewise import piecewise_attention

        out = piecewise_attention(query, key, value, spec=state.spec, inv_freq=inv_freq, position_offset=offset,
                                  scale=scaling, key_padding_mask=kpm)
    return out.transpose(1, 2).contiguous(), None


def dca_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered as ``"dca"`` (and ``"zebra_extension"``) with transformers'
    ``AttentionInterface``.

    query: ``[B, Hq, Sq, D]`` rotated at ``position_ids``; key, value: ``[B, Hkv, Skv, D]``
    (all cached keys); attention_mask: the ``[B, Skv]`` padding mask of
    :func:`extension_mask_interface` or ``None``. Sliding-window layers (``sliding_window``
    given) keep ordinary sliding-window attention. Returns ``([B, Sq, Hq, D], None)``.
    """
    return _attend(module, query, key, value, attention_mask, scaling, dropout, kwargs, "DCA")


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


def extension_mask_interface(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                             mask_function=None, attention_mask=None, local_size=None, **kwargs):
    """Mask function of the extension implementations: a ``[batch, kv]`` padding mask or ``None``.

    As :func:`zebra_llm.hf.padding_mask_interface`, except for fixed-size caches
    (``StaticCache``: the layer holds more slots than were written): the mask then covers
    the written slots only (all True without an ``attention_mask``), which tells the
    attention function where the keys end. Sliding layers of a fixed-size cache keep a
    rolling buffer whose slots are not in sequence order: refused.
    """
    written = int(q_offset) + q_length - int(kv_offset)
    if kv_offset == 0 and written < kv_length:
        if local_size is not None:
            raise ValueError(
                "cache: a fixed-size cache (StaticCache) with sliding-window layers is not supported under a "
                "context-extension method; use the default DynamicCache"
            )
        if attention_mask is None:
            return torch.ones(batch_size, written, dtype=torch.bool)
        if attention_mask.dim() != 2:
            return attention_mask
        mask = attention_mask.to(torch.bool)[:, :written]
        if mask.shape[-1] < written:
            raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but {written} are in the cache")
        return mask
    return padding_mask_interface(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function,
                                  attention_mask, **kwargs)


_registered = False
EXTENSION_IMPLEMENTATION = "zebra_extension"  # SelfExtend, ReRoPE, STRING (zebra_llm.extensions)
ZEBRA_EXTENSION_IMPLEMENTATION = "zebra_extension_zebra"  # the same on a Zebra model's global layers
EXTENSION_CONFIG_KEY = "zebra_extension"


def register() -> None:
    """Register ``"dca"``, ``"zebra_dca"``, ``"zebra_extension"`` and ``"zebra_extension_zebra"``
    with transformers' AttentionInterface and AttentionMaskInterface (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for name, forward, mask in (
        (ATTN_IMPLEMENTATION, dca_attention_forward, extension_mask_interface),
        (EXTENSION_IMPLEMENTATION, dca_attention_forward, extension_mask_interface),
        # Zebra models recognise structural implementations by padding_mask_interface (and refuse
        # fixed-size caches themselves)
        (ZEBRA_ATTN_IMPLEMENTATION, zebra_dca_attention_forward, padding_mask_interface),
        (ZEBRA_EXTENSION_IMPLEMENTATION, zebra_dca_attention_forward, padding_mask_interface),
    ):
        AttentionInterface.register(name, forward)
        AttentionMaskInterface.register(name, mask)
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

