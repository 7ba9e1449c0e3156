"""Turn a Llama-family checkpoint into a Zebra model, weights unchanged.

This is the starting point of the paper's Long Context Adaptation Training
(Song et al., 2023, arXiv 2312.08618): take a pretrained RoPE model, make some of its
layers local, and continue training on long sequences. Every Llama / Mistral /
Ministral / Qwen2 / Qwen3 weight has the same name and shape in a Zebra model
(``ZebraConfig`` carries each family's biases and Qwen3's q/k norms), so the
conversion is a new config plus the same tensors. With ``attention="global"``
the converted model computes exactly what the original did (up to kernel
rounding), unless the original itself used sliding windows (Mistral v0.1,
Ministral, Qwen with ``use_sliding_window``), which is logged.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch

from ..io import atomic_directory
from .configuration_zebra import SLIDING, ZebraConfig
from .layout import LayerSettingError, ZebraLayout, layout_keywords, split_settings
from .modeling_zebra import ZebraForCausalLM, ZebraRotaryEmbedding

log = logging.getLogger(__name__)

# model_type -> which biases / norms the family's attention has.
FAMILIES = {
    "llama": lambda c: dict(
        attention_bias=bool(getattr(c, "attention_bias", False)), mlp_bias=bool(getattr(c, "mlp_bias", False))
    ),
    "mistral": lambda c: dict(attention_bias=False),
    "ministral": lambda c: dict(attention_bias=False),
    # Qwen2: bias on q, k and v only.
    "qwen2": lambda c: dict(attention_bias=True, attention_out_bias=False),
    # Qwen3: optional bias on all four projections, RMSNorm on q and k per head.
    "qwen3": lambda c: dict(attention_bias=bool(getattr(c, "attention_bias", False)), qk_norm=True),
    "zebra": lambda c: dict(
        attention_bias=c.attention_bias,
        attention_out_bias=c.attention_out_bias,
        mlp_bias=c.mlp_bias,
        qk_norm=c.qk_norm,
    ),
}


def _layout_of(settings: dict, layer_types) -> ZebraLayout:
    """The layer settings of a conversion, checked before any weights are loaded (ZebraLayout's check);
    ``attention`` is left out when ``layer_types`` gives the pattern."""
    if layer_types is not None:
        settings = {k: v for k, v in settings.items() if k != "attention"}
    try:
        return ZebraLayout(**settings)
    except LayerSettingError as e:
        raise ValueError(f"convert_to_zebra: {e.field} {e.problem}") from None


# zebra_config_from, convert_to_zebra and convert_checkpoint take the layer settings (attention,
# layer_group_size, window, approx_chunk_size) as keywords; @layout_keywords shows them, with ZebraLayout's
# defaults, in their signatures (help(), inspect), and split_settings takes them apart from the rest.
@layout_keywords
def zebra_config_from(source_config, *, layer_types: list[str] | None = None, **settings) -> ZebraConfig:
    """The ``ZebraConfig`` of a Llama-family config: same shapes, norms, RoPE, biases, special tokens;
    attention as asked (the layer settings of :class:`~zebra_llm.modeling.layout.ZebraLayout`;
    ``layer_types`` overrides ``attention``/``layer_group_size``); any other ``ZebraConfig`` field in
    ``settings`` (e.g. a new ``rope_parameters`` or ``max_position_embeddings`` for long context
    adaptation) replaces the source's value."""
    layout, overrides = split_settings(settings)
    return _config_from(source_config, _layout_of(layout, layer_types), layer_types, overrides)


def _config_from(source_config, layout: ZebraLayout, layer_types, config_overrides: dict) -> ZebraConfig:
    model_type = getattr(source_config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"convert_to_zebra: model type {model_type!r} is not supported; supported are {sorted(FAMILIES)} "
            "(dense decoder-only RoPE models with Llama blocks; mixture-of-experts and non-RoPE families are not)"
        )
    c = source_config
    if getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None):
        raise ValueError(f"convert_to_zebra: model type {model_type!r} with experts (MoE) is not supported")
    rope = copy.deepcopy(getattr(c, "rope_parameters", None))
    if not rope:
        raise ValueError(f"convert_to_zebra: model type {model_type!r} has no rope_parameters (RoPE is required)")
    pattern = {"layer_types": list(layer_types)} if layer_types is not None else {
        "attention": layout.attention,
        "layer_group_size": layout.layer_group_size,
    }
    kwargs = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        initializer_range=getattr(c, "initializer_range", 0.02),
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        rope_parameters=rope,
        attention_dropout=getattr(c, "attention_dropout", 0.0) or 0.0,
        bos_token_id=getattr(c, "bos_token_id", None),
        eos_token_id=getattr(c, "eos_token_id", None),
        pad_token_id=getattr(c, "pad_token_id", None),
        window=layout.window,
        approx_chunk_size=layout.approx_chunk_size,
        **FAMILIES[model_type](c),
        **pattern,
    )
    if getattr(c, "dtype", None) is not None:
        kwargs["dtype"] = c.dtype
    kwargs.update(config_overrides)
    config = ZebraConfig(**kwargs)
    _warn_if_source_slides(c, model_type)
    return config


