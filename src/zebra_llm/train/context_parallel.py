"""Context parallelism: every sequence split over a group of processes, for sequences one device cannot hold.

``engine.context_parallel = N`` (``--context-parallel N``) groups the ``world`` processes of a run into
``world / N`` data-parallel replicas of ``N`` context-parallel ranks each (a ``(dp, cp)`` DeviceMesh,
``distributed.setup``). The ranks of one group read the same micro-batches; each holds one contiguous
slice of every sequence, ``n = length / N`` tokens: rank ``r`` positions ``r*n .. (r+1)*n - 1``.

What is global and what is local:

* the model's attention implementation becomes ``"zebra_cp"`` (registered here with transformers'
  ``AttentionInterface``) for the run; inside a context-parallel forward (:meth:`ContextParallel.step`)
  it gives local layers their halo (the previous ``window - 1`` keys and values, point to point) and
  global layers (with DCA or another extension method on them) the all-gathered keys and values
  (``zebra_llm.attention.context_parallel``), then runs the layer's ordinary kernel
  (``zebra_attention_forward``); outside one it is the ordinary attention;
* RoPE positions are global: each rank passes the ``position_ids`` of its slice;
* the padding mask is global: the attention function cuts the keys' part of the whole batch's mask;
* the loss targets are shifted on the whole sequence before it is cut (the last token of a slice is
  scored against the first of the next one), each rank sums its tokens' losses, and the engine's
  all-reduce over every process makes the total; gradients are summed over all processes by DDP/FSDP,
  whose mean over ``world`` processes the engine's scale ``world / targets`` undoes.

Sequence lengths that are not a multiple of ``N`` are padded at the end (tokens without loss, after every
real token, which no real query attends to under causal attention), so the result is the same.
Refused with a clear error: packed rows (position ids restarting inside a row), RoPE types whose
frequencies depend on the sequence length (``dynamic``, ``longrope``), ``engine.compile``.

Layout in docs/training.md ("Context parallelism").
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attention import global_attention, local_attention
from ..attention.context_parallel import Shard, gathered_keys, halo_keys
from ..data.packing import IGNORE

IMPLEMENTATION = "zebra_cp"
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")  # frequencies change with the sequence each rank sees
# families whose attention is plain (causal, optionally sliding-window) softmax attention, which the kernels
# compute; others carry more (Gemma's logit soft-capping, gpt-oss's sinks) that they would drop
SUPPORTED_MODEL_TYPES = ("zebra", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")

_ACTIVE: list[tuple[Shard, torch.Tensor | None]] = []  # the context-parallel step in progress, if any


def check_degree(context_parallel: int, world_size: int) -> None:
    """``engine.context_parallel`` must divide the number of processes."""
    if context_parallel < 1:
        raise ValueError(f"engine.context_parallel must be >= 1, got {context_parallel}")
    if world_size % context_parallel:
        raise ValueError(
            f"engine.context_parallel ({context_parallel}) must divide the number of processes ({world_size}); "
            f"launch with `torchrun --nproc-per-node {context_parallel} ...` (or a multiple of it: data x context "
            "parallel)"
        )


# --------------------------------------------------------------------------- the attention function


def _ordinary(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """One layer's attention on the keys given, as outside context parallelism."""
    from ..hf.extension import extension_attention_forward, extension_state
    from ..hf.masks import key_padding_mask
    from ..hf.zebra_attention import zebra_attention_forward

    if getattr(module, "attention_type", None) is not None:  # a Zebra layer: its own kernel (or extension)
        return zebra_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if extension_state(module) is not None:  # a Llama-family layer under DCA or another method
        return extension_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if dropout:
        raise ValueError(
            f"context parallel attention has no attention dropout (got {dropout}); set config.attention_dropout=0"
        )
    kpm = key_padding_mask(attention_mask, key, who="context parallel attention")
    window = kwargs.get("sliding_window")
    if window is not None:
        out = local_attention(query, key, value, window=int(window), scale=scaling, key_padding_mask=kpm)
    else:
        out = global_attention(query, key, value, scale=scaling, key_padding_mask=kpm)
    return out.transpose(1, 2).contiguous(), None  # (B, Hq, q, D) -> (B, q, Hq, D)


