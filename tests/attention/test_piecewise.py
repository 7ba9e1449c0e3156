"""The piecewise kernel against the dense reference, for every extension method's spec."""

from __future__ import annotations

import pytest
import torch

from zebra_llm.attention.piecewise import piecewise_attention
from zebra_llm.attention.specs import DCASpec, ReRoPESpec, SelfExtendSpec, SinksSpec, StringSpec

from helpers import max_abs_err, rand_qkv, rel_err

INV_FREQ = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))

SPECS = {
    "dca": DCASpec(6, 10),
    "dca_temperature": DCASpec(5, 8, temperature_length=8),
    "self_extend": SelfExtendSpec(3, 5),
    "self_extend_scaled": SelfExtendSpec(4, 6, scale_base=8),
    "rerope": ReRoPESpec(6),
    "rerope_logn": ReRoPESpec(5, logn_length=8),
    "leaky_rerope": ReRoPESpec(5, leak=4.0),
    "string": StringSpec(9, 3, attention_factor=1.0693),
    "sinks": SinksSpec(2, 6, 9),  # window < distance limit: sinks exact, then capped
    "sinks_capped": SinksSpec(3, 8, 5),  # window >= limit (LM-Infinite's own setting): every sink capped
    "sinks_window_only": SinksSpec(0, 5, 5),  # no sinks: a sliding window
}


def _dense(q, k, v, spec, **kw):
    return piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend="reference", **kw)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("backend", ["sdpa", "tiled"])
def test_prefill_matches_reference(name, backend):
    torch.manual_seed(0)
    q, k, v = rand_qkv(2, 4, 2, 37, 16)
    spec = SPECS[name]
    fast = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend=backend)
    assert max_abs_err(fast, _dense(q, k, v, spec)) <= 1e-5


@pytest.mark.parametrize("name", list(SPECS))
def test_cache_splits_and_padding_match_reference(name):
    torch.manual_seed(1)
    spec = SPECS[name]
    q, k, v = rand_qkv(2, 4, 2, 7, 16, seq_kv=30)  # chunked prefill: 7 queries after 23 cached keys
    assert max_abs_err(piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ), _dense(q, k, v, spec)) <= 1e-5
    q1 = q[:, :, -1:]  # decoding
    assert max_abs_err(piecewise_attention(q1, k, v, spec=spec, inv_freq=INV_FREQ), _dense(q1, k, v, spec)) <= 1e-5
    kpm = torch.ones(2, 30, dtype=torch.bool)
    kpm[0, :9] = False  # left padding
    kpm[1, 12] = False  # a hole
    fast = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, key_padding_mask=kpm, position_offset=3)
    ref = _dense(q, k, v, spec, key_padding_mask=kpm, position_offset=3)
    assert max_abs_err(fast, ref) <= 1e-5


@pytest.mark.parametrize("name", ["dca", "self_extend", "leaky_rerope", "string", "sinks", "sinks_capped"])
def test_gradients_match_reference_in_float64(name):
    """float64 end to end: the log-sum-exp is kept in float64 (it was saved as float32 before)."""
    torch.manual_seed(2)
    spec = SPECS[name]
    q, k, v = rand_qkv(1, 4, 2, 29, 16, dtype=torch.float64, requires_grad=True)
    grads = []
    for backend in ("sdpa", "reference"):
        out = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend=backend)
        grads.append(torch.autograd.grad((out * out.detach().cos()).sum(), (q, k, v)))
    for fast, ref in zip(*grads):
        assert rel_err(fast, ref) <= 1e-9


def test_bfloat16_close_to_float32():
    torch.manual_seed(3)
    q, k, v = rand_qkv(1, 2, 1, 25, 16)
    spec = SPECS["self_extend"]
    ref = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ)
    low = piecewise_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), spec=spec, inv_freq=INV_FREQ)
    assert low.dtype == torch.bfloat16 and rel_err(low, ref) <= 3e-2


