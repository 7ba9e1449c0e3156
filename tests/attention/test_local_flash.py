"""The flash-style CPU band of ``local_attention`` (issue 13, item 6) against the dense reference,
and what it keeps for backward."""

from __future__ import annotations

import pytest
import torch

from zebra_llm import attention as A
from zebra_llm.attention import local as L
from zebra_llm.attention import reference as R

from helpers import max_abs_err, rand_qkv, rel_err


# (batch, heads_q, heads_kv, seq_q, seq_kv, dim, window): windows that divide the block and ones that do
# not (131 is prime: the overlap-add takes its per-block path), queries that are the last of longer keys.
CASES = [
    pytest.param(2, 4, 2, 300, 300, 16, 64, id="gqa-window-divides-block"),
    pytest.param(1, 2, 2, 400, 400, 8, 131, id="prime-window"),
    pytest.param(1, 4, 1, 50, 300, 8, 40, id="queries-last-of-keys"),
    pytest.param(2, 2, 2, 7, 7, 8, 3, id="shorter-than-a-block"),
]


@pytest.mark.parametrize("batch,hq,hkv,sq,skv,dim,window", CASES)
def test_forward_and_gradients_match_reference(batch, hq, hkv, sq, skv, dim, window):
    q, k, v = rand_qkv(batch, hq, hkv, sq, dim, seq_kv=skv, requires_grad=True)
    fast = _check_against_reference(A.local_attention, R.local_attention, q, k, v, window=window)
    assert fast.grad_fn is not None and "FlashBand" in type(fast.grad_fn).__name__


def _check_against_reference(fast_fn, ref_fn, q, k, v, **settings):
    """Output within 1e-5 relative and q/k/v gradients within 1e-4 of the reference; returns the fast output."""
    grad_out = torch.randn(q.shape)
    outs, grads = [], []
    for fn in (fast_fn, ref_fn):
        out = fn(q, k, v, **settings)
        outs.append(out)
        grads.append(torch.autograd.grad(out, (q, k, v), grad_out))
    assert rel_err(outs[0], outs[1]) <= 1e-5
    for name, fast, ref in zip("qkv", *grads):
        assert max_abs_err(fast, ref) <= 1e-4, name
    return outs[0]


def test_float64_gradcheck():
    q, k, v = (t.double() for t in rand_qkv(1, 2, 1, 23, 4, seq_kv=23))
    for t in (q, k, v):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *t: A.local_attention(*t, window=5), (q, k, v), fast_mode=True)


def _saved_bytes(fn, *args):
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


def test_backward_keeps_o_n_head_dim():
    """Saved for backward: q, k, v, the output and a float32 log-sum-exp per query, nothing per window
    (the blocked SDPA path kept every block's keys and values)."""
    batch, heads, seq, dim, window = 2, 4, 1024, 16, 128
    q, k, v = rand_qkv(batch, heads, heads, seq, dim, requires_grad=True)
    saved = _saved_bytes(lambda *t: A.local_attention(*t, window=window), q, k, v)
    tensor = batch * heads * seq * dim * 4
    assert saved <= 4 * tensor + batch * heads * seq * 4
    blocked = _saved_bytes(lambda *t: L.windowed_attention(*t, window=window, scale=0.25), q, k, v)
    assert saved < blocked


# global_approx on the same band kernel, its chunk summaries merged in by log-sum-exp: (batch, heads_q,
# heads_kv, seq_q, seq_kv, dim, window, chunk_size)
APPROX_CASES = [
    pytest.param(2, 4, 2, 300, 300, 16, 64, 16, id="gqa"),
    pytest.param(1, 2, 2, 400, 400, 8, 131, 7, id="prime-window-odd-chunk"),
    pytest.param(1, 4, 1, 50, 300, 8, 40, 32, id="queries-last-of-keys"),
    pytest.param(1, 2, 2, 1, 90, 8, 16, 8, id="one-query"),
    pytest.param(2, 2, 2, 60, 60, 8, 16, 64, id="no-complete-chunk"),
    pytest.param(1, 2, 2, 20, 20, 8, 16, 8, id="chunks-none-visible"),
]


@pytest.mark.parametrize("batch,hq,hkv,sq,skv,dim,window,chunk", APPROX_CASES)
def test_global_approx_forward_and_gradients_match_reference(batch, hq, hkv, sq, skv, dim, window, chunk):
    q, k, v = rand_qkv(batch, hq, hkv, sq, dim, seq_kv=skv, requires_grad=True)
    fast = _check_against_reference(A.global_approx_attention, R.global_approx_attention, q, k, v,
                                    window=window, chunk_size=chunk)
    if skv // chunk:  # with at least one complete chunk the summaries are merged in
        assert "FlashBandSummaries" in type(fast.grad_fn).__name__


def test_global_approx_float64_gradcheck():
    q, k, v = (t.double() for t in rand_qkv(1, 2, 1, 29, 4, seq_kv=29))
    for t in (q, k, v):
        t.requires_grad_(True)
    fn = lambda *t: A.global_approx_attention(*t, window=5, chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


def test_global_approx_backward_keeps_o_n_head_dim():
    """Saved: what local attention saves, plus the summaries (seq / chunk_size keys and values) and the
    summary mask; nothing per block."""
    batch, heads, seq, dim, window, chunk = 2, 4, 1024, 16, 128, 64
    q, k, v = rand_qkv(batch, heads, heads, seq, dim, requires_grad=True)
    saved = _saved_bytes(lambda *t: A.global_approx_attention(*t, window=window, chunk_size=chunk), q, k, v)
    tensor = batch * heads * seq * dim * 4
    summaries = 2 * batch * heads * (seq // chunk) * dim * 4
    assert saved <= 4 * tensor + batch * heads * seq * 4 + summaries + seq * (seq // chunk) * 4
    blocked = _saved_bytes(lambda *t: L.windowed_attention(*t, window=window, scale=0.25, extra=None), q, k, v)
    assert saved < 2 * blocked
