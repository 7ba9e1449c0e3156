"""Context-extension methods applied to a model on load, named by short specs.

A spec is ``name`` or ``name:key=value,key=value``:

    none                              the model as it is
    linear:factor=4                   position interpolation (Chen et al., 2023)
    dynamic:factor=4                  dynamic NTK scaling (transformers' "dynamic" rope type)
    yarn:factor=4                     YaRN (Peng et al., 2023)
    dca                               Dual Chunk Attention (An et al., 2024), defaults from the model
    dca:chunk_size=6144               ... with its settings (temperature=true: the YaRN-style temperature)
    dca:preset=chunkllama             ... with ChunkLlama's own defaults (largest position 3c/4, window c/8)
    self_extend:group_size=8,neighbor_window=1024
                                      SelfExtend (Jin et al., 2024)
    rerope:window=4096                ReRoPE (Su, 2023); leak=16 for leaky ReRoPE
    string                            STRING (An et al., 2024), shifted_offset / local_value
    zebra:layer_group_size=4,window=512
                                      conversion to Zebra layerwise grouped local-global attention

This module is the registry: each method is registered under its name (``METHODS``) with a typed
options class that is validated when the spec is parsed (``method_spec.MethodSpec``), so a typo in a
key or a bad value fails before any model is loaded. The rope-scaling baselines set transformers' own
``rope_parameters`` on the config and rebuild the model's rotary-embedding
module from it through its public constructor, so the frequencies are exactly
the ones transformers computes for a checkpoint saved with that scaling.

Every method also has a **length limit**: the longest sequence an evaluation
may ask of it. By default it is four times the context the method is meant to
reach (the trained context ``c`` for ``none`` and ``zebra``, ``factor * c`` for
the rope-scaling methods, ``(c - W) * G + W`` for SelfExtend, ``c + S - W`` for STRING,
``(c - w) * k + w`` for leaky ReRoPE); DCA and plain ReRoPE have none (their relative
positions stay inside the trained range at any length). Past the limit a method's output says
nothing useful and the run would only burn time, so evaluations refuse it;
``max_length=N`` on any spec sets the limit explicitly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from zebra_llm.config_io import ConfigError, build
from zebra_llm.dca import DCAConfig, apply_dca, resolve_config
from zebra_llm.extensions import apply_extension
from zebra_llm.extensions.config import check_settings, make_config
from zebra_llm.loading import trained_context
from zebra_llm.modeling import convert_to_zebra
from zebra_llm.modeling.configuration_zebra import LayerSettingError, check_layer_settings

# How far past its nominal context a method may be asked to go by default.
DEFAULT_LIMIT_MULTIPLE = 4


# ---------------------------------------------------------------- option parsing


def _format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _build(options_type, method_name: str, values: dict[str, Any]):
    """The options dataclass from ``key=value`` text, by the engine the training configs use."""
    names = [f.name for f in dataclasses.fields(options_type)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(
            f"method {method_name}: unknown option {unknown[0]!r}; allowed options are {', '.join(names) or 'none'}"
        )
    try:
        return build(options_type, values)
    except ConfigError as e:  # a value of the wrong type, named by its key
        raise ValueError(f"method {method_name}: option {e}") from None
    except ValueError as e:  # the options' own checks (which name the option)
        raise ValueError(f"method {method_name}: {e}") from None


def _check_max_length(value: int | None) -> None:
    if value is not None and value < 2:
        raise ValueError(f"max_length must be >= 2, got {value}")


# ---------------------------------------------------------------- methods


class Method:
    """A registered method: an options class, how to apply it, and its length limit."""

    name: ClassVar[str]
    options_type: ClassVar[type]
    prefix_cache_exact: ClassVar[bool] = True

    @classmethod
    def make_options(cls, values: dict[str, Any]):
        return _build(cls.options_type, cls.name, values)

    @classmethod
    def apply(cls, model, options):
        raise NotImplementedError

    @classmethod
    def check_config(cls, config, options) -> None:
        """Raise ValueError when the method's settings do not fit a model with ``config`` (run before
        its weights are loaded; the checks are the library's own, not repeated here)."""

    @classmethod
    def nominal_context(cls, config, options) -> int | None:
        return trained_context(config)

    @classmethod
    def default_max_length(cls, config, options) -> int | None:
        nominal = cls.nominal_context(config, options)
        return None if nominal is None else int(DEFAULT_LIMIT_MULTIPLE * nominal)

    @classmethod
    def limit_reason(cls, config, options) -> str:
        if getattr(options, "max_length", None) is not None:
            return "its max_length option"
        return f"{DEFAULT_LIMIT_MULTIPLE}x its nominal context of {cls.nominal_context(config, options)}"


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def methods_help() -> str:
    """Every registered method with its options, for ``--help``: ``name (option, option, ...)``."""
    parts = []
    for name, cls in METHODS.items():
        options = [f.name for f in dataclasses.fields(cls.options_type)]
        parts.append(f"{name} ({', '.join(options)})" if options else name)
    return "; ".join(parts)


