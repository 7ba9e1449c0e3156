"""Resumable checkpoints, written atomically.

A checkpoint is a directory ``<output_dir>/checkpoints/step_XXXXXXXX`` that is
also a transformers model directory (``config.json``, ``model.safetensors``
and the tokenizer; for a LoRA run the peft adapter instead), plus

* ``optimizer.pt``: the optimizer state keyed by parameter name (gathered
  from every process under FSDP2, so it loads into any number of processes),
* ``scheduler.pt``: the LR scheduler's state,
* ``rng.pt``: the Python, NumPy, torch (and CUDA) RNG states of every process,
* ``trainer_state.json``: the step, the data position and what the data was.

Rank 0 builds the directory under a temporary name, fsyncs it and renames it
into place (``zebra_llm.io.atomic_directory``), so a crash, kill or power loss
never leaves a half-written checkpoint under a real name. A checkpoint being
replaced is kept under a fixed backup name (``.step_XXXXXXXX.old``) until the
new one is in place; :func:`list_checkpoints` finds it there too, and
:func:`clean_stale` (run when training starts) moves it back and removes the
temporaries a killed run left. Every file is read back with safetensors or
``torch.load(weights_only=True)``; a truncated or corrupt file is a ValueError
naming it.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..io import atomic_directory, backup_path, recover_directory, write_json_atomic
from .distributed import DistEnv
from .parallelize import unwrap

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_STEP_BACKUP = re.compile(r"^\.step_(\d+)\.old$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first. A checkpoint that a
    crash left only under its backup name (see :func:`zebra_llm.io.atomic_directory`)
    is listed under that name."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = {}
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found[int(m.group(1))] = p
    for p in root.iterdir():
        m = _STEP_BACKUP.match(p.name)
        if m and int(m.group(1)) not in found and (p / STATE_FILE).is_file():
            found[int(m.group(1))] = p
    return [found[k] for k in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def clean_stale(output_dir: str | Path) -> list[Path]:
    """Tidy a run directory after a kill (main process, before training): move a
    checkpoint or final model that exists only under its backup name back into
    place, and remove half-written temporaries (``.*.tmp``) and backups whose
    original is complete. Returns what was removed."""
    out = Path(output_dir)
    removed = []
    # only names this package writes: a user's own hidden files in output_dir are left alone
    ours = {out: (".final.", ".metrics.jsonl.", ".config.yaml."), checkpoint_root(out): (".step_",)}
    for root, prefixes in ours.items():
        if not root.is_dir():
            continue
        for p in sorted(root.iterdir()):
            if not p.name.startswith(prefixes):
                continue
            if p.name.endswith(".old") and p.is_dir():
                original = p.parent / p.name[1:-len(".old")]
                if backup_path(original) != p:
                    continue
                if recover_directory(original) is not None and p.exists():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
            elif p.name.endswith(".tmp"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- RNG


def rng_state(device: torch.device) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- model state


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def full_model_state(model) -> dict:
    """The full (unsharded) state dict on rank 0, keyed like the unwrapped model;
    a collective call under FSDP2. Tied parameters (output embeddings shared
    with the input ones) appear once: gathered from shards they are separate
    tensors, which ``save_pretrained`` would store twice."""
    inner = unwrap(model)
    sd = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    for name in _tied_names(inner):
        sd.pop(name, None)
    return sd


def save_model_dir(directory: Path, model, tokenizer, state_dict: dict | None = None) -> None:
    """Write a transformers model directory (rank 0 only)."""
    with quiet_transformers():
        unwrap(model).save_pretrained(directory, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)


@contextlib.contextmanager
def quiet_transformers():
    """No "Writing model shards" bar in the middle of the training bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _read_safetensors_dir(directory: Path, stem: str) -> dict:
    from ..loading import load_safetensors, safetensors_files

    files = safetensors_files(directory, stem)
    if not files:
        raise FileNotFoundError(f"train.resume: checkpoint {directory} has no {stem}.safetensors")
    out = {}
    for f in files:
        out.update(load_safetensors(f, what="train.resume"))
    return out


