"""FlexAttention plumbing shared by the variants' ``flex`` backends.

On CUDA the kernel and the block-mask construction are compiled, so no
``seq x seq`` tensor is built; on CPU FlexAttention runs eagerly unless asked
to compile (eager materialises scores, which is fine for tests but not for long
sequences; compiling on CPU needs a C++ compiler and costs seconds per shape
pattern).

Compiled with dynamic shapes, and every size that changes from call to call
(the query offset, the number of band keys) reaches ``mask_mod`` as a 0-d
tensor, not a Python int: dynamo guards on captured ints, so with
``dynamic=False`` or an int offset every decode step (one more key) was a new
graph, and after ``torch._dynamo.config.recompile_limit`` of them dynamo fell
back to eager FlexAttention, which materialises the scores (issue 11, item 9).
That fallback's warnings are not filtered.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .masks import Predicate

_BLOCK_MASKS: dict = {}
_MAX_CACHED_MASKS = 32

#: Oldest torch whose FlexAttention has what ``flex_run`` uses (``enable_gqa``,
#: compiled CPU kernels); ``AuxRequest``/``return_aux`` came in 2.9.
MIN_TORCH = (2, 6)
MIN_TORCH_AUX = (2, 9)


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


@functools.lru_cache(maxsize=None)
def flex_available() -> bool:
    """FlexAttention with everything ``flex_run`` needs (torch >= 2.6)."""
    import importlib.util

    return torch_version() >= MIN_TORCH and importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def flex_has_aux() -> bool:
    """``flex_attention(..., return_aux=AuxRequest(lse=True))`` exists (torch >= 2.9)."""
    return flex_available() and torch_version() >= MIN_TORCH_AUX


def require_flex() -> None:
    if not flex_available():
        raise ValueError(
            f"backend 'flex' needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]} with torch.nn.attention.flex_attention, "
            f"got torch {torch.__version__}"
        )


@functools.lru_cache(maxsize=None)
def compiled_flex():
    """``flex_attention`` compiled once for every shape (dynamic shapes, see the module docstring)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


@functools.lru_cache(maxsize=None)
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask, dynamic=True)


#: Above this many (query, key) pairs the block mask is built by a compiled function: eager
#: ``create_block_mask`` evaluates ``mask_mod`` on the full grid (a 64k prefill: 4 GiB of booleans).
_EAGER_MASK_PAIRS = 1 << 22


def _eager_flex(*args, **kwargs):
    """Eager FlexAttention, chosen on purpose (CPU tests): its "called without torch.compile"
    warning is silenced here only, so a compiled call that falls back to eager still warns."""
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


def flex_run(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    predicate: Predicate,
    key_padding_mask: torch.Tensor | None,
    q_offset: int,
    n_band_keys: int | None = None,
    extra_visible=None,
    extra_bias: float = 0.0,
    cache_key: tuple | None = None,
    compile: bool | None = None,
) -> torch.Tensor:
    """One FlexAttention call.

    Keys ``[0, n_band_keys)`` are ordinary keys, judged by ``predicate`` on
    absolute indices (query ``i`` is key-axis index ``i + q_offset``) and by the
    padding mask. Keys past ``n_band_keys`` are extra keys (chunk summaries)
    judged by ``extra_visible(b, q_idx, extra_idx)`` and scored with
    ``+extra_bias``. Without padding or extra keys the block mask depends only
    on ``cache_key`` (the predicate's identity, e.g. ``("local", window)``) and
    the sizes, and is reused across calls (every layer of a forward).
    ``compile``: run the compiled kernel (default: on CUDA only).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    require_flex()

    batch, _, seq_q, _ = q.shape
    seq_kv = k.shape[2]
    n_band = seq_kv if n_band_keys is None else n_band_keys
    kpm = key_padding_mask
    # 0-d tensors, not ints: a captured int is a guard, so a new offset would be a new graph.
    offset_t = torch.tensor(q_offset, device=q.device)
    last_band_t = torch.tensor(n_band - 1, device=q.device)

    def mask_mod(b, h, q_idx, kv_idx):
        qa = q_idx + offset_t
        is_band = kv_idx <= last_band_t
        band_idx = torch.minimum(kv_idx, last_band_t)
        ok = predicate(qa, band_idx)
        if kpm is not None:
            ok = ok & (kpm[b, band_idx] | (band_idx == qa))
        ok = ok & is_band
        if extra_visible is not None:
            extra = extra_visible(b, q_idx, torch.clamp(kv_idx - n_band, min=0))
            ok = ok | (~is_band & extra)
        return ok

    score_mod = None
    if extra_visible is not None and extra_bias != 0.0:

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(kv_idx > last_band_t, score + extra_bias, score)

    on_cuda = q.device.type == "cuda"
    compiled = on_cuda if compile is None else compile
    shared = kpm is None and extra_visible is None
    key = (cache_key, seq_q, seq_kv, str(q.device)) if shared and cache_key is not None else None
    block_mask = _BLOCK_MASKS.get(key) if key is not None else None
    if block_mask is None:
        make = create_block_mask
        if compiled and seq_q * seq_kv > _EAGER_MASK_PAIRS:
            make = _compiled_create_block_mask()
        block_mask = make(
            mask_mod,
            B=None if shared else batch,
            H=None,
            Q_LEN=seq_q,
            KV_LEN=seq_kv,
            device=q.device,
        )
        if key is not None:
            if len(_BLOCK_MASKS) >= _MAX_CACHED_MASKS:
                _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
            _BLOCK_MASKS[key] = block_mask
    fn = compiled_flex() if compiled else _eager_flex
    return fn(
        q,
        k,
        v,
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


# --- the log-sum-exp, for kernels that merge FlexAttention blocks (the piecewise methods) -----------


def flex_lse_kwargs() -> dict:
    """How this torch asks FlexAttention for the log-sum-exp.

    ``return_aux=AuxRequest(lse=True)`` exists from torch 2.9; torch 2.5-2.8 have
    ``return_lse=True`` (deprecated in 2.9); anything older has no FlexAttention
    log-sum-exp at all.
    """
    import inspect

    from torch.nn.attention import flex_attention as fa

    params = inspect.signature(fa.flex_attention).parameters
    if "return_aux" in params and hasattr(fa, "AuxRequest"):
        return {"return_aux": fa.AuxRequest(lse=True)}
    if "return_lse" in params:
        return {"return_lse": True}
    raise ValueError(
        f"backend 'flex' for the piecewise methods needs FlexAttention's log-sum-exp (torch >= 2.5), this is "
        f"torch {torch.__version__}; use backend 'sdpa'"
    )


@functools.lru_cache(maxsize=64)
def causal_block_mask(n: int, device: str):
    """The top-left causal block mask of an ``n x n`` block (reused by every layer and step)."""
    from torch.nn.attention.flex_attention import create_block_mask

    compiled = device.startswith("cuda") and n * n > _EAGER_MASK_PAIRS
    make = _compiled_create_block_mask() if compiled else create_block_mask
    return make(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx, B=None, H=None, Q_LEN=n, KV_LEN=n, device=device)


def flex_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float):
    """One FlexAttention block, ``(out, lse)``: compiled on CUDA (dynamic shapes: block sizes change with the
    chunk index and the length), eager elsewhere (tests; no backward on CPU)."""
    require_flex()
    mask = causal_block_mask(q.shape[2], str(q.device)) if causal else None
    fn = compiled_flex() if q.device.type == "cuda" else _eager_flex
    result = fn(q, k, v, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1], **flex_lse_kwargs())
    out, aux = result
    return out, (aux.lse if hasattr(aux, "lse") else aux)
