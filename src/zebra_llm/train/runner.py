"""What the three training kinds share: config coercion, the checks every run
passes before it starts, and the sequence process group -> tokenizer -> data
-> model -> trainer -> teardown."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import distributed
from .batches import Stage, StagedData
from .checkpoint import seed_everything
from .engine import StepCallback, Trainer, TrainResult, check_output_dir
from .parallelize import resolve_plan

log = logging.getLogger(__name__)


def coerce_config(cfg, cls):
    """Accept a config object, a dict, or a path to a YAML/TOML/JSON file."""
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, dict):
        return cls.from_dict(cfg)
    if isinstance(cfg, (str, os.PathLike)):
        return cls.load(cfg)
    raise TypeError(f"expected a {cls.__name__}, a dict or a config file path, got {type(cfg).__name__}")


def micro_batch_size(run, world_size: int) -> int:
    """Per-process micro-batch; the global batch must split evenly into
    processes x micro-batches x accumulation steps."""
    if run.batch_size % world_size:
        raise ValueError(
            f"train.batch_size ({run.batch_size}) must be a multiple of the number of processes ({world_size})"
        )
    micro = run.micro_batch_size or run.batch_size // world_size
    if run.batch_size % (micro * world_size):
        raise ValueError(
            f"train.batch_size ({run.batch_size}) must be a multiple of train.micro_batch_size ({micro}) "
            f"x processes ({world_size})"
        )
    return micro


def check_run(cfg) -> int:
    """Checks shared by every kind; returns the micro-batch size."""
    check_output_dir(cfg.train)
    if cfg.engine.strategy in ("ddp", "fsdp") and distributed.launched_world_size() < 2:
        raise ValueError(
            f"engine.strategy {cfg.engine.strategy} needs several processes; launch with "
            "`torchrun --nproc-per-node N -m zebra_llm train ...`"
        )
    if cfg.engine.device.startswith("cuda"):
        from ..loading import check_device

        try:
            check_device(cfg.engine.device)
        except ValueError as e:
            raise ValueError(f"engine.{e}") from None
    from .context_parallel import check_degree

    world, cp = distributed.launched_world_size(), cfg.engine.context_parallel
    check_degree(cp, world)
    micro = micro_batch_size(cfg.train, world // cp)  # data-parallel replicas
    check_batch_fits(cfg.data.seq_len, micro)
    return micro


def check_batch_fits(seq_len: int, micro: int) -> None:
    """Before any data is packed: one micro-batch's token ids, labels and positions (int64) fit in
    memory, a floor of what a step needs (issue 25, item 4: data.seq_len=1000000000 is a one-line
    error, not a process that grows until it is killed)."""
    from ..loading import check_fits_in_memory

    check_fits_in_memory(3 * 8 * micro * seq_len, f"data.seq_len={seq_len}: one micro-batch of {micro} x {seq_len} "
                         "tokens (its int64 token ids, labels and positions alone)")


def check_data_source(source: str | None, field: str = "data.source") -> None:
    if source is None or str(source) == "stdlib":
        return
    path = Path(str(source)).expanduser()
    if path.exists() and not (path.is_file() or path.is_dir()):
        from ..io import describe_file_kind

        raise ValueError(f"{field}: {source} is not a regular file or directory (it is {describe_file_kind(path)})")
    if not path.exists() and (str(source).startswith((".", "/", "~")) or path.suffix or str(source).count("/") > 1):
        raise FileNotFoundError(f"{field}: {source} does not exist")


def run_training(
    cfg,
    *,
    build_tokenizer: Callable[[], object],
    build_stages: Callable[[object, distributed.DistEnv], list[Stage]],
    build_model: Callable[[object], torch.nn.Module],
    check_model: Callable[[torch.nn.Module], None] | None = None,
    callbacks: Sequence[StepCallback] = (),
    merge_lora: bool = True,
) -> TrainResult:
    env = distributed.setup(cfg.engine.device, cfg.engine.context_parallel)
    try:
        plan = resolve_plan(cfg.engine, env)
        micro = micro_batch_size(cfg.train, env.dp_size)
        if plan.precision == "bf16" and env.device.type == "cpu" and env.is_main:
            log.warning("engine.precision bf16 on CPU: most CPUs have no native bfloat16 and run far slower than fp32")
        out = Path(cfg.train.output_dir)
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)  # config.yaml is written once a resume is accepted (engine.py)
        tokenizer = build_tokenizer()
        with env.main_first():  # rank 0 fills the token cache, the others read it
            stages = build_stages(tokenizer, env)
        data = StagedData(stages, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
        # Same seed on every process: the model is initialised identically everywhere
        # (FSDP2 shards each process's copy; DDP would broadcast rank 0's anyway).
        seed_everything(cfg.train.seed)
        model = build_model(tokenizer).to(env.device)
        if check_model is not None:
            check_model(model)
        trainer = Trainer(
            model=model,
            tokenizer=tokenizer,
            data=data,
            optim=cfg.optim,
            run=cfg.train,
            plan=plan,
            env=env,
            config=cfg.to_dict(),
            micro_batch_size=micro,
            merge_lora=merge_lora,
            callbacks=callbacks,
        )
        return trainer.fit()
    finally:
        distributed.teardown(env)
