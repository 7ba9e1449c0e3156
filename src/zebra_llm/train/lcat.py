"""Long Context Adaptation Training (Zebra paper section 4.1): a Llama-family
checkpoint converted to Zebra (``convert_to_zebra``: weights unchanged,
layers 0, L, 2L, ... global, the others local with the given window) and
trained further on long sequences, optionally with a new RoPE base or a RoPE
scaling, as long-context adaptation usually does."""

from __future__ import annotations

from collections.abc import Sequence

from .config import LCATConfig
from .engine import StepCallback, TrainResult
from .models import build_lcat_model, load_tokenizer
from .pretrain import build_text_stages, check_packing_support, check_seq_len_vs_window, check_tokenizer_spec
from .runner import check_data_source, check_run, coerce_config, run_training


def check(cfg: LCATConfig) -> None:
    """Every check that can fail before the model is loaded."""
    check_run(cfg)
    cfg.data.stage_lengths(cfg.train.steps)
    check_data_source(cfg.data.source)
    try:
        check_tokenizer_spec(cfg.model.source)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(str(e).replace("model.tokenizer", "model.source", 1)) from None
    if cfg.model.attention != "global":
        check_seq_len_vs_window(cfg.data, cfg.model.window)


def lcat(cfg: LCATConfig | dict | str, *, callbacks: Sequence[StepCallback] = ()) -> TrainResult:
    """Convert ``cfg.model.source`` to Zebra and continue training it on long
    sequences; the result (``<output_dir>/final``) loads with
    ``AutoModelForCausalLM.from_pretrained`` once ``zebra_llm`` is imported."""
    cfg = coerce_config(cfg, LCATConfig)
    check(cfg)
    return run_training(
        cfg,
        build_tokenizer=lambda: load_tokenizer(cfg.model.source),
        build_stages=lambda tok, env: build_text_stages(cfg.data, cfg.train.steps, tok),
        build_model=lambda tok: build_lcat_model(cfg.model, seq_len=cfg.data.seq_len),
        check_model=lambda m: check_packing_support(cfg.data.packing, m),
        callbacks=callbacks,
    )
