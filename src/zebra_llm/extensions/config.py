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
==============  =====================  ==========================================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..attention.specs import DCASpec, ReRoPESpec, SelfExtendSpec, StringSpec

STRING_ATTENTION_FACTOR = 0.1 * math.log(2) + 1


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_known(method: str, cls, settings: dict, extra: tuple[str, ...] = ()) -> None:
    known = {f.name for f in fields(cls) if f.name != "trained_length"} | set(extra)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown {method} setting(s) {unknown}; allowed: {sorted(known)}")


# The three configs below share a shape (trained length, defaults derived from it, the spec's checks):
# each lists its method's own settings and the source of each default, which a base class would hide.
@dataclass(frozen=True)
class SelfExtendConfig:
    """SelfExtend (Jin et al., ICML 2024, arXiv 2401.01325).

    ``group_size`` G and ``neighbor_window`` W: distances below W are kept, larger ones
    are grouped by G. The largest relative position of n tokens is about
    ``(n - W) / G + W``, so a model trained on ``c`` tokens reaches ``(c - W) * G + W``
    (:attr:`max_length`). ``scale_base``: optional log scaling of queries (off).
    """

    trained_length: int
    group_size: int = 8
    neighbor_window: int | None = None
    scale_base: int | None = None

    def __post_init__(self):
        c = _int("trained_length", self.trained_length, 2)
        if self.neighbor_window is None:
            object.__setattr__(self, "neighbor_window", max(1, min(1024, c // 4)))
        self.spec()  # validates group_size, neighbor_window, scale_base by name
        if self.neighbor_window >= c:
            raise ValueError(f"neighbor_window must be smaller than the trained length {c}, got {self.neighbor_window}")

    @property
    def max_length(self) -> int:
        return (self.trained_length - self.neighbor_window) * self.group_size + self.neighbor_window

    def spec(self) -> SelfExtendSpec:
        return SelfExtendSpec(self.group_size, self.neighbor_window, self.scale_base)


@dataclass(frozen=True)
class ReRoPEConfig:
    """ReRoPE and leaky ReRoPE (Su, 2023, github.com/bojone/rerope).

    ``window`` w: distances below w are kept, larger ones become w (or, with ``leak`` k,
    ``w + (d - w) / k``). ``logn``: the official log-n query scaling with the trained length.
    """

    trained_length: int
    window: int | None = None
    leak: float | None = None
    logn: bool = True

    def __post_init__(self):
        c = _int("trained_length", self.trained_length, 2)
        if self.window is None:
            object.__setattr__(self, "window", max(1, c // 8))
        _bool("logn", self.logn)
        self.spec()
        if self.window >= c:
            raise ValueError(f"window must be smaller than the trained length {c}, got {self.window}")

    def spec(self) -> ReRoPESpec:
        return ReRoPESpec(self.window, self.leak, self.trained_length if self.logn else None)


@dataclass(frozen=True)
class StringConfig:
    """STRING (An et al., 2024, arXiv 2410.18745, github.com/HKUNLP/STRING).

    Distances of at least ``shifted_offset`` S are shifted down to ``d - S + local_value``,
    so the least-trained S positions are never used; ``attention_factor`` multiplies
    every logit by its square, as the official code does.
    """

    trained_length: int
    shifted_offset: int | None = None
    local_value: int | None = None
    attention_factor: float = STRING_ATTENTION_FACTOR

    def __post_init__(self):
        c = _int("trained_length", self.trained_length, 2)
        if self.shifted_offset is None:
            object.__setattr__(self, "shifted_offset", max(1, int(0.33 * c)))
        _int("shifted_offset", self.shifted_offset, 1)
        if self.local_value is None:
            object.__setattr__(self, "local_value", min(128, self.shifted_offset // 2))
        self.spec()
        if self.shifted_offset >= c:
            raise ValueError(f"shifted_offset must be smaller than the trained length {c}, got {self.shifted_offset}")

    def spec(self) -> StringSpec:
        return StringSpec(self.shifted_offset, self.local_value, self.attention_factor)


NON_DCA_CONFIGS = {"self_extend": SelfExtendConfig, "rerope": ReRoPEConfig, "string": StringConfig}
DCA_SETTINGS = ("pretraining_length", "chunk_size", "temperature", "temperature_length", "preset", "trained_length")
METHODS = ("dca", "self_extend", "rerope", "string")


def check_method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


def check_settings(method: str, settings: dict) -> None:
    """Check what can be checked of ``method``'s settings (not ``dca``: ``DCAConfig.check_settings``)
    before the model, and so its trained length, is known: the names and each value's own range. The
    checks against the trained length follow in :func:`make_config`. So a bad option fails before a
    model is loaded, with the same message."""
    cls = NON_DCA_CONFIGS[check_method(method)]
    _check_known(method, cls, settings)
    if method == "self_extend":
        # the spec checks each value; a missing neighbor_window gets its smallest valid value
        SelfExtendSpec(settings.get("group_size", 8), settings.get("neighbor_window", 1), settings.get("scale_base"))
    elif method == "rerope":
        _bool("logn", settings.get("logn", True))
        ReRoPESpec(settings.get("window", 1), settings.get("leak"))
    else:
        local = settings.get("local_value", 0)
        offset = settings.get("shifted_offset")
        if offset is None:  # the smallest offset a valid local_value allows
            offset = local if isinstance(local, int) and not isinstance(local, bool) and local >= 1 else 1
        StringSpec(offset, local, settings.get("attention_factor", STRING_ATTENTION_FACTOR))


def make_config(method: str, trained_length: int, settings: dict):
    """The validated config of ``method`` (not ``dca``) for a model trained on ``trained_length`` tokens."""
    cls = NON_DCA_CONFIGS[check_method(method)]
    _check_known(method, cls, settings)
    return cls(trained_length=trained_length, **settings)


def config_to_dict(config) -> dict:
    return asdict(config)


def spec_for(method: str, **settings):
    """The :class:`PiecewiseSpec` of ``method`` from explicit settings (``trained_length`` or
    ``pretraining_length`` gives the defaults; without it the method's geometry must be given in
    full, and ReRoPE's log-n scaling, which needs the trained length, is left out)."""
    check_method(method)
    if method == "dca":
        from ..dca import DCAConfig

        unknown = sorted(set(settings) - set(DCA_SETTINGS))
        if unknown:
            raise ValueError(f"unknown dca setting(s) {unknown}; allowed: {sorted(DCA_SETTINGS)}")
        cfg = DCAConfig.from_settings(**settings)
        return DCASpec(cfg.chunk_size, cfg.pretraining_length, cfg.temperature_length if cfg.temperature else None)
    settings = dict(settings)
    trained = settings.pop("trained_length", None)
    if trained is not None:
        return make_config(method, trained, settings).spec()
    # Without the trained length the geometry must be given in full; the rule itself does not
    # depend on the trained length (only the defaults, the range checks against it and ReRoPE's
    # log-n scaling do).
    cls = NON_DCA_CONFIGS[method]
    _check_known(method, cls, settings)
    needed = {"self_extend": ("neighbor_window",), "rerope": ("window",), "string": ("shifted_offset", "local_value")}[method]
    missing = [name for name in needed if settings.get(name) is None]
    if missing:
        raise ValueError(f"{method}: give {', '.join(f'{m}=' for m in missing)} or trained_length= "
                         f"(the model's trained context, from which the defaults follow)")
    if method == "self_extend":
        return SelfExtendSpec(settings.get("group_size", 8), settings["neighbor_window"], settings.get("scale_base"))
    if method == "rerope":
        _bool("logn", settings.get("logn", True))
        # the log-n query scaling needs the trained length but leaves the positions unchanged
        return ReRoPESpec(settings["window"], settings.get("leak"), None)
    return StringSpec(settings["shifted_offset"], settings["local_value"],
                      settings.get("attention_factor", STRING_ATTENTION_FACTOR))


__all__ = [
    "METHODS",
    "ReRoPEConfig",
    "STRING_ATTENTION_FACTOR",
    "SelfExtendConfig",
    "StringConfig",
    "check_method",
    "check_settings",
    "make_config",
    "spec_for",
]
