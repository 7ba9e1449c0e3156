"""The training loss: summed token cross-entropy, normalised by the caller.

Summing here and dividing by the number of target tokens of the whole global
batch (every micro-batch, every process) makes the gradient independent of how
the batch is split: one process with gradient accumulation, several processes,
and padded batches of uneven examples all give the mean over the same tokens.
Averaging per micro-batch instead would weight short and long examples
differently (transformers' ``num_items_in_batch`` fix, for the same reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.packing import IGNORE


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies of the next-token predictions, in float32.

    ``logits`` is ``[batch, seq, vocab]``; ``labels`` is ``[batch, seq]`` in
    transformers' convention (aligned with the inputs, -100 for no loss): the
    prediction at position ``t`` is scored against ``labels[t + 1]``.
    """
    vocab = logits.shape[-1]
    # Shift by padding the labels rather than slicing the logits: no copy of the
    # [batch, seq, vocab] tensor (transformers' ForCausalLMLoss does the same).
    target = F.pad(labels[:, 1:], (0, 1), value=IGNORE)  # [batch, seq]
    return F.cross_entropy(
        logits.float().reshape(-1, vocab), target.reshape(-1).to(logits.device), ignore_index=IGNORE, reduction="sum"
    )
