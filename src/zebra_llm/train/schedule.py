"""The learning-rate schedule: a pure function of the step (nanoGPT's
``get_lr``), so resuming at step k gives the same rate as never stopping.

``lr_factor(step)`` multiplies the base rate at optimizer step ``step``
(0-based): a linear warmup over ``warmup_steps`` steps that reaches 1 at step
``warmup_steps - 1`` (the first step does not waste itself at rate 0), then a
decay from 1 to ``min_ratio`` at the last step ``total_steps - 1``. Decays are
registered by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(progress: float) -> float:
    return 1.0 - progress


def _constant(progress: float) -> float:
    return 1.0


# progress in [0, 1] -> weight in [0, 1] of the peak rate above min_ratio
DECAYS: dict[str, Callable[[float], float]] = {"cosine": _cosine, "linear": _linear, "constant": _constant}


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.1, decay: str = "cosine") -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got {decay!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * DECAYS[decay](progress)


def make_lr_lambda(optim, total_steps: int) -> Callable[[int], float]:
    """The factor as a one-argument function for ``torch.optim.lr_scheduler.LambdaLR``."""

    def factor(step: int) -> float:
        return lr_factor(
            step, total_steps=total_steps, warmup_steps=optim.warmup_steps, min_ratio=optim.min_lr_ratio, decay=optim.decay
        )

    return factor
