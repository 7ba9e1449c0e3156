"""What the blocked CPU kernels share: PyTorch's CPU flash kernel (forward and backward, both returning or
taking the log-sum-exp) and the exact merge of partial attentions through their log-sum-exp.

The blocked kernels (``full.py``'s causal segments, ``piecewise.py``'s merged blocks, ``local.py``'s band
and ``global_approx.py``'s summaries) each cut a query's keys into blocks, run one flash call per block and
merge the partial results: ``out = sum_b exp(lse_b - lse) out_b`` with ``lse = log sum_b exp(lse_b)``, the
exact softmax over the union. Given the *merged* output and log-sum-exp, the flash backward of each block is
that block's exact share of the gradient.
"""

from __future__ import annotations

import torch


def cpu_flash_ops():
    """``(forward, backward)`` of PyTorch's CPU flash kernel, or ``None`` where this torch has none."""
    ops = torch.ops.aten
    fwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    return None if fwd is None or bwd is None else (fwd, bwd)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype partial results are merged in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def merge(acc, part):
    """Fold one block's ``(out, lse)`` into the running ``(out, lse)`` (differentiable).

    ``out = sum_b exp(lse_b - lse) out_b`` with ``lse = log sum_b exp(lse_b)``: the exact
    softmax over the union of the blocks' keys. A row with no key yet has ``lse = -inf``
    and weight 0.
    """
    out, lse = part
    dtype = acc_dtype(out.dtype)
    if acc is None:
        return out.to(dtype), lse.to(dtype)
    acc_out, acc_lse = acc
    new = torch.logaddexp(acc_lse, lse.to(dtype))
    w_acc = torch.nan_to_num(torch.exp(acc_lse - new), nan=0.0)[..., None]
    w_part = torch.nan_to_num(torch.exp(lse.to(dtype) - new), nan=0.0)[..., None]
    return acc_out * w_acc + out.to(dtype) * w_part, new


NO_KEY_LSE = -1.0e30  # the log-sum-exp of a row with no key in a block: finite, so merging needs no NaN guard


def merge_rows_(acc_out, acc_lse, rows: slice, part) -> None:
    """:func:`merge` in place on rows ``rows`` of the running output and log-sum-exp, for the
    no-autograd forward (groups of a plan may share rows). Rows not reached yet carry
    :data:`NO_KEY_LSE`, as do rows without keys in a block: their weight ``exp(NO_KEY_LSE - lse)`` is 0.
    """
    out, lse = part
    prev = acc_lse[:, :, rows]
    lse = lse.to(prev.dtype)
    new = torch.logaddexp(prev, lse)
    acc_out[:, :, rows].mul_(torch.exp(prev - new)[..., None]).addcmul_(out, torch.exp(lse - new)[..., None])
    acc_lse[:, :, rows] = new


__all__ = ["NO_KEY_LSE", "acc_dtype", "cpu_flash_ops", "merge", "merge_rows_"]
