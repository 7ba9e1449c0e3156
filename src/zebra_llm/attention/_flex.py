"""FlexAttention plumbing shared by the variants' ``flex`` backends.

On CUDA the kernel and the block-mask construction are compiled, so no
``seq x seq`` tensor is built; on CPU FlexAttention runs eagerly (it then
materialises scores, which is fine for tests but not for long sequences).
"""

from __future__ import annotations

import functools

import torch

from .masks import Predicate


_BLOCK_MASKS: dict = {}
_MAX_CACHED_MASKS = 32


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


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
) -> torch.Tensor:
    """One FlexAttention call.

    Keys ``[0, n_band_keys)`` are ordinary keys, judged by ``predicate`` on
    absolute indices (query ``i`` is key-axis index ``i + q_offset``) and by the
    padding mask. Keys past ``n_band_keys`` are extra keys (chunk summaries)
    judged by ``extra_visible(b, q_idx, extra_idx)`` and scored with
    ``+extra_bias``. Without padding or extra keys the block mask depends only
    on ``cache_key`` (the predicate's identity, e.g. ``("local", window)``) and
    the sizes, and is reused across calls (every layer of a forward).
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    batch, _, seq_q, _ = q.shape
    seq_kv = k.shape[2]
    n_band = seq_kv if n_band_keys is None else n_band_keys
    kpm = key_padding_mask

    def mask_mod(b, h, q_idx, kv_idx):
        qa = q_idx + q_offset
        is_band = kv_idx < n_band
        band_idx = torch.clamp(kv_idx, max=n_band - 1)
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
            return torch.where(kv_idx >= n_band, score + extra_bias, score)

    on_cuda = q.device.type == "cuda"
    shared = kpm is None and extra_visible is None
    key = (cache_key, seq_q, seq_kv, str(q.device)) if shared and cache_key is not None else None
    block_mask = _BLOCK_MASKS.get(key) if key is not None else None
    if block_mask is None:
        block_mask = create_block_mask(
            mask_mod,
            B=None if shared else batch,
            H=None,
            Q_LEN=seq_q,
            KV_LEN=seq_kv,
            device=q.device,
            _compile=on_cuda,
        )
        if key is not None:
            if len(_BLOCK_MASKS) >= _MAX_CACHED_MASKS:
                _BLOCK_MASKS.pop(next(iter(_BLOCK_MASKS)))
            _BLOCK_MASKS[key] = block_mask
    if on_cuda:
        fn = _compiled_flex()
    else:
        import warnings

        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        fn = flex_attention
    return fn(
        q,
        k,
        v,
        score_mod=score_mod,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
