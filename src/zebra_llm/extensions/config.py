"""Typed, validated settings of each training-free extension method, with defaults from the
model's trained length ``c`` as each method's authors recommend.

==============  =====================  ==========================================================
method          setting (default)      source of the default
==============  =====================  ==========================================================
dca             ``chunk_size`` 3c/4    An et al. 2024, Section 3 (local window ``c - s``)
                ``temperature`` off    the paper's DCA; ChunkLlama applies none (vLLM configs: on)
                ``preset``             ``chunkllama``: ChunkLlama's code (largest position 3c/4,
                                       local window c/8: ``replace_with_chunkllama``)
self_extend     ``group_size`` 8       LongLM ``self_extend_patch/Llama.py`` (``group_size_1=8``)
                ``neighbor_window``    1024 there (``group_size_2``); capped at c/4 for models
                min(1024, c/4)         trained on fewer than 4096 tokens
rerope          ``window`` c/8         bojone/rerope: ``window = 512`` for ``training_length = 4096``
                ``leak`` none          leaky ReRoPE's ``scaling_factor = 16`` when set to a number
                ``logn`` on            both patches scale queries by ``max(1, log(n)/log(c))``
string          ``shifted_offset``     HKUNLP/STRING README: ``int(0.33 * L)``, L the trained length
                0.33c
                ``local_value`` 128    same (``small_local_value=128``); capped at S/2 when S < 256
                ``attention_factor``   ``string_for_llama.py``: ``0.1 * ln 2 + 1``
sinks           ``n_sink`` 100         LM-Infinite's Llama-2 command (``--global_branch 100``);
                                       capped at c/16 (ours) for models trained on < 1600 tokens
                ``window`` c           same (``--local_branch 4096`` for c = 4096)
                ``distance_limit`` c   same (``--limit_distance 4096``)
==============  =====================  ==========================================================

Every method is one config class here (``DCAConfig`` in ``extensions/dca.py``) with the same few members
(``check_settings`` before the model is known, ``from_model``, ``spec``, ``to_dict`` / ``from_dict``), and
one line of :data:`CONFIGS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from .._checks import check_int, int_problem
from ..attention.specs import ReRoPESpec, SelfExtendSpec, SinksSpec, StringSpec
from .dca import DCAConfig

STRING_ATTENTION_FACTOR = 0.1 * math.log(2) + 1


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_known(method: str, cls, settings: dict, extra: tuple[str, ...] = ()) -> None:
    known = {f.name for f in fields(cls) if f.name != "trained_length"} | set(extra)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown {method} setting(s) {unknown}; allowed: {sorted(known)}")


@dataclass(frozen=True)
class _FromTrainedLength:
    """What the configs of the methods whose defaults follow from the trained length share: the trained
    length ``c`` (the first field, checked first), building one for a model, the saved form, and the checks
    before the model is known. Each config lists its own settings and, in ``_settle(c)``, the source of
    each default and its checks against ``c``."""

    display: ClassVar[str]  # the method's name in messages
    method: ClassVar[str]  # its registry name
    NEEDED: ClassVar[tuple[str, ...]] = ()  # settings that fix the rule without the trained length

    trained_length: int

    def __post_init__(self):
        self._settle(check_int("trained_length", self.trained_length, 2))

    def _settle(self, c: int) -> None:
        raise NotImplementedError

    def _default(self, name: str, value) -> None:
        """Give the setting ``name`` the default ``value`` when it was left None."""
        if getattr(self, name) is None:
            object.__setattr__(self, name, value)

    def _check_below(self, name: str, c: int) -> None:
        if getattr(self, name) >= c:
            raise ValueError(f"{name} must be smaller than the trained length {c}, got {getattr(self, name)}")

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """Check what can be checked of ``settings`` before the trained length is known (names and each
        value's own range; those against the trained length follow when the config is built), so a bad
        option fails before a model is loaded, with the same message."""
        _check_known(cls.method, cls, settings, ("trained_length",))
        cls._check_alone({k: v for k, v in settings.items() if k != "trained_length"})

    @classmethod
    def from_model(cls, model_config, settings: dict, saved: dict | None = None):
        """The config for a model: ``trained_length=`` or the model's trained context for the defaults.
        ``saved``: this method's settings from an earlier ``apply_extension`` (kept by
        ``save_pretrained``): no settings reuse them as they are; settings given are taken with the saved
        trained length for the others' defaults (a saved default derived from another setting is not
        carried over)."""
        from ..loading import trained_context

        settings = dict(settings)
        trained = settings.pop("trained_length", None)
        if trained is None and saved is not None:
            saved = dict(saved)
            trained = saved.pop("trained_length")
            return cls.build(trained, settings or saved)
        return cls.build(trained_context(model_config) if trained is None else trained, settings)

    @classmethod
    def build(cls, trained_length: int, settings: dict):
        _check_known(cls.method, cls, settings)
        return cls(trained_length=trained_length, **settings)

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def explicit_spec(cls, settings: dict):
        """The spec from settings that give the geometry in full, without the trained length (the rule
        does not depend on it; only the defaults, the range checks against it and ReRoPE's log-n scaling
        do)."""
        _check_known(cls.method, cls, settings)
        missing = [name for name in cls.NEEDED if settings.get(name) is None]
        if missing:
            raise ValueError(f"{cls.method}: give {', '.join(f'{m}=' for m in missing)} or trained_length= "
                             f"(the model's trained context, from which the defaults follow)")
        return cls._spec_alone(settings)


@dataclass(frozen=True)
class SelfExtendConfig(_FromTrainedLength):
    """SelfExtend (Jin et al., ICML 2024, arXiv 2401.01325).

    ``group_size`` G and ``neighbor_window`` W: distances below W are kept, larger ones
    are grouped by G. The largest relative position of n tokens is about
    ``(n - W) / G + W``, so a model trained on ``c`` tokens reaches ``(c - W) * G + W``
    (:attr:`max_length`). ``scale_base``: optional log scaling of queries (off).
    """

    method, display, NEEDED = "self_extend", "SelfExtend", ("neighbor_window",)

    group_size: int = 8
    neighbor_window: int | None = None
    scale_base: int | None = None

    def _settle(self, c: int) -> None:
        self._default("neighbor_window", max(1, min(1024, c // 4)))
        self.spec()  # validates group_size, neighbor_window, scale_base by name
        self._check_below("neighbor_window", c)

    @property
    def max_length(self) -> int:
        return (self.trained_length - self.neighbor_window) * self.group_size + self.neighbor_window

    @property
    def reach(self) -> int:
        """The longest sequence the method is meant for (its largest position stays below ``c``)."""
        return self.max_length

    def spec(self) -> SelfExtendSpec:
        return SelfExtendSpec(self.group_size, self.neighbor_window, self.scale_base)

    @classmethod
    def _check_alone(cls, settings):  # the spec checks each value; a missing window gets its smallest valid one
        cls._spec_alone({"neighbor_window": 1, **settings})

    @classmethod
    def _spec_alone(cls, settings):
        return SelfExtendSpec(settings.get("group_size", 8), settings["neighbor_window"], settings.get("scale_base"))


@dataclass(frozen=True)
class ReRoPEConfig(_FromTrainedLength):
    """ReRoPE and leaky ReRoPE (Su, 2023, github.com/bojone/rerope).

    ``window`` w: distances below w are kept, larger ones become w (or, with ``leak`` k,
    ``w + (d - w) / k``). ``logn``: the official log-n query scaling with the trained length.
    """

    method, display, NEEDED = "rerope", "ReRoPE", ("window",)

    window: int | None = None
    leak: float | None = None
    logn: bool = True

    def _settle(self, c: int) -> None:
        self._default("window", max(1, c // 8))
        _bool("logn", self.logn)
        self.spec()
        self._check_below("window", c)

    @property
    def reach(self) -> int | None:
        """None for ReRoPE (every relative position is at most the window); leaky: ``(c - w) * k + w``."""
        return None if self.leak is None else int((self.trained_length - self.window) * self.leak + self.window)

    def spec(self) -> ReRoPESpec:
        return ReRoPESpec(self.window, self.leak, self.trained_length if self.logn else None)

    @classmethod
    def _check_alone(cls, settings):
        cls._spec_alone({"window": 1, **settings})

    @classmethod
    def _spec_alone(cls, settings):
        _bool("logn", settings.get("logn", True))
        # the log-n query scaling needs the trained length but leaves the positions unchanged
        return ReRoPESpec(settings["window"], settings.get("leak"), None)


@dataclass(frozen=True)
class StringConfig(_FromTrainedLength):
    """STRING (An et al., 2024, arXiv 2410.18745, github.com/HKUNLP/STRING).

    Distances of at least ``shifted_offset`` S are shifted down to ``d - S + local_value``,
    so the least-trained S positions are never used; ``attention_factor`` multiplies
    every logit by its square, as the official code does.
    """

    method, display, NEEDED = "string", "STRING", ("shifted_offset", "local_value")

    shifted_offset: int | None = None
    local_value: int | None = None
    attention_factor: float = STRING_ATTENTION_FACTOR

    def _settle(self, c: int) -> None:
        self._default("shifted_offset", max(1, int(0.33 * c)))
        self._default("local_value", min(128, check_int("shifted_offset", self.shifted_offset, 1) // 2))
        self.spec()
        self._check_below("shifted_offset", c)

    @property
    def reach(self) -> int:
        """``c + S - W``: the length whose largest shifted distance is ``c - 1``."""
        return self.trained_length + self.shifted_offset - self.local_value

    def spec(self) -> StringSpec:
        return StringSpec(self.shifted_offset, self.local_value, self.attention_factor)



    @classmethod
    def _check_alone(cls, settings):
        local = settings.get("local_value", 0)
        offset = settings.get("shifted_offset")
        if offset is None:  # the smallest offset a valid local_value allows
            offset = local if int_problem(local) is None else 1
        cls._spec_alone({**settings, "shifted_offset": offset, "local_value": local})

    @classmethod
    def _spec_alone(cls, settings):
        return StringSpec(settings["shifted_offset"], settings["local_value"],
                          settings.get("attention_factor", STRING_ATTENTION_FACTOR))


@dataclass(frozen=True)
class SinksConfig(_FromTrainedLength):
    """Attention sinks with LM-Infinite's Lambda-shaped mask and distance limit (Han et al., NAACL 2024,
    arXiv 2308.16137; the sinks of StreamingLLM, Xiao et al., ICLR 2024, arXiv 2309.17453).

    A query sees the first ``n_sink`` tokens and its last ``window`` keys; a sink farther than
    ``distance_limit`` is seen at that distance. ``window`` and ``distance_limit`` at most the trained
    length, so no relative position exceeds it. Rule: ``attention.specs.SinksSpec``.
    """

    method, display, NEEDED = "sinks", "sinks", ("window", "distance_limit")

    n_sink: int | None = None
    window: int | None = None
    distance_limit: int | None = None

    def _settle(self, c: int) -> None:
        self._default("n_sink", min(100, max(1, c // 16)))
        for name in ("window", "distance_limit"):
            self._default(name, c)
        self.spec()
        for name in ("window", "distance_limit"):
            if getattr(self, name) > c:
                raise ValueError(f"{name} must be at most the trained length {c}, got {getattr(self, name)}")

    @property
    def reach(self) -> None:
        """None: no relative position exceeds the window or the distance limit, at any length."""
        return None

    def spec(self) -> SinksSpec:
        return SinksSpec(self.n_sink, self.window, self.distance_limit)

    @classmethod
    def _check_alone(cls, settings):
        cls._spec_alone({"window": 1, "distance_limit": 1, **settings})

    @classmethod
    def _spec_alone(cls, settings):
        return SinksSpec(settings.get("n_sink", 100), settings["window"], settings["distance_limit"])


#: The registry: method name -> its config class (the method's spec comes from ``config.spec()``).
CONFIGS = {
    "dca": DCAConfig,
    "self_extend": SelfExtendConfig,
    "rerope": ReRoPEConfig,
    "string": StringConfig,
    "sinks": SinksConfig,
}
METHODS = tuple(CONFIGS)
NON_DCA_CONFIGS = {name: cls for name, cls in CONFIGS.items() if name != "dca"}  # kept for callers


def check_method(method) -> str:
    if method not in CONFIGS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def config_class(method):
    return CONFIGS[check_method(method)]


def check_settings(method: str, settings: dict) -> None:
    """Check what can be checked of ``method``'s settings before the model, and so its trained length, is
    known: the names and each value's own range (the rest when the config is built)."""
    config_class(method).check_settings(settings)


