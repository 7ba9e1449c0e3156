"""``ZebraLayout``: Zebra's layer settings in one record, with their defaults, their one validator and the rule
that turns them into per-layer attention kinds.

Zebra (Song et al., 2023, arXiv 2312.08618) comes in groups of ``L`` layers: the first of each group (layers
0, L, 2L, ...) is global, the other ``L - 1`` see a sliding window. The settings that choose this are the
same wherever they are given -- ``ZebraConfig``, ``convert_to_zebra``, the presets, the training configs'
``model`` section, the ``zebra:`` eval method and the CLI flags -- and each of those takes its names, its
defaults and its checks from here:

=====================  ==========  ================================================================
field                  default     meaning
=====================  ==========  ================================================================
``attention``          ``group``   ``group`` (the paper's design), or ``global`` / ``local`` /
                                   ``global_approx`` for every layer
``layer_group_size``   4           the group length ``L`` of ``group``
``window``             512         keys a local query sees, itself included
``approx_chunk_size``  None        chunk length of the ``global_approx`` summaries (None: ``window``)
=====================  ==========  ================================================================
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field

from .._checks import check_int

# Canonical ``layer_types`` entries (transformers' names where it has one).
FULL, SLIDING, GLOBAL_APPROX = "full_attention", "sliding_attention", "global_approx"


def _group(n_layers: int, group_size: int) -> list[str]:
    # Zebra paper: the first layer of every group of L layers is global, the other L-1 local.
    return [FULL if i % group_size == 0 else SLIDING for i in range(n_layers)]


# ``attention=`` names -> builder(n_layers, layer_group_size) of the per-layer types.
ATTENTION_PATTERNS = {
    "group": _group,
    "global": lambda n, _: [FULL] * n,
    "local": lambda n, _: [SLIDING] * n,
    "global_approx": lambda n, _: [GLOBAL_APPROX] * n,
}

# The ``attention=`` names, in the order error messages and docs list them (defined here only).
ATTENTIONS: tuple[str, ...] = tuple(ATTENTION_PATTERNS)


class LayerSettingError(ValueError):
    """A Zebra layer setting is invalid: ``field`` names it, ``problem`` says what is allowed.

    Callers that take these settings under another name (``model.window`` in a training config,
    ``zebra:window=`` in an eval method) re-word the message with their own prefix.
    """

    def __init__(self, field: str, problem: str):
        super().__init__(f"ZebraConfig.{field} {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class ZebraLayout:
    """Zebra's layer settings (see the module's table), checked at construction by
    :func:`check_layer_settings`; ``help`` in each field's metadata is its one-line description (the CLI
    flags are generated from these fields)."""

    attention: str = field(default="group", metadata={"help": "per-layer attention: " + " | ".join(ATTENTIONS)})
    layer_group_size: int = field(default=4, metadata={"help": "L: layers 0, L, 2L, ... are global with attention=group"})
    window: int = field(default=512, metadata={"help": "keys a local query sees, itself included"})
    approx_chunk_size: int | None = field(
        default=None, metadata={"help": "chunk length of global_approx layers", "none": "the window"})

    def __post_init__(self):
        check_layer_settings(**self.settings(), required=REQUIRED)

    def settings(self) -> dict:
        """The four settings by name (``approx_chunk_size`` as given, None for the window)."""
        return {name: getattr(self, name) for name in LAYER_SETTINGS}

    @property
    def chunk_size(self) -> int:
        """The ``global_approx`` chunk length in effect: ``approx_chunk_size``, or ``window`` when it is None."""
        return self.window if self.approx_chunk_size is None else self.approx_chunk_size

    def layer_types(self, n_layers: int) -> list[str]:
        """One canonical ``layer_types`` entry per layer: the rule of ``attention`` with ``layer_group_size``."""
        check_int("num_hidden_layers", n_layers, error=LayerSettingError)
        return ATTENTION_PATTERNS[self.attention](n_layers, self.layer_group_size)

    @classmethod
    def from_given(cls, **settings) -> ZebraLayout:
        """The layout of the settings given, the defaults for those left out or None."""
        return cls(**given(settings))


#: The layer settings by name, in the order of the record (defined here only).
LAYER_SETTINGS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ZebraLayout))
#: The settings a layout cannot leave unset (None means "the window" for ``approx_chunk_size`` only).
REQUIRED: tuple[str, ...] = ("attention", "layer_group_size", "window")
#: Each setting's type, for tools that build typed options from the record (the CLI flags).
SETTING_TYPES: dict[str, type] = typing.get_type_hints(ZebraLayout)


def given(settings: dict) -> dict:
    """The layer settings of ``settings`` that are given (not None); other keys are refused."""
    unknown = sorted(set(settings) - set(LAYER_SETTINGS))
    if unknown:
        raise TypeError(f"unknown Zebra layer setting(s) {unknown}; the settings are {', '.join(LAYER_SETTINGS)}")
    return {name: value for name, value in settings.items() if value is not None}


def settings_of(obj) -> dict:
    """The layer settings an object holds under these names (a training config section, eval options)."""
    return {name: getattr(obj, name) for name in LAYER_SETTINGS}


def split_settings(kwargs: dict) -> tuple[dict, dict]:
    """``(the layer settings, the rest)`` of a function's keyword arguments."""
    layout = {k: v for k, v in kwargs.items() if k in LAYER_SETTINGS}
    return layout, {k: v for k, v in kwargs.items() if k not in LAYER_SETTINGS}


def layout_keywords(function):
    """Show the layer settings in ``function``'s signature (``help()``, ``inspect.signature``): keyword-only
    parameters with :class:`ZebraLayout`'s defaults and types, before its ``**kwargs``, which receives them
    (the function splits them off with :func:`split_settings`). The function itself is unchanged."""
    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    at = next(i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD)
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(DEFAULT_LAYOUT, name),
                               annotation=tp) for name, tp in SETTING_TYPES.items()]
    function.__signature__ = signature.replace(parameters=params[:at] + added + params[at:])
    return function


def check_layer_settings(*, required: tuple[str, ...] = (), **settings) -> None:
    """Validate Zebra's layer settings, the one check of them (:class:`ZebraLayout` runs it at construction;
    callers that have only some settings, before any config or model exists, run it on those). None: not
    given, allowed unless the name is in ``required``. Raises :class:`LayerSettingError` for the first bad
    one, in the record's order."""
    given(settings)  # names only
    for name in LAYER_SETTINGS:
        value = settings.get(name)
        if value is None:
            if name in required:
                raise LayerSettingError(name, "must be given, got None")
        elif name == "attention":
            if not isinstance(value, str) or value not in ATTENTION_PATTERNS:
                raise LayerSettingError("attention", f"must be one of {', '.join(ATTENTIONS)}, got {value!r}")
        else:
            check_int(name, value, error=LayerSettingError)


#: The defaults, as a record: ``DEFAULT_LAYOUT.window`` is the default window wherever one is written.
DEFAULT_LAYOUT = ZebraLayout()

__all__ = [
    "ATTENTIONS",
    "ATTENTION_PATTERNS",
    "DEFAULT_LAYOUT",
    "FULL",
    "GLOBAL_APPROX",
    "LAYER_SETTINGS",
    "LayerSettingError",
    "SETTING_TYPES",
    "SLIDING",
    "ZebraLayout",
    "check_layer_settings",
    "given",
    "layout_keywords",
    "settings_of",
    "split_settings",
]
