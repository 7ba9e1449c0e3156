"""Kernel choice, made in one place.

A backend is *how* attention is computed; the variant (global, local,
global_approx) says *which* keys each query sees. Every variant registers one
implementation per backend it supports; ``resolve`` picks one for the inputs
at hand.

Backends:
  ``sdpa``        PyTorch ``scaled_dot_product_attention``; local variants use a
                  blocked band formulation, O(seq * window). Works everywhere.
  ``sdpa_stacked`` Dual Chunk Attention only: the three query copies side by
                  side in one SDPA call per block of queries (see ``dca.py``).
  ``flex``        FlexAttention with a block-sparse mask (compiled on CUDA).
  ``flash_attn``  flash-attn's ``window_size`` (CUDA, fp16/bf16, no padding mask;
                  install the ``flash`` extra).
  ``reference``   the dense oracle in ``reference.py`` (O(seq^2); debugging only).
  ``auto``        the fastest backend for the device, variant and pass in ``MEASURED`` among those
                  usable here; without a measurement: flash_attn when it applies, else flex on
                  CUDA, else sdpa.

Force one with the ``backend=`` argument, with ``use_backend(name)`` as a
context manager, with ``set_backend(name)``, or with the environment variable
``ZEBRA_ATTENTION_BACKEND``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator

import torch

BACKENDS = ("auto", "sdpa", "sdpa_stacked", "flex", "flash_attn", "reference")

_IMPLS: dict[tuple[str, str], Callable] = {}
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("zebra_attention_backend", default=None)


def register(variant: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``variant``'s implementation on ``backend``."""
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _IMPLS[(variant, backend)] = fn
        return fn

    return deco


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Set the default backend for this context (``None`` returns to ``auto``)."""
    _current.set(None if name is None else _check_name(name))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use ``name`` for every attention call inside the ``with`` block."""
    token = _current.set(_check_name(name))
    try:
        yield
    finally:
        _current.reset(token)


def default_backend() -> str:
    name = _current.get()
    if name is not None:
        return name
    return _check_name(os.environ.get("ZEBRA_ATTENTION_BACKEND", "auto"))


@functools.lru_cache(maxsize=None)
def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def flex_available() -> bool:
    """FlexAttention with what the ``flex`` backends use (torch >= 2.6; see ``_flex.py``)."""
    from ._flex import flex_available as available

    return available()


#: Time relative to causal SDPA at 16k tokens, window 512, float32, batch 1, 8 heads, head_dim 64, measured
#: side by side by ``benchmarks/peers.py`` (``docs/results/performance/peers.json``, row ``seq`` 16384; a test
#: checks these numbers against that file). Keyed by (device type, variant, pass); ``auto`` takes the fastest
#: usable entry. The ``flex`` figure is compiled FlexAttention: it can only win on CPU where it is compiled,
#: and it is not usable on CPU for ``auto`` anyway (no backward; a C++ compile per shape pattern; torch
#: 2.13's compiled CPU kernel returns wrong values for some decode shapes, see tests/test_flex_compile.py).
#: No CUDA machine was available for these measurements, so CUDA falls back to the static rule.
MEASURED: dict[tuple[str, str, str], dict[str, float]] = {
    ("cpu", "local", "fwd"): {"sdpa": 0.099, "flex": 0.208},
    ("cpu", "local", "fwd+bwd"): {"sdpa": 0.117},
    ("cpu", "global_approx", "fwd"): {"sdpa": 0.113},
    ("cpu", "global_approx", "fwd+bwd"): {"sdpa": 0.128},
}


def supported(variant: str) -> list[str]:
    return [b for (v, b) in _IMPLS if v == variant]


def resolve(variant: str, backend: str | None, q: torch.Tensor, *, padded: bool) -> Callable:
    """Pick ``variant``'s implementation for these inputs.

    ``padded`` says whether a key padding mask is in play (flash-attn's
    fixed-length kernel cannot take one).
    """
    name = _check_name(backend if backend is not None else default_backend())
    if name == "auto":
        name = _auto(variant, q, padded=padded)
    impl = _IMPLS.get((variant, name))
    if impl is None:
        raise ValueError(f"backend {name!r} does not implement {variant!r} attention; it has {supported(variant)}")
    if name == "flash_attn":
        if not flash_attn_available():
            raise ValueError("backend 'flash_attn' needs the flash-attn package and a CUDA device")
        if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16) or padded:
            raise ValueError(
                "backend 'flash_attn' needs CUDA tensors in float16 or bfloat16 and no key padding mask, "
                f"got device={q.device.type}, dtype={q.dtype}, padded={padded}"
            )
    return impl


def _usable(variant: str, name: str, q: torch.Tensor, *, padded: bool) -> bool:
    if (variant, name) not in _IMPLS:
        return False
    if name == "flash_attn":
        return flash_attn_available() and q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and not padded
    if name == "flex":
        return flex_available() and q.device.type == "cuda"  # see MEASURED on CPU
    return name != "reference"


def _auto(variant: str, q: torch.Tensor, *, padded: bool) -> str:
    pass_ = "fwd+bwd" if torch.is_grad_enabled() and q.requires_grad else "fwd"
    measured = MEASURED.get((q.device.type, variant, pass_), {})
    usable = [name for name in measured if _usable(variant, name, q, padded=padded)]
    if usable:
        return min(usable, key=measured.__getitem__)
    if q.device.type == "cuda":
        if (
            (variant, "flash_attn") in _IMPLS
            and flash_attn_available()
            and q.dtype in (torch.float16, torch.bfloat16)
            and not padded
        ):
            return "flash_attn"
        if (variant, "flex") in _IMPLS and flex_available():
            return "flex"
    return "sdpa"