def make_config(method: str, trained_length: int, settings: dict):
    """The validated config of ``method`` for a model trained on ``trained_length`` tokens."""
    cls = config_class(method)
    if cls is DCAConfig:
        cls.check_settings(settings)
        return DCAConfig.from_settings(**{"trained_length": trained_length, **settings})
    return cls.build(trained_length, settings)


def config_to_dict(config) -> dict:
    return config.to_dict()


def spec_for(method: str, **settings):
    """The :class:`PiecewiseSpec` of ``method`` from explicit settings (``trained_length`` or, for ``dca``,
    ``pretraining_length`` gives the defaults; without it the method's geometry must be given in full,
    and ReRoPE's log-n scaling, which needs the trained length, is left out)."""
    cls = config_class(method)
    if cls is DCAConfig:
        cls.check_settings(settings)
        return DCAConfig.from_settings(**settings).spec()
    settings = dict(settings)
    trained = settings.pop("trained_length", None)
    if trained is not None:
        return cls.build(trained, settings).spec()
    return cls.explicit_spec(settings)


__all__ = [
    "CONFIGS",
    "DCAConfig",
    "METHODS",
    "ReRoPEConfig",
    "STRING_ATTENTION_FACTOR",
    "SelfExtendConfig",
    "SinksConfig",
    "StringConfig",
    "check_method",
    "check_settings",
    "config_class",
    "make_config",
    "spec_for",
]
