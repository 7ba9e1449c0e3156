"""Long Instruction Tuning (Zebra paper section 4.2): instruction tuning on
long inputs, the loss on response tokens only, optionally through a LoRA
adapter (peft)."""

from __future__ import annotations

from collections.abc import Sequence

from ..data.instructions import build_instruction_dataset
from .batches import Stage
from .config import LITConfig
from .engine import StepCallback, TrainResult
from .models import build_lit_model, load_tokenizer
from .pretrain import check_tokenizer_spec
from .runner import check_run, coerce_config, run_training


def check(cfg: LITConfig) -> None:
    check_run(cfg)
    if cfg.data.path is None:
        raise ValueError("data.path is required: a .jsonl file of messages or prompt/response records (--data)")
    from pathlib import Path

    from ..io import check_regular_file

    check_regular_file(Path(cfg.data.path).expanduser(), "data.path")
    try:
        check_tokenizer_spec(cfg.model.source)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(str(e).replace("model.tokenizer", "model.source", 1)) from None
    if cfg.model.lora.enabled and cfg.engine.strategy == "fsdp":
        raise ValueError("engine.strategy fsdp is not supported with model.lora; use ddp (the base model is frozen)")


def lit(cfg: LITConfig | dict | str, *, callbacks: Sequence[StepCallback] = ()) -> TrainResult:
    """Instruction-tune ``cfg.model.source`` on ``cfg.data.path``."""
    cfg = coerce_config(cfg, LITConfig)
    check(cfg)

    def build_stages(tokenizer, env):
        d = cfg.data
        dataset = build_instruction_dataset(
            d.path, tokenizer, seq_len=d.seq_len, chat_template=d.chat_template, overflow=d.overflow, limit=d.limit,
            encoding=d.encoding,
        )
        return [Stage(start_step=0, data=dataset, seq_len=dataset.seq_len)]

    return run_training(
        cfg,
        build_tokenizer=lambda: load_tokenizer(cfg.model.source),
        build_stages=build_stages,
        build_model=lambda tok: build_lit_model(cfg.model),
        callbacks=callbacks,
        merge_lora=cfg.model.lora.merge,
    )