def _window(module, kwargs) -> int | None:
    """The layer's sliding window, or None for a layer that sees every earlier key."""
    kind = getattr(module, "attention_type", None)
    if kind is not None:
        return int(module.window) if kind == "local" else None  # global_approx reads every chunk: gathered
    window = kwargs.get("sliding_window")
    return None if window is None else int(window)


def context_parallel_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"zebra_cp"`` attention function (transformers' signature).

    Inside :meth:`ContextParallel.step`: ``query``, ``key``, ``value`` are this rank's slice (``n``
    tokens); local layers get their halo, the others the gathered keys, and the padding mask of the
    keys they read; then the layer's ordinary kernel runs. Elsewhere: the ordinary attention.
    """
    if not _ACTIVE:
        return _ordinary(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    shard, kpm = _ACTIVE[-1]
    if query.shape[2] != shard.n or key.shape[2] != shard.n:
        raise ValueError(
            f"context parallel attention: layer {getattr(module, 'layer_idx', '?')} got {query.shape[2]} queries and "
            f"{key.shape[2]} keys, expected this rank's {shard.n} tokens (context parallelism runs without a cache)"
        )
    window = _window(module, kwargs)
    if window is not None:
        key, value = halo_keys(key, value, window=window, shard=shard)
    else:
        key, value = gathered_keys(key, value, shard=shard)
    mask = None
    if kpm is not None:
        mask = kpm[:, shard.end - key.shape[2] : shard.end]
        if bool(mask.all()):
            mask = None
    return _ordinary(module, query, key, value, mask, scaling, dropout, **kwargs)


def register() -> None:
    """Register ``"zebra_cp"`` with transformers (idempotent); its mask function passes padding masks only."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from ..hf.masks import padding_mask_interface

    AttentionInterface.register(IMPLEMENTATION, context_parallel_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, padding_mask_interface)


register()


# --------------------------------------------------------------------------- batches and the loss


@dataclass
class ShardedBatch:
    """This rank's part of a micro-batch: the model's inputs, the loss targets, the slice."""

    inputs: dict[str, torch.Tensor]  # input_ids, position_ids (global), attention_mask (when the batch had one)
    targets: torch.Tensor  # [batch, n]: the token each position predicts (already shifted), IGNORE for none
    shard: Shard
    key_padding_mask: torch.Tensor | None  # [batch, length] bool over the whole padded sequence


def _check_positions(position_ids: torch.Tensor) -> None:
    if position_ids.shape[1] > 1 and not bool((position_ids[:, 1:] - position_ids[:, :-1] == 1).all()):
        raise ValueError(
            "context parallelism needs each row's position ids to count up by 1 (one sequence per row); these "
            "restart inside a row (data.packing packed): use data.packing split or concat"
        )


def shard_batch(batch: dict[str, torch.Tensor], labels: torch.Tensor, shard_of) -> ShardedBatch:
    """Pad a micro-batch to a multiple of the group size and cut this rank's slice.

    ``batch`` holds ``input_ids`` ``[B, S]`` and optionally ``position_ids`` and ``attention_mask``;
    ``labels`` are transformers' (aligned with the inputs). ``shard_of(length)`` gives the Shard.
    """
    ids = batch["input_ids"]
    b, s = ids.shape
    extra = set(batch) - {"input_ids", "position_ids", "attention_mask"}
    if extra:
        raise ValueError(f"context parallelism: unsupported batch fields {sorted(extra)}")
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(s, device=ids.device).expand(b, s)
    positions = positions.expand(b, s)
    _check_positions(positions)
    # What position t predicts: labels[t + 1] (the shift of train.loss.token_loss_sum), on the whole row.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    shard = shard_of(s)
    pad = shard.length - s
    mask = batch.get("attention_mask")
    if pad:  # at the end: after every real token, so no real query attends to it (causal)
        ids = F.pad(ids, (0, pad), value=0)
        positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, pad + 1, device=ids.device)], dim=1)
        targets = F.pad(targets, (0, pad), value=IGNORE)
        if mask is not None:
            mask = F.pad(mask, (0, pad), value=0)
    kpm = None
    if mask is not None:
        kpm = mask.to(torch.bool)
        if bool(kpm.all()):
            kpm = None
    cut = slice(shard.start, shard.end)
    inputs = {"input_ids": ids[:, cut], "position_ids": positions[:, cut]}
    if mask is not None:
        inputs["attention_mask"] = mask[:, cut]
    return ShardedBatch(inputs, targets[:, cut], shard, kpm)