def _warn_if_source_slides(c, model_type: str) -> None:
    if model_type == "zebra":
        return
    layer_types = getattr(c, "layer_types", None)
    window = getattr(c, "sliding_window", None)
    if window is None:
        return
    if layer_types is None:  # Mistral: sliding_window applies to every layer
        sliding = list(range(c.num_hidden_layers))
    else:
        sliding = [i for i, t in enumerate(layer_types) if t == SLIDING]
    if sliding:
        log.warning(
            "convert_to_zebra: the %s source uses sliding-window attention (window %d) on layers %s; the Zebra "
            "model uses the layer_types you asked for instead",
            model_type,
            window,
            sliding,
        )


def load_source(model_or_path, *, dtype: torch.dtype | str | None = None, strict: bool = True):
    """``(model, tokenizer_or_None)`` from a transformers model object or anything ``zebra_llm.loading.load_model``
    takes (``"smollm2"``, a directory, a ``.gguf`` file, a hub name); ``strict`` as for ``load_model``."""
    from transformers import PreTrainedModel

    if isinstance(model_or_path, PreTrainedModel):
        return model_or_path, None
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError(
            "convert_to_zebra: model_or_path must be a transformers model, a directory, a .gguf file, a hub name "
            f"or 'smollm2', got {type(model_or_path).__name__}"
        )
    from ..loading import ModelSource, load_model, parse_dtype

    dtype = torch.float32 if dtype is None else parse_dtype(dtype)
    source = ModelSource.parse(model_or_path)
    if source.kind == "directory" and not any((Path(source.location) / f).is_file() for f in _TOKENIZER_FILES):
        from ..loading import check_model_files, load_config, load_pretrained

        check_model_files(source.location)
        load_config(source.location)  # its sizes and architecture checked first
        # a bare checkpoint (weights and config, no tokenizer): convert the model alone
        model = load_pretrained(source.location, dtype=dtype, strict=strict)
        return model.eval(), None
    return load_model(model_or_path, dtype=dtype, strict=strict)


def check_output_path(source, output_dir: str | os.PathLike, *, overwrite: bool, what: str = "convert") -> None:
    """Refuse to write over the source, into it or over a directory holding it (always), and over an
    existing file or directory without ``overwrite`` -- before any weights are loaded."""
    out = Path(output_dir).expanduser().resolve()
    if isinstance(source, (str, os.PathLike)) and str(source) != "smollm2":
        src = Path(source).expanduser()
        if src.exists():
            src = src.resolve()
            if out == src or src in out.parents or out in src.parents:
                raise ValueError(
                    f"{what}: the output {output_dir} is the source {source}, inside it or contains it; "
                    f"write the {what}ed model somewhere else"
                )
    if os.path.lexists(out) and not overwrite:
        kind = "directory" if out.is_dir() else "file"
        raise FileExistsError(f"{what}: the output {output_dir} already exists (a {kind}); pass --overwrite "
                              "(overwrite=True) to replace it, or choose another path")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@layout_keywords