def load_model_weights(directory: Path, model) -> None:
    """Load a checkpoint's weights into the (possibly wrapped or sharded) model."""
    inner = unwrap(model)
    if is_peft(inner):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(inner, _read_safetensors_dir(directory, "adapter_model"))
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ValueError(f"checkpoint {directory}: adapter weights {unexpected[:3]} do not fit the model")
        return
    sd = _read_safetensors_dir(directory, "model")
    try:
        result = set_model_state_dict(inner, sd, options=StateDictOptions(full_state_dict=True, strict=False))
    except RuntimeError as e:  # a tensor of another shape ("size mismatch for ...")
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), _first_line(e))
        raise ValueError(f"train.resume: checkpoint {directory} does not fit the model: {detail}") from None
    tied = _tied_names(inner)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {directory} does not fit the model: missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}"
        )


def _tied_names(model) -> set[str]:
    """Names of parameters that share storage with an earlier one (tied embeddings):
    ``save_pretrained`` stores them once."""
    seen, tied = {}, set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    directory: Path,
    *,
    model,
    optimizer,
    scheduler,
    tokenizer,
    state: dict,
    env: DistEnv,
) -> Path:
    """Write a resumable checkpoint; every process must call this (the state is
    gathered), rank 0 writes."""
    model_sd = full_model_state(model)
    optim_sd = get_optimizer_state_dict(
        unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    rngs = env.gather_objects(rng_state(env.device))
    if env.is_main:
        with atomic_directory(directory) as tmp:
            save_model_dir(tmp, model, tokenizer, model_sd)
            torch.save(optim_sd, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save({"ranks": rngs}, tmp / "rng.pt")
            write_json_atomic(tmp / STATE_FILE, {**state, "world_size": env.world_size})
    env.barrier()
    return directory


def read_state(directory: Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"train.resume: {directory} is not a checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"train.resume: {path} is corrupt ({_first_line(e)}); resume from another checkpoint") from None
    step = state.get("step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(state.get("data"), dict):
        raise ValueError(
            f"train.resume: {path} is corrupt (expected an object with an integer step and the data position); "
            "resume from another checkpoint"
        )
    return state


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _torch_load(path: Path):
    """``torch.load(weights_only=True)`` of a checkpoint file, a missing, truncated or
    corrupt file being an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"train.resume: {path} is missing; the checkpoint is incomplete")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # zip/pickle errors of many types: RuntimeError, EOFError, UnpicklingError
        raise ValueError(
            f"train.resume: {path} is truncated or corrupt ({type(e).__name__}: {_first_line(e)[:120]}); "
            "resume from another checkpoint"
        ) from None


def load_checkpoint(directory: Path, *, model, optimizer, scheduler, env: DistEnv) -> dict:
    """Restore weights, optimizer, scheduler and this process's RNG; return the
    trainer state (step, data position)."""
    directory = Path(directory)
    state = read_state(directory)
    load_model_weights(directory, model)
    optim_sd = _torch_load(directory / "optimizer.pt")
    scheduler_sd = _torch_load(directory / "scheduler.pt")
    rng_file = _torch_load(directory / "rng.pt")
    try:
        set_optimizer_state_dict(unwrap(model), optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(scheduler_sd)
        rngs = rng_file["ranks"]
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"train.resume: the optimizer, scheduler or RNG state in {directory} does not fit this run "
            f"({type(e).__name__}: {_first_line(e)[:120]})"
        ) from None
    # Same number of processes: each gets its own stream back. Otherwise rank 0's
    # (the data order does not depend on the process count; only dropout would).
    set_rng_state(rngs[env.rank] if len(rngs) == env.world_size else rngs[0], env.device)
    return state