@dataclass(frozen=True)
class NoneOptions:
    max_length: int | None = None

    def __post_init__(self):
        _check_max_length(self.max_length)


@register_method
class NoMethod(Method):
    """The model unchanged (plain RoPE extrapolation past the trained context)."""

    name = "none"
    options_type = NoneOptions

    @classmethod
    def apply(cls, model, options):
        return model


# --- rope scaling baselines (transformers' rope types)


@dataclass(frozen=True)
class RopeScalingOptions:
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    max_length: int | None = None

    def __post_init__(self):
        if self.factor is None:
            raise ValueError("option factor is required (e.g. factor=4)")
        if self.factor < 1:
            raise ValueError(f"option factor must be >= 1, got {_format_value(self.factor)}")
        if self.original_max_position_embeddings is not None and self.original_max_position_embeddings < 1:
            raise ValueError("option original_max_position_embeddings must be >= 1")
        _check_max_length(self.max_length)


@dataclass(frozen=True)
class YarnOptions(RopeScalingOptions):
    beta_fast: float | None = None
    beta_slow: float | None = None
    attention_factor: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if (self.beta_fast or 32) < (self.beta_slow or 1):
            raise ValueError("option beta_fast must be >= beta_slow")
        if self.attention_factor is not None and self.attention_factor <= 0:
            raise ValueError("option attention_factor must be > 0")


class _RopeScaling(Method):
    """Set ``config.rope_parameters`` to a transformers rope type and rebuild the rotary embedding."""

    rope_type: ClassVar[str]
    options_type = RopeScalingOptions

    @classmethod
    def nominal_context(cls, config, options) -> int:
        original = options.original_max_position_embeddings or trained_context(config)
        return int(original * options.factor)

    @classmethod
    def rope_parameters(cls, current: dict, original: int, options) -> dict:
        params = {k: v for k, v in current.items() if k not in ("type", "factor", "original_max_position_embeddings")}
        params.update(rope_type=cls.rope_type, factor=float(options.factor))
        return params

    @classmethod
    def apply(cls, model, options):
        config = model.config
        current = getattr(config, "rope_parameters", None)
        if not isinstance(current, dict) or "rope_theta" not in current:
            raise ValueError(
                f"method {cls.name}: model type {config.model_type} has no single rope_parameters dict with "
                f"rope_theta; rope scaling applies to RoPE models"
            )
        if current.get("rope_type", "default") != "default":
            raise ValueError(
                f"method {cls.name}: the model already uses rope_type {current['rope_type']!r}; "
                "stacking two rope scalings is not supported"
            )
        original = options.original_max_position_embeddings or trained_context(config)
        config.rope_parameters = cls.rope_parameters(current, original, options)
        cls.set_max_positions(config, original, options)
        config.validate_rope()
        rebuilt = _rebuild_rotary_embeddings(model)
        if rebuilt == 0:
            raise ValueError(
                f"method {cls.name}: found no rotary-embedding module in {type(model).__name__} to rebuild"
            )
        return model

    @classmethod
    def set_max_positions(cls, config, original: int, options) -> None:
        # PI and YaRN models are published with max_position_embeddings = factor * original.
        config.max_position_embeddings = int(original * options.factor)