def convert_to_zebra(
    model_or_path,
    *,
    layer_types: list[str] | None = None,
    dtype: torch.dtype | str | None = None,
    **settings,
) -> ZebraForCausalLM:
    """A ``ZebraForCausalLM`` with the weights of a Llama / Mistral / Ministral / Qwen2 / Qwen3 checkpoint.

    Args:
        model_or_path: a transformers model object, a local directory, a hub name, ``"smollm2"`` or a
            ``.gguf`` file (strings load through ``zebra_llm.loading.load_model``).
        attention, layer_group_size, window, approx_chunk_size: the layer settings
            (:class:`~zebra_llm.modeling.layout.ZebraLayout`: ``attention="group"`` makes layers 0, L, 2L,
            ... global and the rest local, ``L = layer_group_size``; ``window``: keys a local query sees,
            itself included; ``approx_chunk_size``: chunk length of ``global_approx`` layers, default
            ``window``). Checked before any weights are loaded.
        layer_types: explicit per-layer types (overrides ``attention``).
        dtype: dtype to load a string source in (default float32); a model object keeps its own.
        settings: also other ``ZebraConfig`` fields to change, typically ``rope_parameters`` (a larger
            ``rope_theta`` or a scaling) and ``max_position_embeddings`` for long context adaptation.

    The weights are copied unchanged (a model object is left untouched: its tensors are cloned), tied
    embeddings stay tied, and the generation config is carried over.
    """
    from transformers import PreTrainedModel

    layout, overrides = split_settings(settings)
    layout = _layout_of(layout, layer_types)
    source, _ = load_source(model_or_path, dtype=dtype)
    config = _config_from(source.config, layout, layer_types, overrides)
    # A model the caller holds is left untouched; one loaded here just hands its tensors over.
    return _transplant(source, config, clone=isinstance(model_or_path, PreTrainedModel))


def _transplant(source, config: ZebraConfig, *, clone: bool) -> ZebraForCausalLM:
    state = source.state_dict()
    with torch.device("meta"):
        model = ZebraForCausalLM(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"convert_to_zebra: the {source.config.model_type} weights do not map onto a Zebra model "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); the checkpoint is not a plain Llama-family model"
        )
    if clone:
        state = {name: t.detach().clone() for name, t in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    device = model.model.embed_tokens.weight.device
    model.model.rotary_emb = ZebraRotaryEmbedding(config, device=device)  # non-persistent buffers: rebuild
    if getattr(source, "generation_config", None) is not None:
        model.generation_config = copy.deepcopy(source.generation_config)
    model.config._name_or_path = getattr(source.config, "_name_or_path", "")
    model.train(source.training)
    return model


@layout_keywords
def convert_checkpoint(
    source,
    output_dir: str | os.PathLike,
    *,
    layer_types: list[str] | None = None,
    dtype: torch.dtype | str | None = None,
    portable: bool = False,
    overwrite: bool = False,
    strict: bool = True,
    **settings,
) -> Path:
    """Convert ``source`` and save it (with its tokenizer, when there is one) to ``output_dir``, atomically.

    The layer settings and ``settings`` as for :func:`convert_to_zebra`. ``portable=True`` saves the
    stock-transformers form of :func:`zebra_llm.modeling.export_portable` (global and local layers only)
    instead of the native ``zebra`` form. An existing ``output_dir`` (a directory or a file) is replaced
    only with ``overwrite=True``; ``output_dir`` may never be the source directory, lie inside it, or
    contain it.
    """
    from transformers import PreTrainedModel

    layout, overrides = split_settings(settings)
    layout = _layout_of(layout, layer_types)
    check_output_path(source, output_dir, overwrite=overwrite)
    model, tokenizer = load_source(source, dtype=dtype, strict=strict)
    config = _config_from(model.config, layout, layer_types, overrides)
    zebra = _transplant(model, config, clone=isinstance(source, PreTrainedModel))
    del model
    if portable:
        from .export import export_portable

        return export_portable(zebra, output_dir, tokenizer=tokenizer, overwrite=True)  # checked above
    output_dir = Path(output_dir)
    with atomic_directory(output_dir) as tmp:
        zebra.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return output_dir


__all__ = ["FAMILIES", "convert_checkpoint", "convert_to_zebra", "load_source", "zebra_config_from"]
