"""Compiled FlexAttention compiles once for a whole decode, not once per step (issue 11, item 9)."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from zebra_llm.attention import _flex, masks
from zebra_llm.attention.reference import local_attention as ref_local

from helpers import rel_err

pytestmark = pytest.mark.skipif(
    not _flex.flex_available() or shutil.which("c++") is None and shutil.which("g++") is None,
    reason="needs torch >= 2.6 FlexAttention and a C++ compiler for CPU compilation",
)


@pytest.mark.slow
def test_decode_steps_share_one_compiled_graph():
    """Each decode step has one more key (and a new query offset). With ``dynamic=False`` or the offset
    captured as an int every step was a new graph (8 of them, then an eager fallback that builds the
    scores); now one graph serves all steps and the results still match the dense reference.

    Not 40 keys: torch 2.13's compiled CPU FlexAttention returns wrong values for one query against 40
    keys with this window (static and dynamic compilation alike, plain ``flex_attention`` with an int
    offset too; eager is right), one reason the library does not compile FlexAttention on CPU by default."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    window = 8
    torch.manual_seed(0)
    k_all, v_all = torch.randn(1, 2, 40, 16), torch.randn(1, 2, 40, 16)
    q_all = torch.randn(1, 4, 40, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in (33, 34, 35, 37, 41):
            q, k, v = q_all[:, :, n - 1 : n], k_all[:, :, :n], v_all[:, :, :n]
            out = _flex.flex_run(
                q, k, v, scale=0.25, predicate=masks.sliding_window(window), key_padding_mask=None,
                q_offset=n - 1, cache_key=("local", window), compile=True,
            )
            ref = ref_local(q_all[:, :, :n], k, v, window=window, scale=0.25)[:, :, -1:]
            assert rel_err(out, ref) <= 1e-5
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    fallbacks = [str(w.message) for w in caught if "recompile" in str(w.message) or "without torch.compile" in str(w.message)]
    assert not fallbacks


def test_no_global_warning_filter_for_flex():
    """The eager path silences its own warning locally, not for the whole process."""
    before = list(warnings.filters)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    _flex.flex_run(q, k, v, scale=0.3, predicate=masks.causal, key_padding_mask=None, q_offset=0)
    assert warnings.filters == before


def test_torch_version_guard(monkeypatch):
    monkeypatch.setattr(_flex.torch, "__version__", "2.5.1+cpu")
    assert _flex.torch_version() == (2, 5)
    _flex.flex_available.cache_clear()
    try:
        assert not _flex.flex_available() and not _flex.flex_has_aux()
        with pytest.raises(ValueError, match="torch >= 2.6"):
            _flex.require_flex()
    finally:
        monkeypatch.undo()
        _flex.flex_available.cache_clear()
    assert _flex.torch_version() >= (2, 6)
