"""Kernel choice, made in one place.

A backend is *how* attention is computed; the variant (global, local,
global_approx, piecewise: every training-free extension method, each a spec of
``specs.py``) says *which* keys each query sees and at which positions. Every
variant registers one implementation per backend it supports; ``resolve`` picks
one for the inputs at hand.

Backends:
  ``sdpa``        PyTorch ``scaled_dot_product_attention``; local variants use a
                  blocked band formulation, O(seq * window). Works everywhere.
  ``tiled``       piecewise only: its blocks by plain matrix products in float32 (any device).
  ``sdpa_stacked`` piecewise only, for plans of disjoint query groups without boundary
                  masks (DCA's): one query copy per region side by side in one SDPA call
                  per block of queries (see ``piecewise.py``).
  ``flex``        FlexAttention with a block-sparse mask (compiled on CUDA); the piecewise
                  blocks merged through its log-sum-exp.
  ``flash_attn``  flash-attn's ``window_size`` (CUDA, fp16/bf16, no padding mask;
                  install the ``flash`` extra); the piecewise blocks merged through its
                  log-sum-exp, inference only (that log-sum-exp carries no gradient).
  ``reference``   the dense oracle in ``reference.py`` (O(seq^2); debugging only).
  ``auto``        the fastest backend for the device, variant and pass in ``MEASURED`` among those
                  usable here; without a measurement: flash_attn when it applies, else flex on
                  CUDA, else sdpa. The same rule for every variant.

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

BACKENDS = ("auto", "sdpa", "tiled", "sdpa_stacked", "flex", "flash_attn", "reference")

_IMPLS: dict[tuple[str, str], Callable] = {}
_NO_GRAD: set[tuple[str, str]] = set()  # implementations that compute no gradient (forward only)
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("zebra_attention_backend", default=None)


def register(variant: str, backend: str, *, grad: bool = True) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``variant``'s implementation on ``backend`` (``grad=False``: it
    computes no gradient, so ``resolve`` refuses it where one is needed and ``auto`` passes it over)."""
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _IMPLS[(variant, backend)] = fn
        if not grad:
            _NO_GRAD.add((variant, backend))
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
#: 2.13's compiled CPU kernel returns wrong values for some decode shapes, see
#: tests/attention/test_flex_compile.py).
#: No CUDA machine was available for these measurements, so CUDA falls back to the static rule.
MEASURED: dict[tuple[str, str, str], dict[str, float]] = {
    ("cpu", "local", "fwd"): {"sdpa": 0.099, "flex": 0.208},
    ("cpu", "local", "fwd+bwd"): {"sdpa": 0.117},
    ("cpu", "global_approx", "fwd"): {"sdpa": 0.113},
    ("cpu", "global_approx", "fwd+bwd"): {"sdpa": 0.128},
}


def supported(variant: str) -> list[str]:
    return [b for (v, b) in _IMPLS if v == variant]


def implements(variant: str, backend: str) -> bool:
    return (variant, backend) in _IMPLS


def _needs_grad(q: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and q.requires_grad


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
    if (variant, name) in _NO_GRAD and _needs_grad(q):
        raise ValueError(
            f"backend {name!r} computes {variant!r} attention without gradients; "
            f"use {_auto(variant, q, padded=padded)!r} to train"
        )
    return impl


def _usable(variant: str, name: str, q: torch.Tensor, *, padded: bool) -> bool:
    if (variant, name) not in _IMPLS or ((variant, name) in _NO_GRAD and _needs_grad(q)):
        return False
    if name == "flash_attn":
        return flash_attn_available() and q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and not padded
    if name == "flex":
        return flex_available() and q.device.type == "cuda"  # see MEASURED on CPU
    return name != "reference"


def _auto(variant: str, q: torch.Tensor, *, padded: bool) -> str:
    pass_ = "fwd+bwd" if _needs_grad(q) else "fwd"
    measured = MEASURED.get((q.device.type, variant, pass_), {})
    usable = [name for name in measured if _usable(variant, name, q, padded=padded)]
    if usable:
        return min(usable, key=measured.__getitem__)
    if q.device.type == "cuda":
        if _usable(variant, "flash_attn", q, padded=padded):
            return "flash_attn"
        if _usable(variant, "flex", q, padded=padded):
            return "flex"
    return "sdpa"
