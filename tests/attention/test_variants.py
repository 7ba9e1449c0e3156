"""Every attention fast path against the dense reference."""

from __future__ import annotations

import math

import pytest
import torch

from zebra_llm import attention as A
from zebra_llm.attention import reference as R

from helpers import LargestTensor, max_abs_err, rand_qkv, rel_err

BACKENDS = ["sdpa", "flex"]

# (batch, heads_q, heads_kv, seq, dim, window, chunk_size)
CASES = [
    pytest.param(2, 8, 2, 37, 16, 5, 4, id="gqa-odd-seq"),
    pytest.param(1, 4, 4, 64, 16, 16, 8, id="mha-multiple"),
    pytest.param(3, 6, 3, 130, 8, 1, 3, id="window1-seq-not-multiple-of-block"),
    pytest.param(2, 4, 1, 150, 16, 70, 16, id="mqa-window-over-block"),
    pytest.param(1, 2, 2, 20, 8, 20, 4, id="window-equals-seq"),
    pytest.param(1, 2, 1, 20, 8, 64, 4, id="window-above-seq"),
]


def _call(variant, q, k, v, window, chunk_size, **kw):
    if variant == "global":
        return A.global_attention(q, k, v, **kw)
    if variant == "local":
        return A.local_attention(q, k, v, window=window, **kw)
    return A.global_approx_attention(q, k, v, window=window, chunk_size=chunk_size, **kw)


def _ref(variant, q, k, v, window, chunk_size, **kw):
    if variant == "global":
        return R.global_attention(q, k, v, **kw)
    if variant == "local":
        return R.local_attention(q, k, v, window=window, **kw)
    return R.global_approx_attention(q, k, v, window=window, chunk_size=chunk_size, **kw)


VARIANTS = ["global", "local", "global_approx"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,hq,hkv,seq,dim,window,chunk", CASES)
def test_float32_matches_reference(variant, backend, batch, hq, hkv, seq, dim, window, chunk):
    q, k, v = rand_qkv(batch, hq, hkv, seq, dim)
    out = _call(variant, q, k, v, window, chunk, backend=backend)
    ref = _ref(variant, q, k, v, window, chunk)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_half_precision_close_to_float32_reference(variant, dtype):
    q, k, v = rand_qkv(2, 8, 2, 45, 16)
    ref = _ref(variant, q, k, v, 7, 4)
    out = _call(variant, q.to(dtype), k.to(dtype), v.to(dtype), 7, 4, backend="sdpa")
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, ref) <= 2e-2


# FlexAttention has no backward on CPU (torch raises NotImplementedError): its case needs CUDA
@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.gpu) if b == "flex" else b for b in BACKENDS])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_reference(variant, backend):
    q, k, v = rand_qkv(2, 4, 2, 41, 8, requires_grad=True)
    grad_out = torch.randn(2, 4, 41, 8)
    grads = []
    for fn in (lambda *a: _call(variant, *a, 6, 4, backend=backend), lambda *a: _ref(variant, *a, 6, 4)):
        out = fn(q, k, v)
        grads.append(torch.autograd.grad(out, (q, k, v), grad_out))
    for name, fast, ref in zip("qkv", *grads):
        assert max_abs_err(fast, ref) <= 1e-4, name


def test_window_at_least_seq_equals_global():
    q, k, v = rand_qkv(2, 4, 2, 33, 8)
    full = A.global_attention(q, k, v)
    for window in (33, 34, 1000):
        assert max_abs_err(A.local_attention(q, k, v, window=window), full) <= 1e-6
        assert max_abs_err(A.global_approx_attention(q, k, v, window=window, chunk_size=4), full) <= 1e-6


def test_window_one_returns_own_value():
    q, k, v = rand_qkv(2, 6, 3, 70, 8)
    out = A.local_attention(q, k, v, window=1)
    expected = v.repeat_interleave(2, dim=1)
    assert max_abs_err(out, expected) <= 1e-6


