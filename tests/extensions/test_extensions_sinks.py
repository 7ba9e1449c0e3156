"""Attention sinks (LM-Infinite's Lambda-shaped mask and distance limit) as an extension method: its rule
against the paper's definition, its plan, and the public entry points. The kernel and model tests against the
dense reference run with the other methods' (attention/test_piecewise.py, extensions/test_extensions_models.py)."""

from __future__ import annotations

import pytest
import torch

from zebra_llm import apply_extension, remove_extension
from zebra_llm.attention import piecewise
from zebra_llm.attention.specs import DCASpec, ReRoPESpec, SelfExtendSpec, SinksSpec, StringSpec
from zebra_llm.extensions import SinksConfig, extension_config, relative_positions

from dca_tiny import logits, tiny_model
from helpers import max_abs_err

pytestmark = pytest.mark.usefixtures("one_thread")


def lm_infinite(n: int, n_sink: int, window: int, limit: int) -> torch.Tensor:
    """LM-Infinite's rule written out pair by pair: a query sees its last ``window`` keys at their distance
    and the first ``n_sink`` tokens at ``min(distance, limit)``; nothing else (-1)."""
    out = torch.full((n, n), -1, dtype=torch.long)
    for i in range(n):
        for j in range(i + 1):
            d = i - j
            if d < window:
                out[i, j] = d
            elif j < n_sink:
                out[i, j] = min(d, limit)
    return out


@pytest.mark.parametrize("n_sink,window,limit", [(2, 6, 9), (3, 8, 5), (0, 5, 5), (4, 1, 3), (6, 4, 20)])
def test_rule_is_lm_infinites(n_sink, window, limit):
    assert torch.equal(SinksSpec(n_sink, window, limit).relative_positions(31), lm_infinite(31, n_sink, window, limit))


def test_public_relative_positions_and_defaults():
    expected = lm_infinite(12, 2, 4, 6)
    assert torch.equal(relative_positions("sinks", 12, n_sink=2, window=4, distance_limit=6), expected)
    cfg = SinksConfig(8192)  # LM-Infinite's Llama-2 command scaled to the trained length: window = limit = c
    assert (cfg.n_sink, cfg.window, cfg.distance_limit) == (100, 8192, 8192)
    assert SinksConfig(16).n_sink == 1  # capped at c/16 for a short trained length
    with pytest.raises(ValueError, match="window must be at most the trained length 16"):
        SinksConfig(16, window=17)
    with pytest.raises(ValueError, match="n_sink must be an integer >= 0"):
        SinksConfig(16, n_sink=-1)
    with pytest.raises(ValueError, match="give window=, distance_limit= or trained_length="):
        relative_positions("sinks", 8, n_sink=2)


ALL_SPECS = [DCASpec(6, 10), SelfExtendSpec(3, 5), ReRoPESpec(5, leak=4.0), StringSpec(9, 3),
             SinksSpec(2, 6, 9), SinksSpec(3, 8, 5), SinksSpec(5, 3, 4)]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: f"{s.name}-{sorted(vars(s).items())}")
@pytest.mark.parametrize("n_keys,n_queries", [(40, 40), (40, 9), (40, 1), (7, 7), (33, 2)])
@pytest.mark.parametrize("rows", [768, 3])
def test_plan_covers_each_visible_pair_once_in_its_region(spec, n_keys, n_queries, rows, monkeypatch):
    """Every pair the rule shows lies in exactly one block of the plan, of the pair's region; hidden pairs in
    none (every spec, small query groups too)."""
    monkeypatch.setattr(piecewise.band_groups, "__defaults__", (rows,))
    monkeypatch.setattr(piecewise.distance_plan, "__defaults__", (rows,))
    first = n_keys - n_queries
    seen = torch.zeros(n_queries, n_keys, dtype=torch.long)
    where = torch.full((n_queries, n_keys), -1)
    for g in spec.plan(n_keys, n_queries):
        i = torch.arange(g.r0, g.r0 + g.q1 - g.q0)[:, None]
        for blk in g.blocks:
            j = torch.arange(blk.k0, blk.k1)[None, :]
            if blk.kind == "full":
                hit = torch.ones(i.shape[0], j.shape[1], dtype=torch.bool)
            elif blk.kind == "causal":
                hit = (j - blk.k0) <= (i - g.r0)
            else:
                hit = (spec.region_of(i, j) == blk.region) & (j <= i)
            seen[g.q0 : g.q1, blk.k0 : blk.k1] += hit.long()
            where[g.q0 : g.q1, blk.k0 : blk.k1] = torch.where(hit, blk.region, where[g.q0 : g.q1, blk.k0 : blk.k1])
    i = torch.arange(first, n_keys)[:, None]
    j = torch.arange(n_keys)[None, :]
    visible = (j <= i) & (spec.region_of(i, j) >= 0)
    assert torch.equal(seen, visible.long())
    assert torch.equal(where, torch.where(visible, spec.region_of(i, j).expand_as(visible), -1))


def test_sinks_on_a_model_equal_the_model_inside_the_window_and_in_every_entry_point():
    from zebra_llm.eval import load_with_method
    from zebra_llm.eval.methods import METHODS

    model = tiny_model("llama")
    x = torch.randint(1, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    before = logits(model, x)
    apply_extension(model, "sinks", n_sink=2, window=12, distance_limit=16)  # window spans the sequence
    assert max_abs_err(logits(model, x), before) <= 1e-5
    assert extension_config(model) == ("sinks", SinksConfig(16, 2, 12, 16))
    remove_extension(model)
    assert "sinks" in METHODS
    loaded = load_with_method((tiny_model("llama"), None), "sinks:n_sink=2,window=6")
    assert extension_config(loaded.model)[1] == SinksConfig(16, 2, 6, 16) and loaded.max_length is None
