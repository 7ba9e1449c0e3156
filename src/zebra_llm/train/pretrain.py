"""Pretraining from scratch (Zebra paper section 3): a Zebra model (or an
all-global / all-local / global-approximation one) from a preset, or any
transformers causal LM from its config, on packed documents."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..data.packing import PACKED_ATTENTION_IMPLEMENTATIONS, pack_documents, padding_fraction
from .batches import Stage
from .config import DataOptions, PretrainConfig
from .engine import StepCallback, TrainResult
from .models import attention_window, build_from_config, load_tokenizer, resolve_pretrain_config
from .runner import check_data_source, check_run, coerce_config, run_training

log = logging.getLogger(__name__)


def check_seq_len_vs_window(data: DataOptions, window: int | None) -> None:
    if window is not None and data.seq_len <= window:
        raise ValueError(
            f"data.seq_len ({data.seq_len}) must be greater than the attention window ({window}): at or below it "
            "the local layers see the whole sequence and the model trains as an all-global one"
        )


def check_tokenizer_spec(spec: str) -> None:
    from ..loading import ModelSource

    try:
        ModelSource.parse(spec)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"model.tokenizer: {e}") from None


def check(cfg: PretrainConfig):
    """Every check that can fail before training starts; returns the model config."""
    check_run(cfg)
    cfg.data.stage_lengths(cfg.train.steps)
    check_data_source(cfg.data.source)
    check_tokenizer_spec(cfg.model.tokenizer)
    config = resolve_pretrain_config(cfg.model)
    check_seq_len_vs_window(cfg.data, attention_window(config))
    return config


def build_text_stages(data: DataOptions, steps: int, tokenizer) -> list[Stage]:
    """Documents loaded, tokenized once (cached) and packed for every stage of the curriculum."""
    from ..data import load_documents, tokenize_documents

    docs = load_documents(data.source, field=data.field, split=data.split, limit=data.limit, encoding=data.encoding)
    ids = tokenize_documents(docs, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("model.tokenizer has neither a pad nor an EOS token to pad sequences with")
    stages = []
    for start, seq_len in data.stage_lengths(steps):
        packed = pack_documents(ids, seq_len, mode=data.packing, pad_id=pad_id)
        frac = padding_fraction(packed)
        if frac > 0.5:
            log.warning(
                "data.packing %s at seq_len %d leaves %.0f%% of positions as padding: the documents are short; "
                "data.packing=packed avoids it", data.packing, seq_len, 100 * frac,
            )
        stages.append(Stage(start_step=start, data=packed, seq_len=seq_len))
    return stages


def check_packing_support(packing: str, model) -> None:
    impl = getattr(model.config, "_attn_implementation", None)
    if packing == "packed" and impl not in PACKED_ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"data.packing packed needs an attention implementation that keeps documents apart using position ids "
            f"({', '.join(PACKED_ATTENTION_IMPLEMENTATIONS)}); this model uses {impl!r}. Use data.packing split"
        )


def pretrain(cfg: PretrainConfig | dict | str, *, callbacks: Sequence[StepCallback] = ()) -> TrainResult:
    """Train a model from scratch; see :class:`PretrainConfig` for every option.

    Runs on one process, or on several under ``torchrun`` / ``accelerate launch``.
    """
    cfg = coerce_config(cfg, PretrainConfig)
    config = check(cfg)

    def build_tokenizer():
        tok = load_tokenizer(cfg.model.tokenizer)
        if len(tok) > config.vocab_size:
            raise ValueError(
                f"model.tokenizer has {len(tok)} tokens but the model's vocab_size is {config.vocab_size}"
            )
        return tok

    def build_model(tokenizer):
        return build_from_config(config, attn_implementation=cfg.model.attn_implementation)

    return run_training(
        cfg,
        build_tokenizer=build_tokenizer,
        build_stages=lambda tok, env: build_text_stages(cfg.data, cfg.train.steps, tok),
        build_model=build_model,
        check_model=lambda m: check_packing_support(cfg.data.packing, m),
        callbacks=callbacks,
    )
