"""The training loop, shared by pretraining, LCAT and LIT.

One optimizer step: the global batch (batches.py) is split over the processes
and into micro-batches; each micro-batch's summed token loss is divided by the
target-token count of the whole global batch and backpropagated, gradients
are reduced across processes on the last micro-batch only, clipped by their
global norm, and AdamW steps with the learning rate of schedule.py. The loss
reported for the step is the exact token mean over the global batch.

With context parallelism (``engine.context_parallel = N``, context_parallel.py)
the micro-batches are split over the data-parallel replicas only; the N ranks
of a replica read the same micro-batch, each runs its slice of every sequence
and sums the loss of its slice's tokens, and the same reductions (loss over
every process, gradients averaged over every process by DDP/FSDP, undone by
the scale) give the token mean over the global batch.

SIGTERM (from a scheduler, ``kill``, or ``torchrun`` forwarding it) or SIGINT
(Ctrl-C) sets a flag; at the end of the current step every process agrees on
it, a resumable checkpoint is written, and :meth:`Trainer.fit` returns with
``interrupted=True``. A second Ctrl-C stops at once (KeyboardInterrupt).

A step whose loss or gradient norm is inf or nan never reaches the optimizer:
with ``train.nonfinite=stop`` (the default) the run stops with
:class:`NonFiniteLossError` and writes nothing more (the newest checkpoint
stays the last good one, and no ``final/`` model is written); with ``skip``
the update is dropped, the step counts on, and the metrics record it
(``skipped: true`` and the running ``skipped_steps``).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .batches import StagedData, split_for_rank
from .config import OptimOptions, RunOptions, check_resume
from .context_parallel import ContextParallel, forward_backward
from .distributed import DistEnv
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
    stop_signal: str | None = None  # "SIGTERM" or "SIGINT" when interrupted
    skipped_steps: int = 0  # steps whose update was dropped for a non-finite loss (train.nonfinite=skip)


class NonFiniteLossError(ValueError):
    """A training step's loss or gradient norm is inf or nan (train.nonfinite=stop)."""


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
    if not path.is_dir():
        raise FileNotFoundError(f"train.resume: {path} does not exist (expected a checkpoint directory)")
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
    """Set by SIGTERM or SIGINT (Ctrl-C); checked between steps. A second SIGINT
    raises KeyboardInterrupt at once, as Ctrl-C usually does."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


def _finite_or_none(x):
    """JSON has no inf/nan: such values become null (metrics.jsonl stays valid JSON)."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


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
        self.context_parallel = None
        if env.cp_size > 1:
            self.context_parallel = ContextParallel(env.cp_group, env.cp_rank, env.cp_size)
            self.context_parallel.prepare(model)  # its attention implementation, until fit returns
        self.model = apply(model, plan, env)
        self.optimizer = build_optimizer(self.model, optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, make_lr_lambda(optim, run.steps))
        self._stop = _StopFlag()
        self.skipped_steps = 0

    # ------------------------------------------------------------------ steps

    def train_step(self, step: int) -> dict:
        env, plan, model = self.env, self.plan, self.model
        stage, indices = self.data.global_batch(step)
        dataset = self.data.stages[stage].data
        n_targets = dataset.num_targets(indices)
        if n_targets == 0:
            raise ValueError(f"step {step}: the global batch has no token to predict")
        # the ranks of a context-parallel group share their replica's micro-batches
        micro = split_for_rank(
            indices, rank=env.dp_rank, world_size=env.dp_size, micro_batch_size=self.micro_batch_size
        )
        cp = self.context_parallel
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
                s = forward_backward(model, batch, labels, scale=scale, cp=cp,
                                     autocast=lambda: autocast(plan, env.device))
            loss_sum += s.double()
            if cp is None or cp.rank == 0:  # a context-parallel group's tokens once
                tokens += batch["input_ids"].numel()
            del s
        env.all_reduce(loss_sum)
        env.all_reduce(tokens)
        max_norm = self.optim_options.grad_clip if self.optim_options.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        loss, norm = loss_sum.item() / n_targets, float(grad_norm)
        # Every process holds the same reduced loss and global norm, so all take the same branch.
        finite = math.isfinite(loss) and math.isfinite(norm)
        if finite:
            self.optimizer.step()
        self.scheduler.step()  # the rate stays a function of the step, skipped or not
        self.optimizer.zero_grad(set_to_none=True)
        record = {
            "step": step + 1,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens": int(tokens.item()),
            "target_tokens": n_targets,
            "seq_len": self.data.stages[stage].seq_len,
        }
        if not finite:
            record["nonfinite"] = True
        return record

    def _stop_agreed(self) -> bool:
        flag = torch.tensor([1.0 if self._stop.requested else 0.0], device=self.env.device)
        self.env.all_reduce(flag, op=torch.distributed.ReduceOp.MAX if self.env.distributed else None)
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ checkpoints

    def _state(self, step: int, loss: float | None) -> dict:
        return {"step": step, "data": self.data.position(step), "loss": _finite_or_none(loss), "config": self.config,
                "skipped_steps": self.skipped_steps}

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

    def _resume(self, directory: Path) -> tuple[int, list[str]]:
        """Restore the checkpoint; returns its step and the config changes the resume makes."""
        state = ckpt.read_state(directory)
        # The config first: a changed shape or layout is named as such, not as a weight that does not fit.
        changes = check_resume(state.get("config"), self.config, int(state["step"]))
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
        self.skipped_steps = int(state.get("skipped_steps", 0) or 0)
        return step, changes

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

    def _nonfinite_error(self, record: dict) -> NonFiniteLossError:
        last = ckpt.latest_checkpoint(self.output_dir)
        where = f"the last good checkpoint is {last}" if last is not None else (
            "no checkpoint was written before it (train.save_every)")
        return NonFiniteLossError(
            f"train.nonfinite: step {record['step']} has a non-finite loss or gradient (loss {record['loss']}, "
            f"gradient norm {record['grad_norm']}); training stopped before the update, nothing more was saved and "
            f"{where}. "
            "Lower optim.lr (or raise optim.warmup_steps), or set train.nonfinite=skip to skip such steps"
        )

    def fit(self) -> TrainResult:
        run, env = self.run, self.env
        start = 0
        if env.is_main:
            ckpt.clean_stale(self.output_dir)  # leftovers of a killed run: half-written temporaries, swaps
        env.barrier()
        resume_from = resume_directory(run)
        changes: list[str] = []
        if resume_from is not None:
            start, changes = self._resume(resume_from)
        if env.is_main:
            import yaml

            from ..io import write_text_atomic

            # only now: a refused resume leaves the run's config.yaml as it was
            write_text_atomic(self.output_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
            truncate_metrics(self.output_dir, start)
        reporter = Reporter(
            self.output_dir, total_steps=run.steps, start_step=start, enabled=env.is_main, progress=run.progress
        )
        if resume_from is not None:
            changed = f"; changed: {', '.join(changes)}" if changes else ""
            reporter.message(f"resumed from {resume_from} at step {start} of {run.steps}{changed}")
        elif run.resume is True:
            reporter.message(
                f"--resume: no checkpoint in {ckpt.checkpoint_root(self.output_dir)}; starting from step 0"
            )
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
                done = step + 1
                if record.get("nonfinite"):
                    if run.nonfinite == "stop":
                        reporter.step(record, write=True)
                        raise self._nonfinite_error(record)
                    self.skipped_steps += 1
                    record["skipped"] = True
                    reporter.message(f"step {done}: non-finite loss or gradient (loss {record['loss']}, gradient "
                                     f"norm {record['grad_norm']}), update skipped ({self.skipped_steps} so far)")
                if run.nonfinite == "skip":
                    record["skipped_steps"] = self.skipped_steps
                losses.append(record["loss"])
                for cb in self.callbacks:
                    cb(done, record)
                stop = self._stop_agreed()
                reporter.step(record, write=done % run.log_every == 0 or done == run.steps or stop)
                if stop or (run.save_every and (done % run.save_every == 0 or done == run.steps)):
                    last_ckpt = self.save(done, record["loss"])
                if stop:
                    interrupted = True
                    reporter.message(
                        f"stopped by {self._stop.signal_name or 'a signal'} after step {done}; checkpoint {last_ckpt}"
                    )
                    break
        finally:
            self._stop.uninstall()
            reporter.close()
            if self.context_parallel is not None:  # the model's own attention again (saved and returned so)
                self.context_parallel.restore(self.model)
        # (TrainResult is built field by field; its shape matches other keyword calls, nothing is shared)
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
            stop_signal=self._stop.signal_name if interrupted else None,
            skipped_steps=self.skipped_steps,
        )
