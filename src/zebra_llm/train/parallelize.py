"""Options applied to the model from outside its code, in torchtitan's order:
activation checkpointing, then ``torch.compile`` per decoder block, then data
parallelism (DDP) or FSDP2 sharding (``fully_shard`` on each block, then on
the root).

Decoder blocks are found as transformers' ``GradientCheckpointingLayer``
modules (every decoder layer of a transformers model, Zebra's included), so
nothing here knows a model family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .distributed import DistEnv


@dataclass(frozen=True)
class Plan:
    strategy: str  # single | ddp | fsdp
    precision: str  # fp32 | bf16
    activation_checkpointing: bool
    compile: bool
    compile_backend: str = "inductor"


def resolve_plan(engine, env: DistEnv) -> Plan:
    strategy = engine.strategy
    if strategy == "auto":
        strategy = "ddp" if env.distributed else "single"
    if strategy in ("ddp", "fsdp") and not env.distributed:
        raise ValueError(
            f"engine.strategy {strategy} needs several processes; launch with "
            "`torchrun --nproc-per-node N -m zebra_llm train ...` (or use strategy single)"
        )
    if strategy == "single" and env.distributed:
        raise ValueError(f"engine.strategy single with {env.world_size} processes; use ddp or fsdp")
    precision = engine.precision
    if precision == "auto":
        precision = "bf16" if env.device.type == "cuda" else "fp32"
    return Plan(strategy, precision, engine.activation_checkpointing, engine.compile, engine.compile_backend)


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _hf_model(model: nn.Module):
    """The transformers PreTrainedModel inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def apply(model: nn.Module, plan: Plan, env: DistEnv) -> nn.Module:
    """The model ready for training; for ``ddp`` a ``DistributedDataParallel``
    wrapper, otherwise the model itself (FSDP2 shards it in place)."""
    if plan.activation_checkpointing:
        hf = _hf_model(model)
        if not getattr(hf, "supports_gradient_checkpointing", False):
            raise ValueError(f"engine.activation_checkpointing: {type(hf).__name__} does not support it")
        # Non-reentrant checkpointing needs no input that requires grad, so it also
        # works when the embeddings are frozen (LoRA).
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    blocks = decoder_blocks(model)
    if plan.compile:
        if not blocks:
            raise ValueError("engine.compile: found no decoder blocks (GradientCheckpointingLayer) to compile")
        for block in blocks:
            block.compile(backend=plan.compile_backend)  # in place: parameter names do not change
    if plan.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        if not blocks:
            raise ValueError("engine.strategy fsdp: found no decoder blocks to shard")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    if plan.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_sync(model: nn.Module, plan: Plan, enabled: bool):
    """Context for one micro-batch's backward: gradients are reduced across
    processes only on the last micro-batch of an accumulation."""
    import contextlib

    if plan.strategy == "ddp" and not enabled:
        return model.no_sync()
    if plan.strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def autocast(plan: Plan, device: torch.device):
    """bf16 autocast (master weights and optimizer stay float32), or nothing."""
    import contextlib

    if plan.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
