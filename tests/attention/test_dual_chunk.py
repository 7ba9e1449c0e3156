"""DCA kernels against the dense reference built from relative_positions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zebra_llm.attention import dca_attention
from zebra_llm.attention import reference as R
from zebra_llm.attention.specs import DCASpec

from helpers import LargestTensor, max_abs_err, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["sdpa", "sdpa_stacked", "flex"]
GRAD = ["sdpa", "sdpa_stacked"]  # FlexAttention has no backward on CPU




def inv_freq(dim, base=10000.0):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def qkv(batch, hq, hkv, seq_q, seq_kv, dim, *, dtype=torch.float32, requires_grad=False):
    ts = [torch.randn(batch, hq, seq_q, dim), torch.randn(batch, hkv, seq_kv, dim)]
    ts.append(torch.randn(batch, hkv, seq_kv, dim))
    return [t.to(dtype).requires_grad_(requires_grad) for t in ts]


# (batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, chunk_size, pretraining_length)
CASES = [
    pytest.param(2, 8, 2, 37, 37, 16, 5, 8, id="gqa-odd-seq"),
    pytest.param(1, 4, 4, 64, 64, 16, 12, 16, id="mha-chunks-of-12"),
    pytest.param(2, 4, 1, 45, 45, 8, 1, 2, id="mqa-chunk-1"),
    pytest.param(1, 2, 2, 20, 20, 8, 24, 32, id="shorter-than-one-chunk"),
    pytest.param(2, 6, 3, 9, 50, 16, 6, 10, id="chunked-prefill-mid-chunk"),
    pytest.param(2, 4, 2, 1, 41, 16, 6, 10, id="decode-one-token"),
    pytest.param(1, 4, 2, 3, 36, 16, 6, 10, id="decode-from-chunk-start"),
]


def _kw(dim, s, c, **extra):
    return dict(inv_freq=inv_freq(dim), chunk_size=s, pretraining_length=c, **extra)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_stacked"])
@pytest.mark.parametrize("batch,hq,hkv,sq,skv,dim,s,c", CASES)
def test_float32_matches_reference(backend, batch, hq, hkv, sq, skv, dim, s, c):
    _check_against_reference(backend, batch, hq, hkv, sq, skv, dim, s, c)


@pytest.mark.parametrize("batch,hq,hkv,sq,skv,dim,s,c", [CASES[0], CASES[4], CASES[5]])
def test_flex_float32_matches_reference(batch, hq, hkv, sq, skv, dim, s, c):
    # FlexAttention runs eagerly on CPU (slow per call): a few cases only.
    _check_against_reference("flex", batch, hq, hkv, sq, skv, dim, s, c)


def _check_against_reference(backend, batch, hq, hkv, sq, skv, dim, s, c):
    q, k, v = qkv(batch, hq, hkv, sq, skv, dim)
    kw = _kw(dim, s, c, position_offset=torch.tensor([0, 17])[:batch])
    out = dca_attention(q, k, v, backend=backend, **kw)
    ref = R.dca_attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert max_abs_err(out, ref) <= 1e-5


@pytest.mark.parametrize("backend", FAST)
def test_temperature_and_partial_rotary(backend):
    q, k, v = qkv(2, 4, 2, 50, 50, 16)
    # only the first 8 of 16 dims rotated (partial rotary), temperature beyond 10 keys
    kw = dict(inv_freq=inv_freq(8), chunk_size=6, pretraining_length=10, temperature_length=10, position_offset=3)
    out = dca_attention(q, k, v, backend=backend, **kw)
    ref = R.dca_attention(q, k, v, **kw)
    assert max_abs_err(out, ref) <= 1e-5
    plain = R.dca_attention(q, k, v, **{**kw, "temperature_length": None})
    assert max_abs_err(out[:, :, :10], plain[:, :, :10]) <= 1e-5  # no temperature within L0 keys
    assert max_abs_err(out[:, :, 10:], plain[:, :, 10:]) > 1e-3


def _padding_mask():
    kpm = torch.ones(4, 30, dtype=torch.bool)
    kpm[0, :7] = False  # left padding
    kpm[1, 22:] = False  # right padding
    kpm[2, [3, 10, 11]] = False  # holes
    return kpm


PADDED = [(b, n) for b in ("sdpa", "sdpa_stacked", "reference") for n in (30, 4)] + [("flex", 30)]


@pytest.mark.parametrize("backend,seq_q", PADDED)
def test_padded_batch_equals_rows_alone(backend, seq_q):
    kpm = _padding_mask()
    q, k, v = qkv(4, 4, 2, seq_q, 30, 16)
    kw = _kw(16, 5, 8)
    out = dca_attention(q, k, v, key_padding_mask=kpm, backend=backend, **kw)
    ref = R.dca_attention(q, k, v, key_padding_mask=kpm, **kw)
    assert max_abs_err(out, ref) <= 1e-5
    first_q = 30 - seq_q
    for b in range(4):
        slots = kpm[b].nonzero().flatten()
        q_slots = slots[slots >= first_q] - first_q
        if q_slots.numel() == 0:  # a right-padded row whose new tokens are all padding
            assert (out[b] == 0).all()
            continue
        alone = dca_attention(
            q[b : b + 1, :, q_slots], k[b : b + 1, :, slots], v[b : b + 1, :, slots], backend=backend, **kw
        )
        assert max_abs_err(out[b : b + 1, :, q_slots], alone) <= 1e-5
        pad_rows = torch.ones(seq_q, dtype=torch.bool)
        pad_rows[q_slots] = False
        assert (out[b, :, pad_rows] == 0).all()


@pytest.mark.parametrize("backend", GRAD)
@pytest.mark.parametrize("padded", [False, True])
def test_gradients_match_reference(backend, padded):
    q, k, v = qkv(4, 4, 2, 30, 30, 16, requires_grad=True)
    kw = _kw(16, 5, 8, temperature_length=8, key_padding_mask=_padding_mask() if padded else None)
    grad_out = torch.randn(4, 4, 30, 16)
    grads = []
    for fn in (lambda: dca_attention(q, k, v, backend=backend, **kw), lambda: R.dca_attention(q, k, v, **kw)):
        grads.append(torch.autograd.grad(fn(), (q, k, v), grad_out))
    for name, fast, ref in zip("qkv", *grads):
        assert max_abs_err(fast, ref) <= 1e-4, name


def test_gradients_reach_every_block():
    """Keys of the intra, successive and inter blocks all get gradient from the last query."""
    q, k, v = qkv(1, 2, 1, 40, 40, 8, requires_grad=True)
    out = dca_attention(q, k, v, **_kw(8, 6, 10))
    groups = DCASpec(6, 10).plan(40, 40)
    assert {DCASpec.regions[blk.region] for blk in groups[-1].blocks} == {"intra", "succ", "inter"}
    out[:, :, -1].sum().backward()
    for blk in groups[-1].blocks:
        assert k.grad[:, :, blk.k0 : blk.k1].abs().sum() > 0, blk
        assert v.grad[:, :, blk.k0 : blk.k1].abs().sum() > 0, blk


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["sdpa", "sdpa_stacked"])
def test_half_precision_close_to_float32_reference(backend, dtype):
    q, k, v = qkv(2, 4, 2, 30, 30, 16)
    kw = _kw(16, 5, 8)
    ref = R.dca_attention(q, k, v, **kw)
    out = dca_attention(q.to(dtype), k.to(dtype), v.to(dtype), backend=backend, **kw)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= 2e-2


def test_no_seq_by_seq_tensor():
    seq = 4096
    q, k, v = qkv(1, 2, 1, seq, seq, 16)
    with LargestTensor() as probe:
        dca_attention(q, k, v, **_kw(16, 384, 512))
    assert probe.largest < seq * seq // 16, probe.op


@pytest.mark.subprocess
def test_prefill_peak_memory_is_linear():
    """At 16k tokens a seq x seq float32 score matrix is 1 GiB per head; DCA's
    peak stays a small multiple of its inputs (measured in a fresh process)."""
    script = textwrap.dedent(
        """
        import resource, torch
        from zebra_llm.attention import dca_attention
        torch.manual_seed(0)
        seq, d = 16384, 64
        q = torch.randn(1, 4, seq, d); k = torch.randn(1, 2, seq, d); v = torch.randn(1, 2, seq, d)
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = dca_attention(q, k, v, inv_freq=inv, chunk_size=3072, pretraining_length=4096)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "MALLOC_MMAP_THRESHOLD_": "65536"}  # resident memory then follows the live tensors
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    extra_mib = float(result.stdout.strip().splitlines()[-1])
    inputs_mib = (4 + 2 + 2) * 16384 * 64 * 4 / 2**20  # 32 MiB
    assert extra_mib < 8 * inputs_mib, f"peak grew by {extra_mib:.0f} MiB"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(chunk_size=8, pretraining_length=8), "chunk_size"),
        (dict(chunk_size=0, pretraining_length=8), "chunk_size"),
        (dict(chunk_size=4, pretraining_length=8, temperature_length=0), "temperature_length"),
        (dict(chunk_size=4, pretraining_length=8, position_offset=torch.zeros(3, dtype=torch.long)), "position_offset"),
        (dict(chunk_size=4, pretraining_length=8, inv_freq=inv_freq(64)), "inv_freq"),
    ],
)
def test_invalid_arguments(kwargs, field):
    q, k, v = qkv(2, 4, 2, 10, 10, 16)
    kwargs = {"inv_freq": inv_freq(16), **kwargs}
    with pytest.raises(ValueError, match=field):
        dca_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_stacked", "flex", "reference"])
def test_no_queries(backend):
    q, k, v = qkv(2, 4, 2, 0, 9, 16)
    out = dca_attention(q, k, v, backend=backend, **_kw(16, 4, 8))
    assert out.shape == q.shape


def test_backend_must_implement_dca():
    q, k, v = qkv(1, 2, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="flash_attn"):
        dca_attention(q, k, v, backend="flash_attn", **_kw(8, 4, 8))
