"""The piecewise kernel's backends are registered in attention/backends.py like every variant's: the same
choice (use_backend, backend=, auto) for every extension method, each backend against the dense reference."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from zebra_llm.attention import backends, use_backend
from zebra_llm.attention import piecewise as P
from zebra_llm.attention.piecewise import piecewise_attention
from zebra_llm.attention.specs import DCASpec, ReRoPESpec, SelfExtendSpec, SinksSpec, StringSpec

from helpers import max_abs_err, rand_qkv

INV_FREQ = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
SPECS = {
    "dca": DCASpec(6, 10, temperature_length=10),
    "self_extend": SelfExtendSpec(3, 5),
    "leaky_rerope": ReRoPESpec(5, leak=4.0),
    "string": StringSpec(9, 3, attention_factor=1.07),
    "sinks": SinksSpec(3, 6, 9),
}


def _ref(q, k, v, spec, **kw):
    return piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend="reference", **kw)


def test_every_backend_is_registered_for_the_piecewise_variant():
    assert set(backends.supported("piecewise")) == {"sdpa", "tiled", "sdpa_stacked", "flex", "flash_attn", "reference"}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seq_q", [37, 7, 1])  # prefill, chunked prefill, decoding
def test_flex_matches_reference(name, seq_q):
    torch.manual_seed(0)
    q, k, v = rand_qkv(2, 4, 2, seq_q, 16, seq_kv=37)
    out = piecewise_attention(q, k, v, spec=SPECS[name], inv_freq=INV_FREQ, backend="flex")
    assert max_abs_err(out, _ref(q, k, v, SPECS[name])) <= 1e-5


def test_use_backend_reaches_every_method(monkeypatch):
    """A backend chosen with use_backend is the one the kernel runs, for SelfExtend as for DCA."""
    calls = []
    real = backends._IMPLS[("piecewise", "tiled")]
    def counted(*args, **kw):
        calls.append(kw["spec"].name)
        return real(*args, **kw)

    monkeypatch.setitem(backends._IMPLS, ("piecewise", "tiled"), counted)
    q, k, v = rand_qkv(1, 2, 2, 20, 16)
    with use_backend("tiled"):
        for name in ("dca", "self_extend", "sinks"):
            piecewise_attention(q, k, v, spec=SPECS[name], inv_freq=INV_FREQ)
    assert calls == ["dca", "self_extend", "sinks"]
    with use_backend("sdpa_stacked"):  # DCA's own backend before: every spec whose plan it can run
        out = piecewise_attention(q, k, v, spec=SPECS["dca"], inv_freq=INV_FREQ)
    assert max_abs_err(out, _ref(q, k, v, SPECS["dca"])) <= 1e-5


def test_stacked_refuses_plans_it_cannot_run():
    q, k, v = rand_qkv(1, 2, 2, 20, 16)
    with pytest.raises(ValueError, match="'sdpa_stacked' needs a plan of disjoint query groups"):
        piecewise_attention(q, k, v, spec=SPECS["self_extend"], inv_freq=INV_FREQ, backend="sdpa_stacked")


def _fake_flash_attn(q, k, v, softmax_scale, causal, return_attn_probs):
    """flash-attn's ``flash_attn_func`` contract ([B, S, H, D] in and out, log-sum-exp [B, H, S]) in float64."""
    assert return_attn_probs
    q, k, v = (t.transpose(1, 2).double() for t in (q, k, v))
    k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)) * softmax_scale
    if causal:
        n = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, -1)
    out = torch.softmax(scores, -1) @ v
    return out.transpose(1, 2).float(), lse.float(), None


@pytest.mark.parametrize("name", list(SPECS))
def test_flash_attn_blocks_merge_through_its_log_sum_exp(name, monkeypatch):
    """flash-attn's calling convention on CPU (a stand-in with its contract): layout and merge are right."""
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=_fake_flash_attn))
    torch.manual_seed(1)
    spec = SPECS[name]
    q, k, v = rand_qkv(1, 4, 2, 30, 16)
    out = P._piecewise_flash_attn(q, k, v, spec=spec, inv_freq=INV_FREQ, scale=0.25, position_offset=torch.zeros(1))
    assert max_abs_err(out, _ref(q, k, v, spec, scale=0.25)) <= 1e-5


def test_a_backend_without_gradients_is_refused_where_one_is_needed(monkeypatch):
    impl = backends._IMPLS[("piecewise", "tiled")]
    monkeypatch.setitem(backends._IMPLS, ("toy", "tiled"), impl)
    monkeypatch.setattr(backends, "_NO_GRAD", {("toy", "tiled")})
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    with pytest.raises(ValueError, match="backend 'tiled' computes 'toy' attention without gradients"):
        backends.resolve("toy", "tiled", q, padded=False)
    assert not backends._usable("toy", "tiled", q, padded=False)  # auto passes it over
    with torch.no_grad():
        assert backends.resolve("toy", "tiled", q, padded=False) is impl
