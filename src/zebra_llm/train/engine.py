"""The training loop, shared by pretraining, LCAT and LIT.

One optimizer step: the global batch (batches.py) is split over the processes
and into micro-batches; each micro-batch's summed token loss is divided by the
target-token count of the whole global batch and backpropagated, gradients
are reduced across processes on the last micro-batch only, clipped by their
global norm, and AdamW steps with the learning rate of schedule.py. The loss
reported for the step is the exact token mean over the global batch.

SIGTERM (from a scheduler, ``kill``, or ``torchrun`` forwarding it) sets a
flag; at the end of the current step every process agrees on it, a resumable
checkpoint is written, and :meth:`Trainer.fit` returns with
``interrupted=True``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .batches import StagedData, split_for_rank
from .config import OptimOptions, RunOptions
from .distributed import DistEnv
from .loss import token_loss_sum
from .metrics import Reporter, truncate_metrics
from .parallelize import Plan, apply, autocast, gradient_sync, unwrap
from .schedule import make_lr_lambda

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict], None]


@dataclass
class TrainResult:
    output_dir: Path
    start_step: int  # step the run started from (0, or the resumed checkpoint's)
    step: int  # optimizer steps completed
    losses: list[float]  # loss of every step this call ran, in order
    interrupted: bool
    checkpoint: Path | None  # newest resumable checkpoint written by this call
    final_dir: Path | None  # the finished model (transformers directory)
    model: torch.nn.Module | None = None


def build_optimizer(model: torch.nn.Module, optim: OptimOptions) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, scalars)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps
    )


def resume_directory(run: RunOptions) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start."""
    if run.resume is False or run.resume is None:
        return None
    if run.resume is True:
        return ckpt.latest_checkpoint(run.output_dir)
    path = Path(run.resume)
    if not (path / ckpt.STATE_FILE).is_file():
        raise FileNotFoundError(f"train.resume: {path} is not a checkpoint directory (no {ckpt.STATE_FILE})")
    return path


def check_output_dir(run: RunOptions) -> None:
    """Refuse to start a fresh run over another run's checkpoints."""
    out = Path(run.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"train.output_dir: {out} exists and is not a directory")
    if run.resume is False and ckpt.list_checkpoints(out):
        raise ValueError(
            f"train.output_dir: {out} already holds checkpoints; pass --resume to continue that run "
            "or choose another output_dir"
        )