@register_method
class LinearScaling(_RopeScaling):
    """Position interpolation: positions divided by ``factor`` (Chen et al., 2023, arXiv 2306.15595)."""

    name = "linear"
    rope_type = "linear"


@register_method
class DynamicNTK(_RopeScaling):
    """Dynamic NTK-aware scaling: the RoPE base grows with the sequence past the trained context."""

    name = "dynamic"
    rope_type = "dynamic"
    # transformers recomputes the frequencies from the longest position of each forward call, so a
    # prefix's cached keys are rotated with other frequencies than a full forward would use.
    prefix_cache_exact = False

    @classmethod
    def set_max_positions(cls, config, original: int, options) -> None:
        # transformers' dynamic NTK scales relative to max_position_embeddings: it must stay the original.
        config.max_position_embeddings = int(original)


@register_method
class Yarn(_RopeScaling):
    """YaRN: NTK-by-parts interpolation plus attention temperature (Peng et al., 2023, arXiv 2309.00071)."""

    name = "yarn"
    rope_type = "yarn"
    options_type = YarnOptions

    @classmethod
    def rope_parameters(cls, current: dict, original: int, options) -> dict:
        params = super().rope_parameters(current, original, options)
        params["original_max_position_embeddings"] = int(original)
        for key in ("beta_fast", "beta_slow", "attention_factor"):
            if getattr(options, key) is not None:
                params[key] = float(getattr(options, key))
        return params


def _rebuild_rotary_embeddings(model) -> int:
    """Replace every rotary-embedding module by a fresh one built from its (updated) config.

    Rotary modules in transformers are built by ``type(module)(config)`` and keep
    their frequencies in a non-persistent ``inv_freq`` buffer, so rebuilding is
    the public way to change them after loading.
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "inv_freq") and hasattr(module, "rope_type") and hasattr(module, "config")
    ]
    for name, module in targets:
        device = module.inv_freq.device
        fresh = type(module)(module.config).to(device)
        model.set_submodule(name, fresh)
    return len(targets)


# --- DCA and Zebra


@dataclass(frozen=True)
class DCAOptions:
    pretraining_length: int | None = None
    chunk_size: int | None = None
    temperature: bool | None = None  # None: off, unless the model carries a vLLM DCA config
    preset: str | None = None
    max_length: int | None = None

    def __post_init__(self):
        if self.preset is not None:
            object.__setattr__(self, "preset", self.preset.strip().lower())
        # DCAConfig's own checks, as far as they go without the model (its trained context).
        DCAConfig.check_settings(self.pretraining_length, self.chunk_size, preset=self.preset)
        _check_max_length(self.max_length)


@register_method
class DualChunkAttention(Method):
    """Dual Chunk Attention: training-free extension by chunked relative positions (An et al., 2024)."""

    name = "dca"
    options_type = DCAOptions

    @classmethod
    def apply(cls, model, options):
        try:
            result = apply_dca(model, **cls._settings(options))
        except ValueError as e:
            raise ValueError(f"method dca: {e}") from None
        return model if result is None else result

    @classmethod
    def _settings(cls, options) -> dict:
        return dict(
            pretraining_length=options.pretraining_length,
            chunk_size=options.chunk_size,
            temperature=options.temperature,
            preset=None if options.preset == "paper" else options.preset,
        )

    @classmethod
    def check_config(cls, config, options) -> None:
        try:
            resolve_config(config, **cls._settings(options))
        except ValueError as e:
            raise ValueError(f"method dca: {e}") from None

    @classmethod
    def nominal_context(cls, config, options) -> int | None:
        return None  # DCA keeps every relative distance inside the trained range at any length

    @classmethod
    def limit_reason(cls, config, options) -> str:
        return "its max_length option"


# --- SelfExtend, ReRoPE, STRING (zebra_llm.extensions; settings validated there by name)


def _extension_settings(options) -> dict:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if f.name != "max_length" and getattr(options, f.name) is not None}


def _check_extension_options(method: str, options) -> None:
    """The extension's own checks (``extensions.config.check_settings``), so a bad option fails before
    the model is loaded; the checks against the model's trained length follow in :meth:`_Extension.config`."""
    check_settings(method, _extension_settings(options))  # the caller names the method in the error
    _check_max_length(options.max_length)


