"""Dual Chunk Attention's settings (An et al., ICML 2024, arXiv 2402.17463): :class:`DCAConfig`.

One extension method among the others (``extensions.config``): a typed config, checked once when it is
built, whose :meth:`DCAConfig.spec` is the rule the kernel runs (``attention.specs.DCASpec``). It reads the
paper's settings, ChunkLlama's defaults and vLLM's ``dual_chunk_attention_config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .._checks import check_int
from ..attention.dca_positions import check_geometry
from ..attention.specs import DCASpec

# vLLM's defaults for missing keys of ``dual_chunk_attention_config``
# (vllm/attention/backends/dual_chunk_flash_attn.py).
VLLM_DEFAULT_CHUNK_SIZE = 8192
VLLM_DEFAULT_LOCAL_SIZE = 1024
PRESETS = ("paper", "chunkllama")


@dataclass(frozen=True)
class DCAConfig:
    """Dual Chunk Attention settings, validated at construction (the one check of the geometry: building
    the spec, ``DCASpec``, which ``dca_positions.check_geometry`` guards).

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

    method = "dca"  # class attributes, not fields: the registry's name and the name errors use
    display = "DCA"

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
        spec = DCASpec(self.chunk_size, c, self.temperature_length)  # checks the geometry, the one place
        if not self.temperature:
            spec.temperature_length = None  # kept on the config, not applied
        object.__setattr__(self, "_spec", spec)

    @property
    def local_window(self) -> int:
        """``w = c - s``: neighbouring-chunk distances below this stay exact."""
        return self.pretraining_length - self.chunk_size

    @property
    def trained_length(self) -> int:
        return self.pretraining_length

    @property
    def reach(self) -> None:
        """The longest sequence the method is meant for: none (relative positions stay below ``c``)."""
        return None

    def spec(self) -> DCASpec:
        """The rule the kernel runs (built once, with the config)."""
        return self._spec

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DCAConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a DCA config must be a dict, got {type(data).__name__}")
        known = {"pretraining_length", "chunk_size", "temperature", "temperature_length"}
        unknown = set(data) - known - {"previous_attn_implementation", "method"}
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

    SETTINGS = ("pretraining_length", "chunk_size", "temperature", "temperature_length", "preset", "trained_length")

    @classmethod
    def _check_names(cls, settings: dict) -> None:
        unknown = sorted(set(settings) - set(cls.SETTINGS))
        if unknown:
            raise ValueError(f"unknown dca setting(s) {unknown}; allowed: {sorted(cls.SETTINGS)}")
        preset = settings.get("preset")
        if preset not in (None, *PRESETS):
            raise ValueError(f"preset must be 'paper' or 'chunkllama', got {preset!r}")

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """Check what can be checked of ``settings`` before the model is known (its trained context is the
        default ``pretraining_length``), so a bad option fails before a model is loaded."""
        cls._check_names(settings)
        preset = settings.get("preset")
        length = settings.get("pretraining_length")
        length = settings.get("trained_length") if length is None else length
        if preset == "chunkllama":
            if settings.get("pretraining_length") is not None or settings.get("chunk_size") is not None:
                raise ValueError("preset=chunkllama sets pretraining_length and chunk_size; do not give them too")
        elif length is not None:
            cls.from_settings(**settings)  # everything is known: build it
        elif settings.get("chunk_size") is not None:
            check_geometry(settings["chunk_size"], None)  # chunk_size's own range (c is not known yet)

    @classmethod
    def from_settings(cls, pretraining_length=None, chunk_size=None, temperature=None, temperature_length=None,
                      preset=None, trained_length=None) -> "DCAConfig":
        """Settings as ``apply_extension(model, "dca", ...)`` takes them (``preset``: ``paper`` or
        ``chunkllama``; ``trained_length``: the model's, for the defaults)."""
        if temperature is None:
            temperature = False
        if preset not in (None, *PRESETS):
            raise ValueError(f"preset must be 'paper' or 'chunkllama', got {preset!r}")
        if preset == "chunkllama":
            if pretraining_length is not None or chunk_size is not None:
                raise ValueError("preset=chunkllama sets pretraining_length and chunk_size; do not give them too")
            base = cls.chunkllama(trained_length, temperature=temperature)
            return cls(base.pretraining_length, base.chunk_size, temperature,
                       temperature_length or (trained_length if temperature else None))
        if pretraining_length is None:
            pretraining_length = trained_length
        if pretraining_length is None:
            raise ValueError("dca: give pretraining_length= (the model's trained context)")
        return cls(pretraining_length, chunk_size, temperature, temperature_length)

    @classmethod
    def from_model(cls, model_config, settings: dict, saved: dict | None = None) -> "DCAConfig":
        """The DCA settings for a model config: ``settings`` given, else the model's own.

        Order for ``pretraining_length`` and ``chunk_size``: ``saved`` (the settings of an earlier
        ``apply_extension``, kept by ``save_pretrained``), then vLLM's ``dual_chunk_attention_config``,
        then ``pretraining_length`` from ``trained_length=`` or the model's trained context
        (``loading.trained_context``). ``temperature``: the setting when given; else the saved one, else
        on for a vLLM config with ``original_max_position_embeddings`` (as vLLM runs Qwen2.5-1M), else
        off (the paper's DCA). ``preset="chunkllama"``: ChunkLlama's defaults (:meth:`chunkllama`).
        """
        from ..loading import trained_context

        cls._check_names(settings)  # the values are checked as the config is built
        settings = dict(settings)
        trained = settings.pop("trained_length", None)
        temperature = settings.get("temperature")
        if temperature is not None and not isinstance(temperature, bool):
            raise ValueError(f"temperature must be True or False, got {temperature!r}")
        if settings.get("preset") is not None or settings.get("pretraining_length") is not None or trained:
            return cls.from_settings(**settings, trained_length=trained or trained_context(model_config))
        vllm = getattr(model_config, "dual_chunk_attention_config", None)
        if saved is not None:
            base = cls.from_dict(saved)
            keep = base.temperature if temperature is None else temperature
            base = cls(base.pretraining_length, base.chunk_size, keep, base.temperature_length)
        elif vllm is not None:
            base = cls.from_vllm(vllm, temperature=True if temperature is None else temperature)
        else:
            return cls.from_settings(**settings, trained_length=trained_context(model_config))
        if settings.get("chunk_size") is None and settings.get("temperature_length") is None:
            return base
        chunk, length = settings.get("chunk_size"), settings.get("temperature_length")
        return cls(base.pretraining_length, base.chunk_size if chunk is None else chunk, base.temperature,
                   base.temperature_length if length is None else length)

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
            check_int(f"dual_chunk_attention_config.{name}", value, 0)
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


__all__ = ["DCAConfig", "PRESETS", "VLLM_DEFAULT_CHUNK_SIZE", "VLLM_DEFAULT_LOCAL_SIZE"]
