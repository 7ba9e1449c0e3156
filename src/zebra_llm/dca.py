"""Dual Chunk Attention for transformers models (An et al., ICML 2024, arXiv 2402.17463): the user API.

Guide: docs/dca.md.

``apply_dca(model)`` makes a loaded Llama, Mistral, Qwen2 or Qwen3 family model (and
``ZebraForCausalLM``'s global layers) use DCA for forward, loss and ``generate``; ``remove_dca(model)``
undoes it. :class:`DCAConfig` holds and checks the settings (the paper's, ChunkLlama's, vLLM's
``dual_chunk_attention_config``). The settings live on the model config as ``config.zebra_dca``, so
``save_pretrained`` keeps them and a later ``apply_dca`` picks them up. How the method is put on a
model, and the rules on positions it relies on: ``zebra_llm.hf.extension``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .attention.dca_positions import check_geometry, relative_positions
from .hf.extension import (
    DCA_CONFIG_KEY as CONFIG_KEY,
    DCA_IMPLEMENTATION as ATTN_IMPLEMENTATION,
    NOPE_FULL_ATTENTION_TYPES,
    SUPPORTED_MODEL_TYPES,
    SUPPORTED_ROPE_TYPES,
    ExtensionState,
    check_family,
    install,
    rotary_embedding,
    uninstall,
)
from .loading import trained_context

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


def apply_dca(model, *, pretraining_length: int | None = None, chunk_size: int | None = None,
              temperature: bool | None = None, preset: str | None = None):
    """Make ``model`` use Dual Chunk Attention from now on (forward, loss, ``generate``).

    Shorthand for ``zebra_llm.apply_extension(model, "dca", ...)``.

    Args:
        model: a loaded transformers causal LM of the Llama, Mistral (incl. Mixtral),
            Qwen2 or Qwen3 families (incl. their MoE variants), a model with per-layer
            ``layer_types`` (Gemma 3, OLMo 3, Ministral, Cohere2, Qwen2 with sliding layers:
            DCA on ``full_attention`` layers, sliding layers keep their window), or a
            ``ZebraForCausalLM``, where DCA runs on the global layers (the implementation stays
            ``"zebra"``; local and ``global_approx`` layers keep Zebra's attention: a local
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
    check_family(config, "DCA")
    rotary, inv_freq_name = rotary_embedding(model, "DCA")
    dca = resolve_config(config, pretraining_length=pretraining_length, chunk_size=chunk_size,
                         temperature=temperature, preset=preset)
    state = ExtensionState("DCA", dca, (rotary,), inv_freq_name, None, config.model_type in NOPE_FULL_ATTENTION_TYPES)
    install(model, CONFIG_KEY, ATTN_IMPLEMENTATION, state, dca.to_dict())
    return model


def remove_dca(model):
    """Undo :func:`apply_dca`: the previous attention implementation and outputs come back."""
    config = model.config
    saved = getattr(config, CONFIG_KEY, None)
    if saved is None:
        raise ValueError("model: DCA is not applied (config has no zebra_dca)")
    return uninstall(model, CONFIG_KEY)


def dca_config(model) -> DCAConfig | None:
    """The DCA settings in effect on ``model``, or ``None``."""
    saved = getattr(model.config, CONFIG_KEY, None)
    return None if saved is None else DCAConfig.from_dict(saved)


__all__ = [
    "ATTN_IMPLEMENTATION",
    "DCAConfig",
    "SUPPORTED_MODEL_TYPES",
    "SUPPORTED_ROPE_TYPES",
    "apply_dca",
    "dca_config",
    "relative_positions",
    "remove_dca",
    "resolve_config",
]

