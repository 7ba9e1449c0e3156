"""Property tests: every extension method's fast path equals its dense reference over random shapes,
chunk/group/window sizes, padding and cache splits (few examples each, so the file runs in seconds)."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zebra_llm.attention.piecewise import piecewise_attention  # noqa: E402
from zebra_llm.attention.specs import DCASpec, ReRoPESpec, SelfExtendSpec, StringSpec  # noqa: E402

FEW = settings(max_examples=12, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def specs(draw):
    method = draw(st.sampled_from(["dca", "self_extend", "rerope", "leaky_rerope", "string"]))
    if method == "dca":
        c = draw(st.integers(2, 14))
        s = draw(st.integers(1, c - 1))
        temperature = draw(st.sampled_from([None, c]))
        return DCASpec(s, c, temperature)
    if method == "self_extend":
        return SelfExtendSpec(draw(st.integers(1, 5)), draw(st.integers(1, 9)), draw(st.sampled_from([None, 4])))
    if method == "rerope":
        return ReRoPESpec(draw(st.integers(1, 9)), None, draw(st.sampled_from([None, 6])))
    if method == "leaky_rerope":
        return ReRoPESpec(draw(st.integers(1, 9)), draw(st.sampled_from([1.0, 2.5, 16.0])))
    s = draw(st.integers(1, 12))
    return StringSpec(s, draw(st.integers(0, s)), draw(st.sampled_from([1.0, 1.07])))


@st.composite
def problems(draw):
    heads_kv = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2))
    dim = draw(st.sampled_from([8, 12]))
    rotary = draw(st.sampled_from([dim, dim // 2]))  # partial rotary: the last dims are not rotated
    n_keys = draw(st.integers(1, 36))
    n_queries = draw(st.integers(1, n_keys))  # the queries are the last keys: a cache split
    batch = draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 6)) for _ in range(batch)]
    seed = draw(st.integers(0, 2**16))
    return heads_kv, groups, dim, rotary, n_keys, n_queries, pads, seed


def _inputs(problem):
    heads_kv, groups, dim, rotary, n_keys, n_queries, pads, seed = problem
    g = torch.Generator().manual_seed(seed)
    width = n_keys + max(pads)
    batch = len(pads)
    q = torch.randn(batch, heads_kv * groups, n_queries, dim, generator=g)
    k = torch.randn(batch, heads_kv, width, dim, generator=g)
    v = torch.randn(batch, heads_kv, width, dim, generator=g)
    kpm = torch.ones(batch, width, dtype=torch.bool)
    for b, p in enumerate(pads):
        kpm[b, :p] = False  # left padding of p slots
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))
    return q, k, v, (kpm if not bool(kpm.all()) else None), inv_freq


@FEW
@given(spec=specs(), problem=problems())
def test_fast_path_equals_reference(spec, problem):
    q, k, v, kpm, inv_freq = _inputs(problem)
    kw = dict(spec=spec, inv_freq=inv_freq, key_padding_mask=kpm, position_offset=5)
    for backend in ("sdpa", "tiled"):
        fast = piecewise_attention(q, k, v, backend=backend, **kw)
        ref = piecewise_attention(q, k, v, backend="reference", **kw)
        assert (fast - ref).abs().max().item() <= 1e-4, backend


@FEW
@given(spec=specs(), problem=problems())
def test_gradients_equal_reference(spec, problem):
    q, k, v, kpm, inv_freq = _inputs(problem)
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    kw = dict(spec=spec, inv_freq=inv_freq, key_padding_mask=kpm)
    grads = []
    for backend in ("sdpa", "reference"):
        out = piecewise_attention(q, k, v, backend=backend, **kw)
        grads.append(torch.autograd.grad((out * out.detach().sin()).sum(), (q, k, v)))
    for fast, ref in zip(*grads):
        assert (fast - ref).abs().max().item() <= 1e-8


@FEW
@given(spec=specs(), n=st.integers(1, 30))
def test_relative_positions_stay_causal_and_local_distances_exact(spec, n):
    rel = spec.relative_positions(n)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert bool((rel[j > i] == -1).all())
    assert bool((rel[j <= i] >= 0).all())
    assert bool((torch.diagonal(rel) == 0).all())  # every token sees itself at distance 0