class _Extension(Method):
    @classmethod
    def check_config(cls, config, options) -> None:
        cls.config(config, options)

    @classmethod
    def config(cls, model_config, options):
        try:
            return make_config(cls.name, trained_context(model_config), _extension_settings(options))
        except ValueError as e:
            raise ValueError(f"method {cls.name}: {e}") from None

    @classmethod
    def apply(cls, model, options):
        try:
            result = apply_extension(model, cls.name, **_extension_settings(options))
        except ValueError as e:
            raise ValueError(f"method {cls.name}: {e}") from None
        return model if result is None else result


# The option records of SelfExtend, ReRoPE and STRING share a shape: each is its method's own list of
# `-m name:key=value` options (what --help and errors name), checked by the extension's own check_settings.
@dataclass(frozen=True)
class SelfExtendOptions:
    group_size: int | None = None
    neighbor_window: int | None = None
    scale_base: int | None = None
    max_length: int | None = None

    def __post_init__(self):
        _check_extension_options("self_extend", self)


@register_method
class SelfExtend(_Extension):
    """SelfExtend: neighbour window kept, grouped positions beyond (Jin et al., ICML 2024)."""

    name = "self_extend"
    options_type = SelfExtendOptions

    @classmethod
    def nominal_context(cls, config, options) -> int:
        return cls.config(config, options).max_length


@dataclass(frozen=True)
class ReRoPEOptions:
    window: int | None = None
    leak: float | None = None
    logn: bool | None = None
    max_length: int | None = None

    def __post_init__(self):
        _check_extension_options("rerope", self)


@register_method
class ReRoPE(_Extension):
    """ReRoPE (and leaky ReRoPE with ``leak``): distances past the window clamped (Su, 2023)."""

    name = "rerope"
    options_type = ReRoPEOptions

    @classmethod
    def nominal_context(cls, config, options) -> int | None:
        cfg = cls.config(config, options)
        if cfg.leak is None:
            return None  # every relative position is at most the window, at any length
        return int((cfg.trained_length - cfg.window) * cfg.leak + cfg.window)

    @classmethod
    def limit_reason(cls, config, options) -> str:
        if cls.nominal_context(config, options) is None:
            return "its max_length option"
        return super().limit_reason(config, options)


@dataclass(frozen=True)
class StringOptions:
    shifted_offset: int | None = None
    local_value: int | None = None
    attention_factor: float | None = None
    max_length: int | None = None

    def __post_init__(self):
        _check_extension_options("string", self)


@register_method
class String(_Extension):
    """STRING: the least-trained distances replaced by shifted well-trained ones (An et al., 2024)."""

    name = "string"
    options_type = StringOptions

    @classmethod
    def nominal_context(cls, config, options) -> int:
        cfg = cls.config(config, options)
        return cfg.trained_length + cfg.shifted_offset - cfg.local_value


@dataclass(frozen=True)
class ZebraOptions:
    attention: str = "group"
    layer_group_size: int | None = None
    window: int | None = None
    approx_chunk_size: int | None = None
    max_length: int | None = None

    def __post_init__(self):
        try:  # ZebraConfig's own checks, so a bad setting fails before the model is loaded
            check_layer_settings(attention=self.attention, layer_group_size=self.layer_group_size,
                                 window=self.window, approx_chunk_size=self.approx_chunk_size)
        except LayerSettingError as e:
            raise ValueError(f"option {e.field} {e.problem}") from None
        _check_max_length(self.max_length)


@register_method
class ZebraConversion(Method):
    """Conversion to Zebra layerwise grouped local-global attention (Song et al., 2023), weights unchanged."""

    name = "zebra"
    options_type = ZebraOptions

    @classmethod
    def apply(cls, model, options):
        kwargs = {"attention": options.attention}
        for key in ("layer_group_size", "window", "approx_chunk_size"):
            if getattr(options, key) is not None:
                kwargs[key] = getattr(options, key)
        converted = convert_to_zebra(model, **kwargs)
        return converted.eval()

