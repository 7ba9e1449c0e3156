"""Global attention keeps O(seq) memory with padding and with chunked prefill (issue 11, item 8).

Peak memory is the peak of live tensor bytes created inside the call (``helpers.PeakLiveBytes``),
measured at 8k tokens and compared with the unpadded, full-prefill run of the same size.
"""

from __future__ import annotations

import pytest
import torch

from zebra_llm import attention as A

from helpers import PeakLiveBytes

SEQ, DIM = 8192, 16


def _peak(fn) -> int:
    with torch.no_grad(), PeakLiveBytes() as probe:
        fn()
    return probe.peak


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, SEQ, DIM, generator=g)
    k = torch.randn(2, 1, SEQ, DIM, generator=g)
    v = torch.randn(2, 1, SEQ, DIM, generator=g)
    return q, k, v


@pytest.fixture(scope="module")
def baseline(qkv):
    q, k, v = qkv
    peak = _peak(lambda: A.global_attention(q, k, v, backend="sdpa"))
    assert peak >= q.nbytes  # the probe sees at least the output
    return peak


def _left(pads):
    mask = torch.ones(len(pads), SEQ, dtype=torch.bool)
    for b, p in enumerate(pads):
        mask[b, :p] = False
    return mask


def _right(pads):
    mask = torch.ones(len(pads), SEQ, dtype=torch.bool)
    for b, p in enumerate(pads):
        if p:
            mask[b, -p:] = False
    return mask


CASES = {
    "left-padding": lambda q, k, v: A.global_attention(q, k, v, key_padding_mask=_left([1000, 3000])),
    "right-padding": lambda q, k, v: A.global_attention(q, k, v, key_padding_mask=_right([0, 2500])),
    "chunked-prefill": lambda q, k, v: A.global_attention(q[:, :, -2048:], k, v),
    "chunked-prefill-left-padding": lambda q, k, v: A.global_attention(
        q[:, :, -2048:], k, v, key_padding_mask=_left([1000, 3000])
    ),
    "padding-with-holes": lambda q, k, v: A.global_attention(
        q[:, :, -1024:], k, v, key_padding_mask=_left([0, 3000]) & ~_left([0, 3000]).roll(-4000, 1)
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_padded_and_chunked_global_attention_within_1_5x_of_unpadded(qkv, baseline, case):
    q, k, v = qkv
    with A.use_backend("sdpa"):
        peak = _peak(lambda: CASES[case](q, k, v))
    assert peak <= 1.5 * baseline, f"{case}: peak {peak / 2**20:.1f} MiB vs unpadded {baseline / 2**20:.1f} MiB"


def test_probe_sees_a_dense_score_matrix():
    """Control: the dense reference's [seq, seq] scores register with the probe."""
    n = 1024
    q, k, v = (torch.randn(1, 1, n, DIM) for _ in range(3))
    assert _peak(lambda: A.global_attention(q, k, v, backend="reference")) >= n * n * 4
