"""Padded batches whose rows are no longer than a rule's ``plain_length`` run as one causal call (what a
server decodes at every step) instead of one plan per row: against the dense reference, and the path taken."""

from __future__ import annotations

import pytest
import torch

from zebra_llm.attention import piecewise as P
from zebra_llm.attention.piecewise import piecewise_attention
from zebra_llm.attention.specs import DCASpec, ReRoPESpec, SelfExtendSpec, SinksSpec, StringSpec

from helpers import max_abs_err

INV_FREQ = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
SPECS = {
    "dca": DCASpec(12, 16, temperature_length=16),
    "self_extend": SelfExtendSpec(3, 12),
    "rerope": ReRoPESpec(12),
    "leaky_rerope": ReRoPESpec(12, leak=4.0),
    "string": StringSpec(12, 3),
    "sinks": SinksSpec(2, 12, 14),
}


def _mask(kind: str, seq_kv: int, lengths: list[int]) -> torch.Tensor:
    kpm = torch.zeros(len(lengths), seq_kv, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if kind == "left":
            kpm[b, seq_kv - n :] = True
        elif kind == "right":
            kpm[b, :n] = True
        else:  # holes: real tokens spread over the row, the last slot real (it is a query)
            slots = torch.linspace(0, seq_kv - 1, n).round().long()
            kpm[b, slots] = True
    return kpm


def _inputs(seq_q, seq_kv, dtype=torch.float64):
    g = torch.Generator().manual_seed(seq_q * 100 + seq_kv)
    q = torch.randn(3, 4, seq_q, 16, generator=g, dtype=dtype, requires_grad=True)
    k = torch.randn(3, 2, seq_kv, 16, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(3, 2, seq_kv, 16, generator=g, dtype=dtype, requires_grad=True)
    return q, k, v


@pytest.mark.parametrize("name", list(SPECS))
def test_plain_length_is_where_the_rule_is_ordinary_attention(name):
    spec = SPECS[name]
    n = spec.plain_length
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    causal = torch.where(j <= i, i - j, -1)
    assert torch.equal(spec.relative_positions(n).to(torch.float64), causal.to(torch.float64))
    if name in ("dca", "string"):  # stated exactly there; a lower bound for the others (see plain_length)
        wider = spec.relative_positions(n + 1)
        i, j = torch.arange(n + 1)[:, None], torch.arange(n + 1)[None, :]
        assert not torch.equal(wider.to(torch.float64), torch.where(j <= i, i - j, -1).to(torch.float64))


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("kind", ["left", "right", "holes"])
@pytest.mark.parametrize("seq_q", [14, 1, 5])  # prefill, decoding, chunked prefill
def test_padded_batch_in_plain_reach_matches_reference(name, kind, seq_q, monkeypatch):
    spec = SPECS[name]
    seq_kv = 14
    if kind == "right" and seq_q == 1:
        pytest.skip("a decoding query is a real token: its row is never right-padded")
    kpm = _mask(kind, seq_kv, [spec.plain_length, 7, 9])
    q, k, v = _inputs(seq_q, seq_kv)

    def no_rows(*args, **kwargs):
        raise AssertionError("per_row ran: the padded batch should be one causal call")

    monkeypatch.setattr(P, "per_row", no_rows)
    out = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, key_padding_mask=kpm)
    monkeypatch.undo()
    ref = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, key_padding_mask=kpm, backend="reference")
    assert max_abs_err(out, ref) <= 1e-10
    real_q = kpm[:, seq_kv - seq_q :]
    assert bool((out[~real_q[:, None, :].expand(-1, 4, -1)] == 0).all())  # zeros at padding queries

    weight = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for got, want in zip(grads, grads_ref):
        assert max_abs_err(got, want) <= 1e-10


def _assert_runs_the_plan(spec, seq_kv, monkeypatch):
    """A left-padded batch (one full row) goes through per_row and matches the dense reference."""
    kpm = _mask("left", seq_kv, [seq_kv, 4, 6])
    q, k, v = _inputs(seq_kv, seq_kv)
    calls = []
    monkeypatch.setattr(P, "per_row", lambda *a, **kw: calls.append(1) or per_row_original(*a, **kw))
    out = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, key_padding_mask=kpm)
    assert calls == [1]
    ref = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, key_padding_mask=kpm, backend="reference")
    assert max_abs_err(out, ref) <= 1e-10


@pytest.mark.parametrize("name", list(SPECS))
def test_a_row_past_plain_reach_runs_the_plan(name, monkeypatch):
    _assert_runs_the_plan(SPECS[name], SPECS[name].plain_length + 3, monkeypatch)


def test_a_logit_multiplier_inside_plain_reach_runs_the_plan(monkeypatch):
    # every query's logits scaled: not ordinary attention, though 10 tokens are inside the plain reach (12)
    _assert_runs_the_plan(StringSpec(12, 3, attention_factor=1.07), 10, monkeypatch)


per_row_original = P.per_row


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seq_q", [12, 1, 5])
def test_unpadded_rows_in_plain_reach_skip_the_plan(name, seq_q, monkeypatch):
    spec = SPECS[name]
    seq_kv = spec.plain_length
    q, k, v = _inputs(seq_q, seq_kv)

    def no_plan(*args, **kwargs):
        raise AssertionError("the plan ran: rows inside the plain reach are one causal call")

    monkeypatch.setattr(P, "_prepared", no_plan)
    out = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ)
    monkeypatch.undo()
    ref = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend="reference")
    assert max_abs_err(out, ref) <= 1e-10
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    grads_ref = torch.autograd.grad(ref.sum(), (q, k, v))
    for got, want in zip(grads, grads_ref):
        assert max_abs_err(got, want) <= 1e-10


def test_a_backend_named_in_the_call_runs_its_plan(monkeypatch):
    spec = SPECS["dca"]
    q, k, v = _inputs(8, 8)
    calls = []
    prepared = P._prepared
    monkeypatch.setattr(P, "_prepared", lambda *a: calls.append(1) or prepared(*a))
    out = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend="tiled")
    assert calls == [1]
    ref = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend="reference")
    assert max_abs_err(out, ref) <= 1e-10
