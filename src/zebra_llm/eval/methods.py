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
    sinks:n_sink=4,window=2048        attention sinks on LM-Infinite's Lambda mask (Han et al., 2024)
    zebra:layer_group_size=4,window=512
                                      conversion to Zebra layerwise grouped local-global attention

This module is the registry: each method is registered under its name (``METHODS``) with a typed
options class that is validated when the spec is parsed (``method_spec.MethodSpec``), so a typo in a
key or a bad value fails before any model is loaded. The rope-scaling baselines are
``zebra_llm.extensions.rope_scaling``; the training-free extension methods are one adapter per config of
``zebra_llm.extensions.config.CONFIGS``, with that config's settings as options.

Every method also has a **length limit**: the longest sequence an evaluation
may ask of it. By default it is four times the context the method is meant to
reach (the trained context ``c`` for ``none`` and ``zebra``, ``factor * c`` for
the rope-scaling methods, ``(c - W) * G + W`` for SelfExtend, ``c + S - W`` for STRING,
``(c - w) * k + w`` for leaky ReRoPE); DCA and plain ReRoPE have none (their relative
positions stay inside the trained range at any length). Past the limit a method's output says
nothing useful and the run would only burn time, so evaluations refuse it;
``max_length=N`` on any spec sets the limit explicitly.

A model saved after ``apply_extension`` carries its method's settings, which a spec of that method runs
(and its label records: ``method_spec.MethodSpec.for_model``); a spec of another method, or with other
settings, is refused unless it says ``override_saved=true``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

from zebra_llm.config_io import ConfigError, build
from zebra_llm.extensions import apply_extension, resolve, saved_settings
from zebra_llm.extensions.config import CONFIGS as EXTENSION_CONFIGS
from zebra_llm.extensions.rope_scaling import apply_rope_scaling
from zebra_llm.loading import trained_context
from zebra_llm.modeling import convert_to_zebra
from zebra_llm.modeling.layout import DEFAULT_LAYOUT, SETTING_TYPES, LayerSettingError, ZebraLayout, settings_of

# How far past its nominal context a method may be asked to go by default.
DEFAULT_LIMIT_MULTIPLE = 4
# Options of every method that are about the evaluation, not the method's settings: the length limit, and
# running a method other than (or settings other than) the one a model was saved with.
SPEC_OPTIONS = ("max_length", "override_saved")


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
    override_saved: bool | None = None

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
    override_saved: bool | None = None

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
    """A transformers rope type on the model (``extensions.rope_scaling.apply_rope_scaling``)."""

    rope_type: ClassVar[str]
    options_type = RopeScalingOptions

    @classmethod
    def nominal_context(cls, config, options) -> int:
        original = options.original_max_position_embeddings or trained_context(config)
        return int(original * options.factor)

    @classmethod
    def apply(cls, model, options):
        yarn = {k: getattr(options, k) for k in ("beta_fast", "beta_slow", "attention_factor") if hasattr(options, k)}
        try:
            return apply_rope_scaling(model, cls.rope_type, options.factor, **yarn,
                                      original_max_position_embeddings=options.original_max_position_embeddings)
        except ValueError as e:
            raise ValueError(f"method {cls.name}: {e}") from None


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


@register_method
class Yarn(_RopeScaling):
    """YaRN: NTK-by-parts interpolation plus attention temperature (Peng et al., 2023, arXiv 2309.00071)."""

    name = "yarn"
    rope_type = "yarn"
    options_type = YarnOptions


# --- the training-free extension methods (zebra_llm.extensions): one adapter, options from each config


