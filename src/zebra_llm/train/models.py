"""Where the trained models come from, in one place: a Zebra preset or any
transformers config (pretraining), a Llama-family checkpoint converted to
Zebra with an optional RoPE change (LCAT), any causal LM with an optional
LoRA adapter (LIT)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..modeling.layout import LAYER_SETTINGS, given, settings_of

log = logging.getLogger(__name__)

# Zebra config fields a task may override, under their ZebraConfig names: the layer settings.
ZEBRA_FIELDS = LAYER_SETTINGS


def load_tokenizer(spec: str):
    """The tokenizer of a model spec (``smollm2``, a directory, a ``.gguf`` file
    or a hub name), with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    from ..loading import ModelSource, smollm2_dir

    source = ModelSource.parse(spec)
    if source.kind == "gguf":
        path = Path(source.location)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        location = str(smollm2_dir()) if source.kind == "embedded" else source.location
        tok = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _zebra():
    try:
        import zebra_llm

        return zebra_llm.ZebraConfig
    except (ImportError, AttributeError):
        raise ValueError(
            "model.preset needs zebra_llm.ZebraConfig (the Zebra model), which this installation lacks; "
            "give model.config (a transformers config file) instead"
        ) from None


def _read_config_dict(path: Path) -> dict[str, Any]:
    from ..io import check_regular_file

    if path.is_dir():
        path = path / "config.json"
    check_regular_file(path, "model.config")
    if path.suffix.lower() in (".yaml", ".yml", ".toml", ".json"):
        from .config import read_config_file

        try:
            data = read_config_file(path)
        except ValueError as e:
            raise ValueError(f"model.{e}") from None  # "config: <path> ..." -> "model.config: <path> ..."
    else:
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"model.config: {path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"model.config: {path} must hold a JSON object")
    if "model_type" not in data:
        raise ValueError(f"model.config: {path} has no model_type (e.g. llama, mistral, zebra)")
    return data


def resolve_pretrain_config(opts):
    """The transformers config of the model to pretrain (no weights built)."""
    zebra_kwargs = given(settings_of(opts))
    if opts.config is not None:
        from transformers import AutoConfig

        data = _read_config_dict(Path(opts.config).expanduser())
        data.update(opts.overrides)
        model_type = data.pop("model_type")
        if zebra_kwargs and model_type != "zebra":
            raise ValueError(
                f"model.{next(iter(zebra_kwargs))} applies to Zebra models; model.config is a {model_type!r} config"
            )
        data.update(zebra_kwargs)
        if model_type == "zebra":
            _zebra()  # registers the zebra model type with AutoConfig
        try:
            return AutoConfig.for_model(model_type, **data)
        except ValueError as e:
            raise ValueError(f"model.config: {e}") from None
    config_cls = _zebra()
    try:
        return config_cls.from_preset(opts.preset, **zebra_kwargs, **opts.overrides)
    except (KeyError, ValueError) as e:
        msg = str(e.args[0] if e.args else e)
        if msg.startswith("model."):
            raise ValueError(msg) from None
        # an unknown name, or a field the preset's overrides made invalid
        where = "model.preset" if "preset" in msg else "model (preset overrides)"
        raise ValueError(f"{where}: {msg}") from None


def attention_window(config) -> int | None:
    """The sliding window of a config whose layers include local ones, else None."""
    from ..modeling.configuration_zebra import ATTENTION_OF_LAYER_TYPE

    types = list(getattr(config, "layer_types", None) or [])
    # layer types with a window (Zebra's, which include transformers' sliding_attention)
    local = {t for t, kind in ATTENTION_OF_LAYER_TYPE.items() if kind != "global"}
    if types and not any(t in local for t in types):
        return None
    for name in ("window", "sliding_window"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    return None


def build_from_config(config, *, attn_implementation: str | None = None) -> torch.nn.Module:
    """A freshly initialised float32 causal LM (seed the RNG first: every process
    must build the same weights)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_config(config, **kwargs)


def apply_rope_change(config, *, rope_theta=None, rope_scaling=None, max_position_embeddings=None, seq_len=None):
    """Long-context adaptation's usual RoPE change on a Llama-family config, in
    place: a new base (``rope_theta``) and/or a scaling (transformers'
    ``rope_parameters`` types), and a ``max_position_embeddings`` that covers
    the training length."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        raise ValueError(f"model.rope_*: the {config.model_type!r} config has no rope_parameters to change")
    original_max = int(getattr(config, "max_position_embeddings", 0) or 0)
    if rope_theta is not None:
        params["rope_theta"] = float(rope_theta)
    if rope_scaling is not None:
        params.update(rope_scaling)
        if params.get("rope_type") in ("yarn", "longrope", "llama3", "dynamic") and original_max:
            params.setdefault("original_max_position_embeddings", original_max)
    config.rope_parameters = params
    target = max_position_embeddings or max(original_max, seq_len or 0)
    if target:
        config.max_position_embeddings = int(target)
    return config


def build_lcat_model(opts, *, seq_len: int) -> torch.nn.Module:
    """Load the source checkpoint, change its RoPE if asked, convert it to Zebra."""
    from ..loading import load_model

    try:
        from zebra_llm import convert_to_zebra
    except ImportError:
        raise ValueError("LCAT needs zebra_llm.convert_to_zebra (the Zebra model), which this installation lacks") from None
    model, _ = load_model(opts.source, dtype=torch.float32)
    if opts.rope_theta is not None or opts.rope_scaling is not None or opts.max_position_embeddings is not None:
        apply_rope_change(
            model.config,
            rope_theta=opts.rope_theta,
            rope_scaling=opts.rope_scaling,
            max_position_embeddings=opts.max_position_embeddings,
            seq_len=seq_len,
        )
    return convert_to_zebra(model, **given(settings_of(opts)))


def build_lit_model(opts) -> torch.nn.Module:
    """Load the model to instruction-tune; wrap it in a LoRA adapter if asked."""
    from ..loading import load_model

    model, _ = load_model(opts.source, dtype=torch.float32, attn_implementation=opts.attn_implementation)
    if opts.lora.enabled:
        model = add_lora(model, opts.lora)
    return model


def add_lora(model, lora) -> torch.nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError(
            "model.lora.enabled needs the peft package: pip install 'zebra-llm[lora]'"
        ) from None

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ValueError(f"model.lora: {e}") from None
