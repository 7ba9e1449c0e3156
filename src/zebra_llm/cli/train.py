"""``zebra train pretrain | lcat | lit``: thin layers over
:func:`zebra_llm.train.pretrain`, :func:`~zebra_llm.train.lcat` and
:func:`~zebra_llm.train.lit`.

Every command reads an optional config file (``--config``, YAML/TOML/JSON);
its flags, then ``--set KEY=VALUE`` pairs, override the file. Launch on
several processes with ``torchrun --nproc-per-node N -m zebra_llm train ...``.
A run stopped by SIGTERM or Ctrl-C (SIGINT) writes a checkpoint and exits with
status 143 (SIGTERM) or 130 (SIGINT); rerun the same command with ``--resume``
to continue it exactly. A resume may change only ``train.steps`` (upwards),
where and how often the run saves and reports, the micro-batch and
``engine.*``; any other changed field is refused by name. ``--resume`` with no
checkpoint in the output directory starts from step 0 and says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ._common import layout_flags, with_options

app = typer.Typer(
    name="train",
    help="Train models: pretraining from scratch, long context adaptation (LCAT), long instruction tuning (LIT).",
    no_args_is_help=True,
)

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what a killed process reports
EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}  # 128 + the signal's number

_CONFIG = typer.Option(None, "--config", "-c", help="YAML/TOML/JSON config file; flags override it.")
_ENCODING = typer.Option(None, "--encoding", help="Encoding of local text files (data.encoding, default utf-8; strict).")
_SET = typer.Option(None, "--set", help="KEY=VALUE for any config field, e.g. --set optim.min_lr_ratio=0.05 (repeatable).")

# The flags every training command has, written once: (parameter, config field, type, option).
_SHARED_FLAGS = (
    ("steps", "train.steps", int, typer.Option(None, help="Optimizer steps (train.steps).")),
    ("batch_size", "train.batch_size", int,
     typer.Option(None, help="Global batch in sequences/examples over all processes (train.batch_size).")),
    ("micro_batch_size", "train.micro_batch_size", int,
     typer.Option(None, help="Per-process micro-batch; the rest is gradient accumulation (train.micro_batch_size).")),
    ("lr", "optim.lr", float, typer.Option(None, help="Peak learning rate (optim.lr).")),
    ("warmup_steps", "optim.warmup_steps", int,
     typer.Option(None, help="Linear warmup steps before the cosine decay (optim.warmup_steps).")),
    ("seed", "train.seed", int, typer.Option(None, help="Seed of the initialisation and the data order (train.seed).")),
    ("output_dir", "train.output_dir", str,
     typer.Option(None, "--output-dir", "-o", help="Run directory: checkpoints, metrics.jsonl, final model.")),
    ("save_every", "train.save_every", int,
     typer.Option(None, help="Resumable checkpoint every N steps (train.save_every; 0 = only on SIGTERM).")),
    ("resume", None, bool,  # train.resume, with resume_from
     typer.Option(False, "--resume", help="Continue from the newest checkpoint in the output directory.")),
    ("resume_from", None, Path, typer.Option(None, "--resume-from", help="Continue from this checkpoint directory.")),
    ("device", "engine.device", str, typer.Option(None, help="auto, cpu, cuda or cuda:N (engine.device).")),
    ("strategy", "engine.strategy", str, typer.Option(None, help="auto, single, ddp or fsdp (engine.strategy).")),
    ("context_parallel", "engine.context_parallel", int,
     typer.Option(None, "--context-parallel",
                  help="Processes sharing each sequence (contiguous slices; engine.context_parallel); the rest is "
                       "data parallelism: processes = data x context parallel.")),
    ("precision", "engine.precision", str,
     typer.Option(None, help="auto (bf16 autocast on GPU), fp32 or bf16 (engine.precision).")),
    ("activation_checkpointing", "engine.activation_checkpointing", bool,
     typer.Option(None, "--activation-checkpointing/--no-activation-checkpointing",
                  help="Recompute activations in backward.")),
    ("compile", "engine.compile", bool, typer.Option(None, "--compile/--no-compile", help="torch.compile each decoder block.")),
    ("progress", "train.progress", bool, typer.Option(None, "--progress/--no-progress", help="Progress bar.")),
    ("set_", None, list[str], _SET),  # applied last, over the file and every flag
)


def _text_data_flags(seq_len_default: str = "") -> tuple:
    """The flags of the commands that train on plain text (pretrain, lcat), as in ``_SHARED_FLAGS``."""
    return (
        ("data", "data.source", str, typer.Option(
            None, "--data", help="Text: a file, a directory or a datasets name; default: the stdlib corpus.")),
        ("seq_len", "data.seq_len", int, typer.Option(None, help=f"Training sequence length (data.seq_len{seq_len_default}).")),
        ("packing", "data.packing", str, typer.Option(None, help="split, packed or concat (data.packing).")),
        ("encoding", "data.encoding", str, _ENCODING),
    )


def _layout_flags(default: str | None = None) -> tuple:
    """The Zebra layer settings' flags (generated from ZebraLayout's fields), as in ``_SHARED_FLAGS``."""
    return tuple((name, f"model.{name}", tp, option) for name, tp, option in layout_flags("model", default=default))


def _with(table: tuple, *, before: str, into: str):
    """``with_options`` for a flag table: the command gets the flags' values in its parameter ``into``."""
    return with_options([(name, tp, option) for name, _, tp, option in table], before=before, into=into)