class ExtensionMethod(Method):
    """A method of ``zebra_llm.extensions.config.CONFIGS``: its options are its config's settings (each
    ``None`` by default: from the model), checked by the config's own ``check_settings`` when the spec
    is parsed; the config itself is built once the model's config is known (:meth:`config`) and handed
    to ``apply_extension`` as it is."""

    config_type: ClassVar[type]

    @classmethod
    def settings(cls, options) -> dict:
        return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
                if f.name not in SPEC_OPTIONS and getattr(options, f.name) is not None}

    @classmethod
    def config(cls, model_config, options, *, use_saved: bool | None = None):
        """The method's config on a model with ``model_config``: its saved settings of this method (unless
        ``override_saved``, or ``use_saved=False``) and its trained context for the defaults."""
        if use_saved is None:
            use_saved = not options.override_saved
        try:
            key = (cls.name, options, use_saved, *_resolution_inputs(model_config))
            if key not in _BUILT:
                _BUILT[key] = resolve(model_config, cls.name, cls.settings(options), use_saved=use_saved)
                while len(_BUILT) > 32:
                    _BUILT.popitem(last=False)
            return _BUILT[key]
        except ValueError as e:
            raise ValueError(f"method {cls.name}: {e}") from None

    @classmethod
    def check_config(cls, config, options) -> None:
        cls.config(config, options)

    @classmethod
    def apply(cls, model, options):
        cfg = cls.config(model.config, options)
        try:
            return apply_extension(model, cfg)
        except ValueError as e:
            raise ValueError(f"method {cls.name}: {e}") from None

    @classmethod
    def nominal_context(cls, config, options) -> int | None:
        return cls.config(config, options).reach  # None: every relative position stays inside the trained range

    @classmethod
    def limit_reason(cls, config, options) -> str:
        if getattr(options, "max_length", None) is None and cls.nominal_context(config, options) is None:
            return "its max_length option"
        return super().limit_reason(config, options)


# The configs built for (method, options, model config): an evaluation asks for one several times (its
# limit, its label, applying it), before and after the weights are loaded; it is built, and checked, once.
_BUILT: OrderedDict = OrderedDict()


def _resolution_inputs(model_config) -> tuple:
    """What a config's ``from_model`` reads from a model config: saved settings, vLLM's DCA config, the
    trained context."""
    return (repr(saved_settings(model_config)), repr(getattr(model_config, "dual_chunk_attention_config", None)),
            trained_context(model_config))


def _options_record(name: str, settings: list[tuple[str, type, Any]], check) -> type:
    """A method's options record: its ``settings`` (name, type, default), plus the spec options; frozen,
    checked by ``check(record)`` on creation."""
    specs = [(n, tp, dataclasses.field(default=default)) for n, tp, default in settings]
    specs += [(n, int | None if n == "max_length" else bool | None, dataclasses.field(default=None))
              for n in SPEC_OPTIONS]

    def __post_init__(self):
        check(self)
        _check_max_length(self.max_length)

    return dataclasses.make_dataclass(name, specs, namespace={"__post_init__": __post_init__, "__module__": __name__},
                                      frozen=True)


def _extension_options(method: str, config_type: type) -> type:
    """The options record of an extension method: every setting of its config (and ``preset`` for DCA),
    each ``None`` by default (from the model), checked by the config's ``check_settings``."""
    hints = typing.get_type_hints(config_type)
    names = [f.name for f in dataclasses.fields(config_type)] + [  # DCA's preset (its trained length is c)
        n for n in getattr(config_type, "SETTINGS", ()) if n not in hints and n != "trained_length"]

    def check(options):
        if getattr(options, "preset", None) is not None:
            object.__setattr__(options, "preset", options.preset.strip().lower())
        config_type.check_settings({n: getattr(options, n) for n in names if getattr(options, n) is not None})

    return _options_record(f"{config_type.__name__.removesuffix('Config')}Options",
                           [(n, hints.get(n, str) | None, None) for n in names], check)


def _register_extensions() -> None:
    for name, config_type in EXTENSION_CONFIGS.items():
        register_method(type(f"{config_type.__name__.removesuffix('Config')}Method", (ExtensionMethod,), {
            "__doc__": (config_type.__doc__ or "").strip().splitlines()[0], "name": name,
            "config_type": config_type, "options_type": _extension_options(name, config_type),
        }))


_register_extensions()


def _check_layout(options) -> None:
    try:  # ZebraLayout's own check, so a bad setting fails before the model is loaded
        ZebraLayout(**settings_of(options))
    except LayerSettingError as e:
        raise ValueError(f"option {e.field} {e.problem}") from None


# The zebra method's options: ZebraLayout's settings with its defaults and its check.
ZebraOptions = _options_record(
    "ZebraOptions", [(n, tp, getattr(DEFAULT_LAYOUT, n)) for n, tp in SETTING_TYPES.items()], _check_layout)


@register_method
class ZebraConversion(Method):
    """Conversion to Zebra layerwise grouped local-global attention (Song et al., 2023), weights unchanged."""

    name, options_type = "zebra", ZebraOptions

    @classmethod
    def apply(cls, model, options):
        return convert_to_zebra(model, **settings_of(options)).eval()
