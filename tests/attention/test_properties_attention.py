"""Property-based tests (hypothesis) of every attention path against its dense reference (issue 11, item 12).

Random shapes, grouped-query ratios, windows, chunk sizes, left or right padding, query counts
(prefill, chunked prefill, decoding) and dtypes, for every variant on every backend that runs on
the CPU (``sdpa``, ``flex`` run eagerly, ``reference``), compared with ``zebra_llm.attention.reference``.
Outputs at padding queries are unspecified (``global_attention``'s docstring) and are not compared.

The profile is small and derandomized, so the default test run stays fast and reproducible; run
``pytest tests/attention/test_properties_attention.py --hypothesis-profile=zebra-deep`` to search harder.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zebra_llm import attention as A  # noqa: E402
from zebra_llm.attention import reference as R  # noqa: E402

settings.register_profile(
    "zebra", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("zebra-deep", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROFILE = settings.get_profile("zebra")

VARIANTS = ("global", "local", "global_approx")


@pytest.fixture(autouse=True, scope="module")
def _small_query_blocks():
    """Blocks of 8 queries in global attention's merged kernel, so these short sequences span several."""
    from zebra_llm.attention import full

    saved, full.BLOCK_ROWS = full.BLOCK_ROWS, 8
    yield
    full.BLOCK_ROWS = saved
# FlexAttention runs eagerly on the CPU, about a second per call here: fewer, smaller examples.
FLEX = settings(PROFILE, max_examples=4)


@dataclass(frozen=True)
class Case:
    batch: int
    heads_kv: int
    groups: int
    dim: int
    seq_kv: int
    seq_q: int
    window: int
    chunk_size: int
    padding: str  # "none", "left" or "right"
    pads: tuple[int, ...]  # padding tokens per row
    seed: int

    def tensors(self, dtype=torch.float32, requires_grad=False):
        g = torch.Generator().manual_seed(self.seed)
        hq = self.heads_kv * self.groups
        q = torch.randn(self.batch, hq, self.seq_q, self.dim, generator=g)
        k = torch.randn(self.batch, self.heads_kv, self.seq_kv, self.dim, generator=g)
        v = torch.randn(self.batch, self.heads_kv, self.seq_kv, self.dim, generator=g)
        return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v))

    def mask(self):
        if self.padding == "none":
            return None
        mask = torch.ones(self.batch, self.seq_kv, dtype=torch.bool)
        for b, p in enumerate(self.pads):
            if p:
                if self.padding == "left":
                    mask[b, :p] = False
                else:
                    mask[b, -p:] = False
        return mask

    def real_queries(self):
        """``[batch, 1, seq_q, 1]``: True at the queries whose output is defined."""
        mask = self.mask()
        if mask is None:
            return torch.ones(self.batch, 1, self.seq_q, 1, dtype=torch.bool)
        return mask[:, None, self.seq_kv - self.seq_q :, None]


@st.composite
def cases(draw, max_seq=72):
    batch = draw(st.integers(1, 3))
    seq_kv = draw(st.integers(1, max_seq))
    kind = draw(st.sampled_from(["prefill", "chunked", "decode"]))
    seq_q = {"prefill": seq_kv, "decode": 1}.get(kind) or draw(st.integers(1, seq_kv))
    padding = draw(st.sampled_from(["none", "left", "right"]))
    pads = tuple(draw(st.integers(0, seq_kv - 1)) for _ in range(batch)) if padding != "none" else ()
    return Case(
        batch=batch,
        heads_kv=draw(st.integers(1, 3)),
        groups=draw(st.sampled_from([1, 2, 3])),
        dim=draw(st.sampled_from([4, 8, 16])),
        seq_kv=seq_kv,
        seq_q=seq_q,
        window=draw(st.integers(1, seq_kv + 4)),
        chunk_size=draw(st.integers(1, 12)),
        padding=padding,
        pads=pads,
        seed=draw(st.integers(0, 2**16)),
    )


def _fast(variant, case, q, k, v, backend, **kw):
    kw = dict(key_padding_mask=case.mask(), backend=backend, **kw)
    if variant == "global":
        return A.global_attention(q, k, v, **kw)
    if variant == "local":
        return A.local_attention(q, k, v, window=case.window, **kw)
    return A.global_approx_attention(q, k, v, window=case.window, chunk_size=case.chunk_size, **kw)