def _overrides(table: tuple, values: dict) -> dict[str, object]:
    """A flag table's values as dotted config overrides (flags not given are left out)."""
    return {field: values[name] for name, field, *_ in table if field is not None and values[name] is not None}


# added to each command after its own flags; the command gets their values in ``shared``
_with_shared_flags = _with(_SHARED_FLAGS, before=None, into="shared")


def _with_flags(table: tuple, *, before: str):
    """The shared flags and ``table``'s (placed before the parameter ``before``); the command gets their
    values in ``shared`` and ``flags``."""
    return lambda command: _with_shared_flags(_with(table, before=before, into="flags")(command))


_PRETRAIN_FLAGS = _layout_flags(default="the preset's") + _text_data_flags()
_LCAT_FLAGS = _layout_flags() + _text_data_flags(", default 8192")


def _shared_overrides(values: dict) -> dict[str, object]:
    """The shared flags' values as dotted config overrides (flags not given are left out)."""
    out = _overrides(_SHARED_FLAGS, values)
    resume_from = values["resume_from"]
    out["train.resume"] = str(resume_from) if resume_from else (True if values["resume"] else None)
    return {k: v for k, v in out.items() if v is not None}


def _train(kind: str, config: Path | None, pairs: dict[str, object], shared: dict) -> None:
    """Run the training ``kind`` (pretrain, lcat or lit) on its typed config: the file, then the flags
    (``pairs``, the shared ones), then ``--set``."""
    from zebra_llm.config_io import apply_overrides, read_config_file
    from zebra_llm.train import LCATConfig, LITConfig, PretrainConfig, lcat, lit, pretrain

    config_type, run = {"pretrain": (PretrainConfig, pretrain), "lcat": (LCATConfig, lcat), "lit": (LITConfig, lit)}[kind]
    data = read_config_file(config) if config is not None else {}
    overrides = {k: v for k, v in {**pairs, **_shared_overrides(shared)}.items() if v is not None}
    data = apply_overrides(apply_overrides(data, overrides), list(shared["set_"] or []))
    _finish(run(config_type.from_dict(data)))


def _finish(result) -> None:
    code = EXIT_CODES.get(getattr(result, "stop_signal", None) or "SIGTERM", EXIT_INTERRUPTED)
    if int(os.environ.get("RANK", "0")) != 0:
        if result.interrupted:
            raise typer.Exit(code)
        return
    if result.interrupted:
        typer.echo(
            f"stopped after step {result.step} by {result.stop_signal or 'SIGTERM'}; checkpoint {result.checkpoint}; "
            "rerun with --resume to continue", err=True,
        )
        raise typer.Exit(code)
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    skipped = f", {result.skipped_steps} non-finite steps skipped" if getattr(result, "skipped_steps", 0) else ""
    typer.echo(f"trained to step {result.step} (final loss {last}{skipped}); model in {result.final_dir}")


