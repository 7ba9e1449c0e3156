"""Small utilities shared by the tests."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def rand_qkv(batch, heads_q, heads_kv, seq_q, dim, *, seq_kv=None, dtype=torch.float32, requires_grad=False):
    seq_kv = seq_q if seq_kv is None else seq_kv
    q = torch.randn(batch, heads_q, seq_q, dim, dtype=dtype)
    k = torch.randn(batch, heads_kv, seq_kv, dim, dtype=dtype)
    v = torch.randn(batch, heads_kv, seq_kv, dim, dtype=dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to the reference's scale."""
    return max_abs_err(a, ref) / max(ref.float().abs().max().item(), 1e-12)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in elements) any op produces inside the block."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out