class _StopFlag:
    """Set by SIGTERM; checked between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class Trainer:
    """Runs ``run.steps`` optimizer steps of ``model`` on ``data``.

    ``model`` is the bare model on ``env.device`` (initialised identically on
    every process); the plan's options and parallelism are applied here.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        tokenizer,
        data: StagedData,
        optim: OptimOptions,
        run: RunOptions,
        plan: Plan,
        env: DistEnv,
        config: dict,
        micro_batch_size: int,
        merge_lora: bool = True,
        callbacks: Sequence[StepCallback] = (),
    ):
        self.tokenizer = tokenizer
        self.data = data
        self.optim_options = optim
        self.run = run
        self.plan = plan
        self.env = env
        self.config = config
        self.micro_batch_size = micro_batch_size
        self.merge_lora = merge_lora
        self.callbacks = list(callbacks)
        self.output_dir = Path(run.output_dir)
        self.model = apply(model, plan, env)
        self.optimizer = build_optimizer(self.model, optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(optim, run.steps))
        self._stop = _StopFlag()

    # ------------------------------------------------------------------ steps

    def train_step(self, step: int) -> dict:
        env, plan, model = self.env, self.plan, self.model
        stage, indices = self.data.global_batch(step)
        dataset = self.data.stages[stage].data
        n_targets = dataset.num_targets(indices)
        if n_targets == 0:
            raise ValueError(f"step {step}: the global batch has no token to predict")
        micro = split_for_rank(
            indices, rank=env.rank, world_size=env.world_size, micro_batch_size=self.micro_batch_size
        )
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        tokens = torch.zeros((), dtype=torch.float64, device=env.device)
        # Gradient of sum(CE) / n_targets over the global batch; DDP and FSDP
        # average gradients over processes, hence the factor world_size.
        scale = env.world_size / n_targets
        for i, mb in enumerate(micro):
            batch = {k: v.to(env.device, non_blocking=True) for k, v in dataset.collate(mb).items()}
            labels = batch.pop("labels")
            with gradient_sync(model, plan, enabled=i == len(micro) - 1):
                with autocast(plan, env.device):
                    logits = model(**batch, use_cache=False).logits
                s = token_loss_sum(logits, labels)
                (s * scale).backward()
            loss_sum += s.detach().double()
            tokens += batch["input_ids"].numel()
            del logits, s
        env.all_reduce(loss_sum)
        env.all_reduce(tokens)
        max_norm = self.optim_options.grad_clip if self.optim_options.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "step": step + 1,
            "loss": loss_sum.item() / n_targets,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": int(tokens.item()),
            "target_tokens": n_targets,
            "seq_len": self.data.stages[stage].seq_len,
        }

    def _stop_agreed(self) -> bool:
        flag = torch.tensor([1.0 if self._stop.requested else 0.0], device=self.env.device)
        self.env.all_reduce(flag, op=torch.distributed.ReduceOp.MAX if self.env.distributed else None)
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ checkpoints

    def _state(self, step: int, loss: float | None) -> dict:
        return {"step": step, "data": self.data.position(step), "loss": loss, "config": self.config}

    def save(self, step: int, loss: float | None = None) -> Path:
        path = ckpt.checkpoint_path(self.output_dir, step)
        ckpt.save_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            tokenizer=self.tokenizer,
            state=self._state(step, loss),
            env=self.env,
        )
        if self.env.is_main:
            ckpt.prune_checkpoints(self.output_dir, self.run.keep_checkpoints)
        self.env.barrier()
        return path

    def _resume(self, directory: Path) -> int:
        state = ckpt.load_checkpoint(
            directory, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, env=self.env
        )
        step = int(state["step"])
        saved, now = state["data"], self.data.position(step)
        for key, field in (("batch_size", "train.batch_size"), ("seq_lens", "data.seq_len / data.curriculum"),
                           ("fingerprints", "data")):
            if saved.get(key) != now.get(key):
                raise ValueError(
                    f"train.resume: {field} differs from the checkpoint's ({saved.get(key)} there, {now.get(key)} now); "
                    "an exact resume needs the same data, batch size and sequence lengths"
                )
        return step

    def save_final(self) -> Path:
        """The finished model as a transformers directory ``<output_dir>/final``.

        LoRA runs: with ``merge`` the base with the adapter merged in (plus the
        adapter alone under ``final/adapter``); without, the adapter (peft format).
        """
        from ..io import atomic_directory

        path = self.output_dir / "final"
        inner = unwrap(self.model)
        if ckpt.is_peft(inner):
            if self.env.is_main:
                with atomic_directory(path) as tmp:
                    if self.merge_lora:
                        ckpt.save_model_dir(tmp / "adapter", inner, None)
                        self.model = inner.merge_and_unload()
                    ckpt.save_model_dir(tmp, self.model, self.tokenizer)
            self.env.barrier()
            return path
        sd = ckpt.full_model_state(self.model)
        if self.env.is_main:
            with atomic_directory(path) as tmp:
                ckpt.save_model_dir(tmp, self.model, self.tokenizer, sd)
        self.env.barrier()
        return path

    # ------------------------------------------------------------------ loop

    def fit(self) -> TrainResult:
        run, env = self.run, self.env
        start = 0
        resume_from = resume_directory(run)
        if resume_from is not None:
            start = self._resume(resume_from)
        if env.is_main:
            truncate_metrics(self.output_dir, start)
        reporter = Reporter(
            self.output_dir, total_steps=run.steps, start_step=start, enabled=env.is_main, progress=run.progress
        )
        if resume_from is not None:
            reporter.message(f"resumed from {resume_from} at step {start}")
        losses: list[float] = []
        last_ckpt: Path | None = None
        interrupted = False
        t0 = time.perf_counter()
        self._stop.install()
        try:
            for step in range(start, run.steps):
                t_step = time.perf_counter()
                record = self.train_step(step)
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                dt = time.perf_counter() - t_step
                record.update(step_time_s=dt, tokens_per_s=record["tokens"] / dt, elapsed_s=time.perf_counter() - t0)
                losses.append(record["loss"])
                done = step + 1
                for cb in self.callbacks:
                    cb(done, record)
                stop = self._stop_agreed()
                reporter.step(record, write=done % run.log_every == 0 or done == run.steps or stop)
                if stop or (run.save_every and (done % run.save_every == 0 or done == run.steps)):
                    last_ckpt = self.save(done, record["loss"])
                if stop:
                    interrupted = True
                    reporter.message(f"stopped by SIGTERM after step {done}; checkpoint {last_ckpt}")
                    break
        finally:
            self._stop.uninstall()
            reporter.close()
        completed = start + len(losses)
        final_dir = None
        if not interrupted:
            final_dir = self.save_final()
        return TrainResult(
            output_dir=self.output_dir,
            start_step=start,
            step=completed,
            losses=losses,
            interrupted=interrupted,
            checkpoint=last_ckpt,
            final_dir=final_dir,
            model=unwrap(self.model),
        )

