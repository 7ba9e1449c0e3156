"""RoPE rotations of the piecewise kernel: turning queries and keys by any (real) number of positions, and
the cached cos/sin tables of the key rotations (decoding turns the same key ranks at every step).

Queries and keys reach the kernel rotated at their ordinary positions; a region of a spec
(``specs.PiecewiseSpec``) scores them at other positions, which is a further rotation by the difference
(RoPE is relative: the offsets cancel). Rotations are orthogonal, so gradients turn back by the inverse.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import torch

from ._cpu_flash import acc_dtype
from .specs import PiecewiseSpec


def rotate(x: torch.Tensor, shift: torch.Tensor | None, inv_freq: torch.Tensor) -> torch.Tensor:
    """Turn ``x`` (``[..., L, D]``) by RoPE through ``shift`` positions (``[L]`` or ``[B, L]``, any real values).

    Angles are formed in float64 (float32 where the device has none) so that a
    shift of tens of thousands of positions loses no precision; the rotation runs
    in float32 (float64 for float64 inputs) and returns ``x``'s dtype.
    """
    if shift is None:
        return x
    cos, sin = _cos_sin(shift, inv_freq, x)
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]  # shift [B, L]: (B, 1, L, half), one rotation per row shared by heads
    return _turn(x, cos, sin)


def _cos_sin(shift: torch.Tensor, inv_freq: torch.Tensor, like: torch.Tensor):
    """``cos`` and ``sin`` of ``shift * inv_freq`` (``[..., L, half]``) in ``like``'s working dtype."""
    wide = torch.float32 if like.device.type == "mps" else torch.float64
    angles = shift.to(device=like.device, dtype=wide)[..., None] * inv_freq.to(device=like.device, dtype=wide)
    work = acc_dtype(like.dtype)
    return torch.cos(angles).to(work), torch.sin(angles).to(work)


def _turn(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation itself: ``cos``/``sin`` broadcast against ``x[..., :half]``."""
    half = cos.shape[-1]
    xf = x.to(cos.dtype)
    x1, x2 = xf[..., :half], xf[..., half : 2 * half]
    # Under torch.compile the expression form too: inductor (torch 2.13) fails to lower ``mul(..., out=view)``
    # with symbolic shapes ("mul expected 2 arguments, got 3", issue 25.5), and fuses the expression anyway.
    if (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling():
        turned = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., 2 * half :]], dim=-1)
    else:  # no graph to keep: two fused passes per half into one buffer (decoding turns every key each step)
        turned = torch.empty(xf.shape, dtype=xf.dtype, device=xf.device)
        t1, t2 = turned[..., :half], turned[..., half : 2 * half]
        torch.mul(x1, cos, out=t1).addcmul_(x2, sin, value=-1)
        torch.mul(x2, cos, out=t2).addcmul_(x1, sin)
        turned[..., 2 * half :] = xf[..., 2 * half :]
    return turned.to(x.dtype)


# Key rotations of a region depend on the key's rank only, and decoding rotates the same ranks at every
# step, so their cos/sin tables are kept between calls (least recently used first out). A table grows to
# twice its length when a longer sequence needs it.
_KEY_TABLES: OrderedDict = OrderedDict()
_KEY_TABLES_LOCK = threading.Lock()
KEY_TABLES_KEPT = 8


def key_shift(spec: PiecewiseSpec, region: int, k0: int, k1: int) -> torch.Tensor:
    """``key_positions(region, j) - j`` for ranks ``k0 <= j < k1`` (float64): how far ``region`` moves each key."""
    ranks = torch.arange(k0, k1)
    return spec.key_positions(region, ranks).to(torch.float64) - ranks


def _spec_key(spec: PiecewiseSpec) -> tuple:
    return (type(spec), tuple(sorted(vars(spec).items())))


# The frequencies' values, read once per tensor (and again after an in-place change, which bumps its
# version): reading a CUDA tensor's values waits for the device, which a decoding step should not do per layer.
_FREQ_VALUES: dict[int, tuple] = {}  # id(tensor) -> (weak reference, version, values)


def _freq_values(inv_freq: torch.Tensor) -> tuple:
    with _KEY_TABLES_LOCK:
        seen = _FREQ_VALUES.get(id(inv_freq))
        if seen is not None and seen[0]() is inv_freq and seen[1] == inv_freq._version:
            return seen[2]
    values = tuple(inv_freq.tolist())
    with _KEY_TABLES_LOCK:
        for ident in [i for i, entry in _FREQ_VALUES.items() if entry[0]() is None]:  # tensors gone
            del _FREQ_VALUES[ident]
        _FREQ_VALUES[id(inv_freq)] = (weakref.ref(inv_freq), inv_freq._version, values)
    return values


def key_rotation(spec: PiecewiseSpec, region: int, n: int, inv_freq: torch.Tensor, like: torch.Tensor):
    """``cos``, ``sin`` (``[n, half]``) turning keys of ranks ``0 .. n - 1`` to ``region``'s key positions."""
    key = (_spec_key(spec), region, _freq_values(inv_freq), like.device, acc_dtype(like.dtype))
    with _KEY_TABLES_LOCK:  # models may decode in several threads
        table = _KEY_TABLES.get(key)
        if table is None or table[0].shape[0] < n:
            length = n if table is None else max(n, 2 * table[0].shape[0])
            table = _cos_sin(key_shift(spec, region, 0, length), inv_freq, like)
            _KEY_TABLES[key] = table
            while len(_KEY_TABLES) > KEY_TABLES_KEPT:
                _KEY_TABLES.popitem(last=False)
        _KEY_TABLES.move_to_end(key)
    return table[0][:n], table[1][:n]


__all__ = ["KEY_TABLES_KEPT", "key_rotation", "key_shift", "rotate"]
