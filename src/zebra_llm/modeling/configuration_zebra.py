"""``ZebraConfig``: a Llama-architecture config whose attention is per-layer data.

Zebra (Song et al., 2023, arXiv 2312.08618, the grouped local-global design) keeps Llama's blocks
(RMSNorm, SwiGLU MLP, RoPE, grouped-query attention) and changes only which
keys each layer's queries see. That choice lives in ``layer_types``, one entry
per layer, validated here once; the model never derives it from
``layer_idx % L``.

Layer type names follow transformers where it has one, so transformers'
``DynamicCache(config=...)`` and mask functions understand them:

==================  =====================  ==========================================
``layer_types``     attention (module)     what a query at position ``i`` sees
==================  =====================  ==========================================
full_attention      ``global``             keys ``j <= i``
sliding_attention   ``local``              keys ``i - window < j <= i``
global_approx       ``global_approx``      its window plus mean summaries of the
                                           ``approx_chunk_size``-token chunks before it
==================  =====================  ==========================================

``layer_types`` also accepts the short names ``global``, ``local`` and
``global_approx``. The shorthand ``attention=`` builds it:
``attention="group", layer_group_size=L`` makes layers 0, L, 2L, ... global and
the others local (the paper's design); ``"global" | "local" | "global_approx"``
make every layer that kind.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, RopeParameters

from .._checks import check_int, int_problem

from .layout import (
    ATTENTION_PATTERNS,
    ATTENTIONS,
    DEFAULT_LAYOUT,
    FULL,
    GLOBAL_APPROX,
    LAYER_SETTINGS,
    SLIDING,
    LayerSettingError,
    ZebraLayout,
    check_layer_settings,
)

# The attention variant each canonical ``layer_types`` entry runs.
ATTENTION_OF_LAYER_TYPE = {FULL: "global", SLIDING: "local", GLOBAL_APPROX: "global_approx"}
LAYER_TYPE_ALIASES = {
    "global": FULL,
    "local": SLIDING,
    "global_approx": GLOBAL_APPROX,
    FULL: FULL,
    SLIDING: SLIDING,
}

_UNSET = object()


@strict
class ZebraConfig(PreTrainedConfig):
    r"""Configuration of a Zebra model (Llama blocks, per-layer attention).

    Beyond Llama's fields (the layer settings -- ``attention``, ``layer_group_size``, ``window``,
    ``approx_chunk_size`` -- are :class:`~zebra_llm.modeling.layout.ZebraLayout`'s, with its defaults
    and its check):

    * ``layer_types``: one of ``full_attention`` / ``sliding_attention`` /
      ``global_approx`` per layer (aliases ``global`` / ``local``). Built from
      ``attention`` when not given.
    * ``attention`` (init only): ``"group"`` (default), ``"global"``, ``"local"``
      or ``"global_approx"``; ``layer_group_size`` (init only) is
      the group length ``L`` of ``"group"``. Give either these or
      ``layer_types``. After construction ``config.attention`` and
      ``config.layer_group_size`` describe the pattern ``layer_types`` holds.
    * ``window``: keys a local query sees, itself included (transformers'
      ``sliding_window``, readable under that name too).
    * ``approx_chunk_size``: chunk length of the ``global_approx`` summaries
      (default: ``window``).
    * ``attention_bias``: bias on the q, k, v projections and, unless
      ``attention_out_bias`` says otherwise, on o (Llama's meaning); Qwen2 is
      ``attention_bias=True, attention_out_bias=False``.
    * ``qk_norm``: RMSNorm over ``head_dim`` on queries and keys before RoPE
      (Qwen3).

    Example::

        >>> cfg = ZebraConfig.from_preset("debug")
        >>> cfg.layer_types
        ['full_attention', 'sliding_attention', 'full_attention', 'sliding_attention']
        >>> ZebraConfig(num_hidden_layers=8, attention="group", layer_group_size=4, window=512).attention
        'group'
    """

    model_type = "zebra"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {"sliding_window": "window"}
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_out_bias: bool | None = None
    mlp_bias: bool = False
    qk_norm: bool = False
    attention_dropout: float | int = 0.0
    layer_types: list[str] | None = None
    window: int = DEFAULT_LAYOUT.window  # the layer settings' defaults are ZebraLayout's (modeling/layout.py)
    approx_chunk_size: int | None = DEFAULT_LAYOUT.approx_chunk_size

    def __post_init__(self, **kwargs):
        attention = kwargs.pop("attention", None)
        group_size = kwargs.pop("layer_group_size", None)
        sliding_window = kwargs.pop("sliding_window", _UNSET)
        if sliding_window is not _UNSET and sliding_window is not None:
            self.window = sliding_window
        if self.head_dim is None and _is_positive_int(self.hidden_size) and _is_positive_int(self.num_attention_heads):
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.attention_out_bias is None:
            self.attention_out_bias = self.attention_bias
        if self.approx_chunk_size is None:
            self.approx_chunk_size = self.window
        self.layer_types = _resolve_layer_types(self.layer_types, attention, group_size, self.num_hidden_layers)
        super().__post_init__(**kwargs)
        self.check()

    # -- validation ---------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``ValueError`` naming the first invalid field (also run by ``ZebraModel``)."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "window",
            "approx_chunk_size",
        ):
            check_int(name, getattr(self, name), error=LayerSettingError)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ZebraConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}) (grouped-query attention)"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"ZebraConfig.hidden_act must be one of transformers' activations, got {self.hidden_act!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise ValueError(f"ZebraConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not (0 <= self.attention_dropout < 1):
            raise ValueError(f"ZebraConfig.attention_dropout must be in [0, 1), got {self.attention_dropout!r}")
        _check_layer_types(self.layer_types, self.num_hidden_layers)
        _check_rope(self.rope_parameters)

    def validate_layer_type(self):
        """transformers' class validator (run after init and at save): our names, our checks."""
        _check_layer_types(self.layer_types, self.num_hidden_layers)

    # -- descriptions of the pattern ------------------------------------------------------------------------

    @property
    def attention_types(self) -> list[str]:
        """Per layer: ``"global"``, ``"local"`` or ``"global_approx"``."""
        return [ATTENTION_OF_LAYER_TYPE[t] for t in self.layer_types]

    @property
    def attention(self) -> str:
        """``"global"``, ``"local"``, ``"global_approx"`` when every layer is that kind, ``"group"`` when
        ``layer_types`` is the Zebra pattern for some group size, else ``"custom"``."""
        kinds = set(self.layer_types)
        if len(kinds) == 1:
            return ATTENTION_OF_LAYER_TYPE[kinds.pop()]
        return "group" if self.layer_group_size is not None else "custom"

    @property
    def layer_group_size(self) -> int | None:
        """The smallest ``L`` for which ``attention="group"`` gives ``layer_types`` (None if none does)."""
        n = len(self.layer_types)
        for size in range(1, n + 1):
            if ATTENTION_PATTERNS["group"](n, size) == self.layer_types:
                return size
        return None

    # -- presets --------------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ZebraConfig:
        """A named configuration (see :func:`zebra_llm.modeling.list_presets`), with fields overridden.

        ``layer_types`` in ``overrides`` replaces the preset's ``attention`` / ``layer_group_size``.
        """
        from .presets import preset_kwargs

        kwargs = preset_kwargs(name)
        if "layer_types" in overrides:
            kwargs.pop("attention", None)
            kwargs.pop("layer_group_size", None)
        kwargs.update(overrides)
        return cls(**kwargs)


def _is_positive_int(value) -> bool:
    return int_problem(value) is None


def _resolve_layer_types(layer_types, attention, group_size, n_layers) -> list[str]:
    if layer_types is not None:
        if attention is not None:
            raise ValueError(
                "ZebraConfig: give either layer_types or attention (with layer_group_size), not both; "
                f"got layer_types={layer_types!r} and attention={attention!r}"
            )
        if not isinstance(layer_types, (list, tuple)):
            raise ValueError(f"ZebraConfig.layer_types must be a list of layer type names, got {layer_types!r}")
        unknown = [t for t in layer_types if t not in LAYER_TYPE_ALIASES]
        if unknown:
            raise ValueError(
                f"ZebraConfig.layer_types has unknown entries {unknown}; allowed: {sorted(LAYER_TYPE_ALIASES)}"
            )
        return [LAYER_TYPE_ALIASES[t] for t in layer_types]
    return ZebraLayout.from_given(attention=attention, layer_group_size=group_size).layer_types(n_layers)


def _check_layer_types(layer_types, n_layers) -> None:
    if not isinstance(layer_types, list) or len(layer_types) != n_layers:
        got = len(layer_types) if isinstance(layer_types, list) else type(layer_types).__name__
        raise ValueError(
            f"ZebraConfig.layer_types must have one entry per layer (num_hidden_layers={n_layers}), got {got}"
        )
    unknown = [t for t in layer_types if t not in ATTENTION_OF_LAYER_TYPE]
    if unknown:
        raise ValueError(f"ZebraConfig.layer_types has unknown entries {unknown}; allowed: {sorted(LAYER_TYPE_ALIASES)}")


def _check_rope(rope_parameters) -> None:
    if not isinstance(rope_parameters, dict) or "rope_theta" not in rope_parameters:
        raise ValueError(f"ZebraConfig.rope_parameters must be a dict with rope_theta, got {rope_parameters!r}")
    rope_type = rope_parameters.get("rope_type", "default")
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(
            f"ZebraConfig.rope_parameters['rope_type'] must be 'default' or one of {sorted(ROPE_INIT_FUNCTIONS)}, "
            f"got {rope_type!r}"
        )
    factor = rope_parameters.get("partial_rotary_factor", 1.0)
    if not math.isclose(float(factor), 1.0):
        raise ValueError(
            "ZebraConfig.rope_parameters['partial_rotary_factor'] must be 1.0: Llama-style blocks rotate the whole "
            f"head, got {factor!r}"
        )


__all__ = [
    "ZebraConfig",
    "ATTENTION_OF_LAYER_TYPE",
    "ATTENTION_PATTERNS",
    "ATTENTIONS",
    "LAYER_SETTINGS",
    "LAYER_TYPE_ALIASES",
    "LayerSettingError",
    "check_layer_settings",
]
