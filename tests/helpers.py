"""Small utilities shared by the tests."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

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


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the block and still alive (measured at each op).

    Every op's new outputs are counted once per storage until the last Python tensor on that storage
    is freed (``weakref.finalize``); views and in-place results (an output on an input's storage) are
    not new memory. What a
    kernel allocates internally and frees before returning is not seen, but every score matrix or
    mask built by separate ops is.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)
        }
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in inputs:  # a view or an in-place result: no new memory
                continue
            entry = self.live.get(ptr)
            if entry is None:
                entry = self.live[ptr] = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (its directory on ``sys.path``: scripts import each other)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ListQueue:
    """Stands in for a benchmark child's multiprocessing queue: keeps what is put."""

    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