def target_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``logits [B, n, vocab]`` against already shifted ``targets [B, n]``, in
    float32 or wider (as ``train.loss.token_loss_sum``, whose shift was done on the whole sequence)."""
    vocab = logits.shape[-1]
    wide = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(wide.reshape(-1, vocab), targets.reshape(-1).to(logits.device),
                           ignore_index=IGNORE, reduction="sum")


# --------------------------------------------------------------------------- the group


def _hf_model(model):
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def check_model(model) -> None:
    """Refuse a model whose numbers context parallelism would change."""
    config = _hf_model(model).config
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"engine.context_parallel: model_type {getattr(config, 'model_type', None)!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kinds = [params] if "rope_type" in params or not params else list(params.values())
    for p in kinds:
        rope_type = p.get("rope_type") if isinstance(p, dict) else None
        if rope_type in LENGTH_DEPENDENT_ROPE:
            raise ValueError(
                f"engine.context_parallel: RoPE type {rope_type!r} rescales its frequencies with the sequence "
                "length each process sees, so split sequences would get other positions; use a fixed type "
                "(default, linear, yarn, llama3) or engine.context_parallel 1"
            )


class ContextParallel:
    """The context-parallel group of this process: ``size`` ranks holding slices of the same sequences."""

    def __init__(self, group, rank: int, size: int):
        self.group, self.rank, self.size = group, rank, size
        self.stats: dict = {}  # bytes sent by this rank, (kind, direction) -> total over every step
        self._previous: str | None = None

    def shard_of(self, length: int) -> Shard:
        """The Shard of a sequence of ``length`` tokens, padded up to a multiple of the group size."""
        padded = -(-length // self.size) * self.size
        return Shard(self.group, self.rank, self.size, padded, stats=defaultdict(int))

    def prepare(self, model) -> None:
        """Check the model and switch its attention implementation to ``"zebra_cp"`` (undone by :meth:`restore`)."""
        check_model(model)
        import torch.distributed as dist

        if self.size > 1 and dist.is_initialized():
            # NCCL wants every rank of a group in its first call; the first exchange of a layer may be
            # point to point between neighbours only
            dist.barrier(group=self.group)
        hf = _hf_model(model)
        self._previous = hf.config._attn_implementation
        hf.set_attn_implementation(IMPLEMENTATION)

    def restore(self, model) -> None:
        if self._previous is not None:
            _hf_model(model).set_attn_implementation(self._previous)
            self._previous = None

    @contextlib.contextmanager
    def step(self, batch: dict[str, torch.Tensor], labels: torch.Tensor):
        """Shard a micro-batch and keep the context-parallel attention on while the block runs (forward and
        backward, so activation checkpointing recomputes under it too). Yields the :class:`ShardedBatch`."""
        sharded = shard_batch(batch, labels, self.shard_of)
        _ACTIVE.append((sharded.shard, sharded.key_padding_mask))
        try:
            yield sharded
        finally:
            _ACTIVE.pop()
            for key, value in sharded.shard.stats.items():
                self.stats[key] = self.stats.get(key, 0) + value


def forward_backward(model, batch: dict[str, torch.Tensor], labels: torch.Tensor, *, scale: float,
                     cp: ContextParallel | None = None, autocast=contextlib.nullcontext) -> torch.Tensor:
    """One micro-batch: forward, summed token loss, ``backward(loss * scale)``; returns the detached loss
    sum of this process's tokens (all of them without context parallelism, its slice's with)."""
    from .loss import token_loss_sum

    if cp is None:
        with autocast():
            logits = model(**batch, use_cache=False).logits
        s = token_loss_sum(logits, labels)
        (s * scale).backward()
        return s.detach()
    with cp.step(batch, labels) as part:
        with autocast():
            logits = model(**part.inputs, use_cache=False).logits
        s = target_loss_sum(logits, part.targets)
        (s * scale).backward()
    return s.detach()


__all__ = [
    "IMPLEMENTATION",
    "ContextParallel",
    "ShardedBatch",
    "check_degree",
    "check_model",
    "context_parallel_attention_forward",
    "forward_backward",
    "register",
    "shard_batch",
    "target_loss_sum",
]