def test_global_approx_summary_weighs_like_its_chunk():
    """Independent of the reference: if every key (and value) inside a chunk is
    the same, attending to the chunk summary with +ln(C) is exactly attending to
    the chunk's C tokens. A query whose window starts on a chunk boundary then
    sees the whole past, so global_approx equals global attention there."""
    chunk, window, n_chunks = 4, 8, 6
    seq = chunk * n_chunks
    q, k, v = rand_qkv(1, 2, 2, seq, 8)
    k = k[:, :, ::chunk].repeat_interleave(chunk, dim=2)
    v = v[:, :, ::chunk].repeat_interleave(chunk, dim=2)
    out = A.global_approx_attention(q, k, v, window=window, chunk_size=chunk)
    full = A.global_attention(q, k, v)
    # query i's window starts at i - window + 1; it is a chunk start when (i + 1) % chunk == 0
    rows = [i for i in range(window, seq) if (i - window + 1) % chunk == 0]
    assert rows
    assert max_abs_err(out[:, :, rows], full[:, :, rows]) <= 1e-5
    # and elsewhere the approximation is really different from global attention
    other = [i for i in range(window, seq) if (i - window + 1) % chunk != 0]
    assert max_abs_err(out[:, :, other], full[:, :, other]) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_queries_aligned_to_end_of_keys(variant, backend):
    """Decoding: seq_q < seq_kv, queries are the last positions; equals the full pass."""
    q, k, v = rand_qkv(2, 4, 2, 50, 8)
    full = _call(variant, q, k, v, 9, 4, backend=backend)
    for n in (1, 7):
        part = _call(variant, q[:, :, -n:], k, v, 9, 4, backend=backend)
        assert max_abs_err(part, full[:, :, -n:]) <= 1e-5
        assert rel_err(part, _ref(variant, q[:, :, -n:], k, v, 9, 4)) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padding_matches_each_row_alone(variant, backend):
    lengths = [40, 29, 17]
    seq = max(lengths)
    q, k, v = rand_qkv(len(lengths), 4, 2, seq, 8)
    mask = torch.zeros(len(lengths), seq, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, seq - n :] = True
    out = _call(variant, q, k, v, 6, 4, backend=backend, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    ref = _ref(variant, q, k, v, 6, 4, key_padding_mask=mask)
    assert rel_err(out, ref) <= 1e-5
    for b, n in enumerate(lengths):
        alone = _call(variant, q[b : b + 1, :, -n:], k[b : b + 1, :, -n:], v[b : b + 1, :, -n:], 6, 4)
        assert max_abs_err(out[b : b + 1, :, -n:], alone) <= 1e-5


@pytest.mark.parametrize("variant", ["local", "global_approx"])
def test_fast_path_builds_no_seq_by_seq_tensor(variant):
    seq, window = 4096, 64
    q, k, v = rand_qkv(1, 2, 1, seq, 16)
    with LargestTensor() as probe:
        _call(variant, q, k, v, window, 64, backend="sdpa")
    # Inputs are seq*16*2 elements; the band is seq*(block + window); seq^2 would be 16.7M.
    assert probe.largest < seq * seq // 16, (probe.largest, probe.op)
    # control: the probe does see the dense reference's score matrix
    small = 512
    with LargestTensor() as probe:
        _call(variant, q[:, :, :small], k[:, :, :small], v[:, :, :small], window, 64, backend="reference")
    assert probe.largest >= small * small


def test_backend_selection():
    q, k, v = rand_qkv(1, 2, 2, 10, 8)
    with A.use_backend("reference"):
        assert A.default_backend() == "reference"
        out = A.local_attention(q, k, v, window=3)
    assert A.default_backend() == "auto"
    assert max_abs_err(out, R.local_attention(q, k, v, window=3)) == 0
    with pytest.raises(ValueError, match="backend"):
        A.local_attention(q, k, v, window=3, backend="cuda-magic")
    with pytest.raises(ValueError, match="flash_attn"):
        A.local_attention(q, k, v, window=3, backend="flash_attn")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda q, k, v: A.local_attention(q, k, v, window=0), "window"),
        (lambda q, k, v: A.local_attention(q, k, v, window=2.5), "window"),
        (lambda q, k, v: A.global_approx_attention(q, k, v, window=2, chunk_size=0), "chunk_size"),
        (lambda q, k, v: A.global_approx_attention(q, k, v, window=-1, chunk_size=2), "window"),
        (lambda q, k, v: A.global_attention(q[0], k, v), "q"),
        (lambda q, k, v: A.local_attention(q, k[..., :4], v[..., :4], window=2), "head_dim"),
        (lambda q, k, v: A.global_attention(q[:, :3], k, v), "heads"),
        (lambda q, k, v: A.global_attention(q, k, v[:, :, :5]), "same shape"),
        (lambda q, k, v: A.global_attention(q, k, v, scale=-1.0), "scale"),
        (lambda q, k, v: A.local_attention(q, k, v, window=2, key_padding_mask=torch.ones(3, 3)), "key_padding_mask"),
        (lambda q, k, v: A.global_attention(q, k[:, :, :4], v[:, :, :4]), "seq"),
    ],
)
def test_bad_arguments_name_the_argument(call, match):
    q, k, v = rand_qkv(2, 4, 2, 10, 8)
    with pytest.raises(ValueError, match=match):
        call(q, k, v)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = rand_qkv(1, 2, 2, 12, 16)
    a = A.local_attention(q, k, v, window=4)
    b = A.local_attention(q, k, v, window=4, scale=1 / math.sqrt(16))
    assert max_abs_err(a, b) == 0
    c = A.local_attention(q, k, v, window=4, scale=0.5)
    assert max_abs_err(c, R.local_attention(q, k, v, window=4, scale=0.5)) <= 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_contiguous_inputs(variant):
    """Models hand over q/k/v as transposed views of [batch, seq, heads, dim]."""
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in rand_qkv(2, 4, 2, 77, 8))
    assert not q.is_contiguous()
    out = _call(variant, q, k, v, 10, 4, backend="sdpa")
    assert rel_err(out, _ref(variant, q, k, v, 10, 4)) <= 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_query(variant):
    q, k, v = rand_qkv(1, 2, 2, 0, 8, seq_kv=5)
    assert _call(variant, q, k, v, 3, 2).shape == (1, 2, 0, 8)