# Each command's own flags are written out in its signature (what `--help` shows for that command); the
# flags several commands share come from tables: _SHARED_FLAGS, the plain-text data flags, and the Zebra
# layer settings' flags generated from ZebraLayout (so --attention, --window, ... match it everywhere).
@app.command()
@_with_flags(_PRETRAIN_FLAGS, before="tokenizer")
def pretrain(
    config: Path = _CONFIG,
    preset: str = typer.Option(None, help="Zebra preset name (model.preset)."),
    model_config: str = typer.Option(None, "--model-config", help="Config file or directory of any transformers causal LM (model.config; replaces the preset)."),
    tokenizer: str = typer.Option(None, help="Tokenizer: smollm2, a directory, a .gguf file or a hub name."),
    shared: dict = None,  # the _SHARED_FLAGS' values (see _with_shared_flags)
    flags: dict = None,  # _PRETRAIN_FLAGS' values
) -> None:
    """Pretrain a Zebra (or global / local / global_approx) model from scratch."""
    pairs = {"model.preset": preset, "model.config": model_config, "model.tokenizer": tokenizer}
    _train("pretrain", config, {**pairs, **_overrides(_PRETRAIN_FLAGS, flags)}, shared)


@app.command()
@_with_flags(_LCAT_FLAGS, before="rope_theta")
def lcat(
    config: Path = _CONFIG,
    source: str = typer.Option(None, "--from", help="Llama-family model: smollm2, a directory, a .gguf file or a hub name."),
    rope_theta: float = typer.Option(None, help="New RoPE base (model.rope_theta)."),
    rope_scaling: str = typer.Option(None, help="RoPE scaling type: linear, dynamic, yarn, longrope, llama3."),
    rope_factor: float = typer.Option(None, help="RoPE scaling factor (with --rope-scaling)."),
    flags: dict = None,  # _LCAT_FLAGS' values
    shared: dict = None,  # the _SHARED_FLAGS' values (see _with_shared_flags)
) -> None:
    """Long context adaptation: convert a Llama-family checkpoint to Zebra and train it on long sequences."""
    if rope_factor is not None and rope_scaling is None:
        raise ValueError("--rope-factor needs --rope-scaling (linear, dynamic, yarn, longrope, llama3)")
    scaling = None
    if rope_scaling is not None:
        scaling = {"rope_type": rope_scaling, **({"factor": rope_factor} if rope_factor is not None else {})}
    pairs = {"model.source": source, "model.rope_theta": rope_theta, "model.rope_scaling": scaling}
    _train("lcat", config, {**pairs, **_overrides(_LCAT_FLAGS, flags)}, shared)


@app.command()
@_with_shared_flags
def lit(
    config: Path = _CONFIG,
    source: str = typer.Option(None, "--from", help="Model to tune: a directory (e.g. an LCAT result), smollm2, a .gguf file or a hub name."),
    data: str = typer.Option(None, "--data", help="JSONL of {messages: [...]} or {prompt, response} records (data.path)."),
    seq_len: int = typer.Option(None, help="Longest example in tokens (data.seq_len)."),
    overflow: str = typer.Option(None, help="Longer examples: drop, truncate or error (data.overflow)."),
    chat_template: str = typer.Option(None, help="auto (the tokenizer's template) or none (plain format)."),
    lora: bool = typer.Option(None, "--lora/--no-lora", help="Train a LoRA adapter (peft) instead of every weight."),
    lora_r: int = typer.Option(None, help="LoRA rank (model.lora.r)."),
    lora_alpha: float = typer.Option(None, help="LoRA alpha (model.lora.alpha)."),
    encoding: str = _ENCODING,
    shared: dict = None,  # the _SHARED_FLAGS' values (see _with_shared_flags)
) -> None:
    """Long instruction tuning: loss on response tokens only, optionally with LoRA."""
    pairs = {
        "model.source": source, "data.path": data, "data.seq_len": seq_len, "data.overflow": overflow,
        "data.chat_template": chat_template, "model.lora.enabled": lora, "model.lora.r": lora_r,
        "model.lora.alpha": lora_alpha, "data.encoding": encoding,
    }
    _train("lit", config, pairs, shared)