def _reference(variant, case, q, k, v):
    kw = dict(key_padding_mask=case.mask())
    if variant == "global":
        return R.global_attention(q, k, v, **kw)
    if variant == "local":
        return R.local_attention(q, k, v, window=case.window, **kw)
    return R.global_approx_attention(q, k, v, window=case.window, chunk_size=case.chunk_size, **kw)


def _err_on_real_queries(out, ref, case) -> float:
    sel = case.real_queries()
    diff = ((out.float() - ref.float()).abs() * sel).max().item() if out.numel() else 0.0
    scale = max((ref.float().abs() * sel).max().item() if ref.numel() else 0.0, 1e-6)
    return diff / scale


def _check_against_reference(variant, backend, case):
    q, k, v = case.tensors()
    out = _fast(variant, case, q, k, v, backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert _err_on_real_queries(out, _reference(variant, case, q, k, v), case) <= 1e-4, case


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("variant", VARIANTS)
@settings(PROFILE)
@given(case=cases())
def test_matches_dense_reference(variant, backend, case):
    _check_against_reference(variant, backend, case)


@pytest.mark.parametrize("variant", VARIANTS)
@FLEX
@given(case=cases(max_seq=24))
def test_flex_matches_dense_reference(variant, case):
    _check_against_reference(variant, "flex", case)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(PROFILE)
@given(case=cases(max_seq=48), split=st.integers(0, 48), steps=st.integers(1, 4))
def test_prefill_then_decode_equals_one_pass(variant, case, split, steps):
    """A cache split: the first ``split`` queries in one call, then ``steps`` single-query decode calls
    (each seeing only the keys so far), then the rest, equals one pass over every query."""
    if case.seq_q != case.seq_kv:
        case = Case(**{**case.__dict__, "seq_q": case.seq_kv})
    q, k, v = case.tensors()
    whole = _fast(variant, case, q, k, v, "sdpa")
    n = case.seq_kv
    cuts = sorted({0, min(split, n), *(min(split + i, n) for i in range(1, steps + 1)), n})
    pieces = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        part = Case(**{**case.__dict__, "seq_kv": b, "seq_q": b - a, "pads": _pads_prefix(case, b)})
        pieces.append(_fast(variant, part, q[:, :, a:b], k[:, :, :b], v[:, :, :b], "sdpa"))
    assert _err_on_real_queries(torch.cat(pieces, dim=2), whole, case) <= 1e-4, (case, cuts)


def _pads_prefix(case: Case, length: int) -> tuple[int, ...]:
    """Per-row padding of the first ``length`` keys (left padding: what a cache holds then)."""
    if case.padding == "left":
        return tuple(min(p, length) for p in case.pads)
    if case.padding == "right":
        return tuple(max(0, length - (case.seq_kv - p)) for p in case.pads)
    return case.pads


@pytest.mark.parametrize("variant", VARIANTS)
@settings(PROFILE)
@given(case=cases(max_seq=40))
def test_gradients_match_dense_reference(variant, case):
    q, k, v = case.tensors(requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(case.seed)) * case.real_queries()
    fast = torch.autograd.grad(_fast(variant, case, q, k, v, "sdpa"), (q, k, v), grad_out)
    ref = torch.autograd.grad(_reference(variant, case, q, k, v), (q, k, v), grad_out)
    for name, a, b in zip("qkv", fast, ref):
        scale = max(b.abs().max().item(), 1.0)
        assert (a - b).abs().max().item() <= 1e-4 * scale, (name, case)


@pytest.mark.parametrize("variant", VARIANTS)
@settings(PROFILE, max_examples=6)
@given(case=cases(max_seq=24))
def test_bfloat16_close_to_float32_reference(variant, case):
    q, k, v = case.tensors()
    ref = _reference(variant, case, q, k, v)
    low = _fast(variant, case, q.bfloat16(), k.bfloat16(), v.bfloat16(), "sdpa")
    assert low.dtype == torch.bfloat16
    assert _err_on_real_queries(low, ref, case) <= 3e-2, case