def test_relative_positions_follow_the_official_rules():
    n = 20
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    d = i - j
    below = j <= i
    g, w = 3, 5
    se = SelfExtendSpec(g, w).relative_positions(n)
    expected = torch.where(d < w, d, (i // g + w - w // g) - j // g)
    assert torch.equal(se[below], expected[below]) and bool((se[~below] == -1).all())
    rr = ReRoPESpec(6).relative_positions(n)
    assert torch.equal(rr[below], torch.where(d < 6, d, 6)[below])
    leaky = ReRoPESpec(6, leak=4.0).relative_positions(n)
    assert torch.allclose(leaky[below], torch.where(d < 6, d.double(), 6 + (d - 6) / 4.0)[below])
    st = StringSpec(9, 3).relative_positions(n)
    assert torch.equal(st[below], torch.where(d < 9, d, d - 9 + 3)[below])


def test_no_seq_by_seq_tensor_on_the_fast_path():
    from helpers import LargestTensor

    torch.manual_seed(4)
    n = 1200
    q, k, v = rand_qkv(1, 1, 1, n, 8)
    for spec in (SelfExtendSpec(4, 300), ReRoPESpec(256, leak=8.0), StringSpec(400, 32)):
        with LargestTensor() as probe:
            piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ[:4])
        assert probe.largest < n * n // 4, spec.name


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: SelfExtendSpec(0, 4), "group_size"),
        (lambda: SelfExtendSpec(2, 0), "neighbor_window"),
        (lambda: ReRoPESpec(4, leak=0.5), "leak"),
        (lambda: ReRoPESpec(-1), "window"),
        (lambda: StringSpec(4, 8), "local_value"),
        (lambda: StringSpec(4, 2, attention_factor=float("nan")), "attention_factor"),
    ],
)
def test_invalid_settings_name_the_setting(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_flex_log_sum_exp_request_follows_the_torch_version(monkeypatch):
    """AuxRequest/return_aux exist from torch 2.9; older torch (pyproject admits 2.6) has return_lse."""
    from torch.nn.attention import flex_attention as fa

    from zebra_llm.attention._flex import flex_lse_kwargs as _flex_lse_kwargs

    assert "return_aux" in _flex_lse_kwargs()

    def old_flex(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False,
                 return_lse=False):
        raise AssertionError("not called")

    monkeypatch.setattr(fa, "flex_attention", old_flex)
    monkeypatch.delattr(fa, "AuxRequest")
    assert _flex_lse_kwargs() == {"return_lse": True}

    def older_flex(query, key, value, score_mod=None, block_mask=None, scale=None):
        raise AssertionError("not called")

    monkeypatch.setattr(fa, "flex_attention", older_flex)
    with pytest.raises(ValueError, match="backend 'flex' for the piecewise methods needs FlexAttention's log-sum-exp"):
        _flex_lse_kwargs()


def test_public_relative_positions_with_explicit_geometry_needs_no_trained_length():
    from zebra_llm.extensions import relative_positions

    n = 40
    cases = [
        ("self_extend", dict(group_size=4, neighbor_window=8), SelfExtendSpec(4, 8)),
        ("rerope", dict(window=6, leak=4.0), ReRoPESpec(6, leak=4.0)),
        ("string", dict(shifted_offset=9, local_value=3), StringSpec(9, 3)),
    ]
    for method, settings, spec in cases:
        expected = spec.relative_positions(n)
        assert torch.equal(relative_positions(method, n, **settings), expected), method
        # the trained length only adds defaults and range checks: same matrix
        assert torch.equal(relative_positions(method, n, trained_length=32, **settings), expected), method
    with pytest.raises(ValueError, match="neighbor_window="):
        relative_positions("self_extend", n, group_size=4)
    with pytest.raises(ValueError, match="shifted_offset=, local_value="):
        relative_positions("string", n)
    with pytest.raises(ValueError, match="unknown rerope setting"):
        relative_positions("rerope", n, window=6, windw=3)


def test_key_rotation_tables_kept_between_calls_stay_right():
    """Decoding turns the same key ranks at every step, so their cos/sin tables are cached: a table grown
    for a longer sequence, a spec with other settings, other frequencies and another dtype must never be
    served a table that is not theirs."""
    from zebra_llm.attention import rotation

    rotation._KEY_TABLES.clear()
    torch.manual_seed(5)
    other_freq = 1.0 / (500.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    cases = [(SelfExtendSpec(3, 5), INV_FREQ), (SelfExtendSpec(4, 5), INV_FREQ), (SelfExtendSpec(3, 5), other_freq),
             (ReRoPESpec(5, leak=4.0), INV_FREQ), (ReRoPESpec(5), INV_FREQ)]
    for n in (12, 40, 90):  # each length past the tables' reach: they grow
        for spec, freq in cases:
            for dtype in (torch.float32, torch.float64):
                q, k, v = (t.to(dtype) for t in rand_qkv(1, 4, 2, 1, 16, seq_kv=n))
                fast = piecewise_attention(q, k, v, spec=spec, inv_freq=freq)
                ref = piecewise_attention(q, k, v, spec=spec, inv_freq=freq, backend="reference")
                assert max_abs_err(fast, ref) <= (1e-5 if dtype == torch.float32 else 1e-10), (spec.name, n, dtype)
    assert 0 < len(rotation._KEY_TABLES) <= rotation.KEY_TABLES_KEPT


def test_key_rotation_reads_frequencies_once_and_again_after_an_in_place_change():
    """The frequencies' values key the tables; they are read once per tensor, and an in-place change of the
    tensor (its version moves) is seen: the tables then follow the new frequencies."""
    from zebra_llm.attention import rotation

    rotation._KEY_TABLES.clear()
    freq = INV_FREQ.clone()
    spec = SelfExtendSpec(3, 5)
    q, k, v = rand_qkv(1, 4, 2, 1, 16, seq_kv=30)
    piecewise_attention(q, k, v, spec=spec, inv_freq=freq)
    assert rotation._FREQ_VALUES[id(freq)][2] == tuple(INV_FREQ.tolist())
    freq.mul_(0.5)  # e.g. a rope module rescaling its buffer in place
    fast = piecewise_attention(q, k, v, spec=spec, inv_freq=freq)
    ref = piecewise_attention(q, k, v, spec=spec, inv_freq=freq, backend="reference")
    assert max_abs_err(fast, ref) <= 1e-5
    assert rotation._FREQ_VALUES[id(freq)][2] == tuple((INV_FREQ * 0.5).tolist())


def test_rotation_without_a_graph_equals_the_differentiable_one():
    from zebra_llm.attention.piecewise import rotate

    torch.manual_seed(6)
    x = torch.randn(2, 3, 11, 20)  # 16 rotated dims, 4 left as they are
    shift = torch.randn(2, 11) * 1000
    with torch.no_grad():
        fast = rotate(x, shift, INV_FREQ)
    slow = rotate(x.clone().requires_grad_(True), shift, INV_FREQ)
    assert slow.requires_grad
    assert max_abs_err(fast, slow.detach()) <= 1e-5
    assert torch.equal(fast[..., 16:], x[..., 16:])


@pytest.mark.parametrize("name", list(SPECS))
def test_stated_key_offsets_hold(name):
    """A spec's ``key_offset`` lets the kernel skip checking a block's keys: it must be true for every rank."""
    spec = SPECS[name]
    ranks = torch.arange(200)
    for region in range(len(spec.regions)):
        c = spec.key_offset(region)
        if c is not None:
            assert torch.equal(spec.key_positions(region, ranks).to(torch.float64), (ranks + c).to(torch.float64))


@pytest.mark.parametrize("n_keys,n_queries,boundary,rows", [
    (37, 37, 5, 768), (37, 37, 5, 2), (40, 40, 7, 3), (40, 9, 7, 4), (40, 1, 7, 4), (12, 12, 30, 4),
    (30, 6, 30, 8), (31, 1, 30, 8), (64, 64, 16, 16), (64, 20, 16, 5), (17, 17, 1, 4),
])
def test_distance_plan_covers_each_visible_pair_once_in_its_region(n_keys, n_queries, boundary, rows):
    """Every (query, key <= query) pair lies in exactly one block of the plan, of the pair's region; the far
    group's causal square is top-left aligned (what the CPU flash kernel's ``is_causal`` means)."""
    from zebra_llm.attention.piecewise import distance_plan

    first = n_keys - n_queries
    seen = torch.zeros(n_queries, n_keys, dtype=torch.long)
    region = torch.full((n_queries, n_keys), -1)
    for g in distance_plan(n_keys, n_queries, boundary, rows):
        assert g.r0 == first + g.q0
        for blk in g.blocks:
            i = torch.arange(g.r0, g.r0 + g.q1 - g.q0)[:, None]
            j = torch.arange(blk.k0, blk.k1)[None, :]
            if blk.kind == "full":
                hit = torch.ones(i.shape[0], j.shape[1], dtype=torch.bool)
            elif blk.kind == "causal":
                hit = (j - blk.k0) <= (i - g.r0)
            else:
                hit = ((i - j) < boundary) == (blk.region == 0)
                hit &= j <= i
            seen[g.q0 : g.q1, blk.k0 : blk.k1] += hit.long()
            region[g.q0 : g.q1, blk.k0 : blk.k1] = torch.where(hit, blk.region, region[g.q0 : g.q1, blk.k0 : blk.k1])
    i = torch.arange(first, n_keys)[:, None]
    j = torch.arange(n_keys)[None, :]
    assert torch.equal(seen, (j <= i).long())
    expected = torch.where(j <= i, ((i - j) >= boundary).long(), -1)
    assert torch.equal(region, expected)


@pytest.mark.parametrize("name", ["self_extend", "rerope", "leaky_rerope", "string"])
@pytest.mark.parametrize("rows", [2, 3])
@pytest.mark.parametrize("backend", ["sdpa", "tiled"])
def test_small_near_groups_under_one_far_group_match_reference(name, rows, backend, monkeypatch):
    """Near groups smaller than the boundary, all overlapping the one far group: outputs (prefill, chunked
    prefill, decoding, padded rows) and float64 gradients equal the dense reference."""
    from zebra_llm.attention import piecewise

    monkeypatch.setattr(piecewise.distance_plan, "__defaults__", (rows,))
    torch.manual_seed(7)
    spec = SPECS[name]
    q, k, v = rand_qkv(2, 4, 2, 26, 16, dtype=torch.float64, requires_grad=True)
    kpm = torch.ones(2, 26, dtype=torch.bool)
    kpm[1, :4] = False
    for qs in (q, q[:, :, -7:], q[:, :, -1:]):
        fast = piecewise_attention(qs, k, v, spec=spec, inv_freq=INV_FREQ, backend=backend, key_padding_mask=kpm)
        ref = piecewise_attention(qs, k, v, spec=spec, inv_freq=INV_FREQ, backend="reference", key_padding_mask=kpm)
        assert max_abs_err(fast, ref) <= 1e-10
    grads = []
    for b in (backend, "reference"):
        out = piecewise_attention(q, k, v, spec=spec, inv_freq=INV_FREQ, backend=b)
        grads.append(torch.autograd.grad((out * out.detach().cos()).sum(), (q, k, v)))
    for fast, ref in zip(*grads):
        assert rel_err(fast, ref) <= 1e-9
