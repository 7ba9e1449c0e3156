"""DCA on Zebra models: global layers run DCA, local and global_approx layers keep Zebra's attention."""

from __future__ import annotations

import pytest
import torch

from zebra_llm import hf
from zebra_llm.attention import use_backend
from zebra_llm.dca import apply_dca, dca_config, remove_dca

from dca_tiny import logits, tiny_zebra
from helpers import max_abs_err

pytestmark = pytest.mark.usefixtures("one_thread")


def ids(batch=2, seq=50, seed=1):
    return torch.randint(1, 97, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layer_types", [None, ["global", "local", "global_approx", "global"]], ids=["group", "mixed"])
def test_matches_dense_reference(layer_types):
    # the reference backend also swaps the local / global_approx kernels for their dense oracles, so
    # DCA running on a non-global layer (or Zebra attention on a global one) would show here
    model = apply_dca(tiny_zebra(layer_types), chunk_size=6, temperature=False)
    assert model.config._attn_implementation == "zebra" and dca_config(model) is not None
    x = ids()
    fast = logits(model, x)
    with use_backend("reference"):
        ref = logits(model, x)
    assert max_abs_err(fast, ref) <= 1e-4


def test_long_outputs_change_and_removal_restores():
    model = tiny_zebra()
    x, short = ids(seq=40), ids(seq=12)
    before, before_short = logits(model, x), logits(model, short)
    apply_dca(model, chunk_size=6)
    assert max_abs_err(logits(model, ids(seq=6)), logits(tiny_zebra_copy(model), ids(seq=6))) <= 1e-5
    assert max_abs_err(logits(model, x), before) > 1e-3
    remove_dca(model)
    assert model.config._attn_implementation == "zebra"
    assert torch.equal(logits(model, x), before) and torch.equal(logits(model, short), before_short)


def tiny_zebra_copy(model):
    """The same weights without DCA."""
    copy = tiny_zebra()
    copy.load_state_dict(model.state_dict())
    return copy


def test_within_one_chunk_equals_zebra():
    model = tiny_zebra()
    x = ids(seq=12)
    before = logits(model, x)
    apply_dca(model)  # chunk 12
    assert max_abs_err(logits(model, x), before) <= 1e-5


def test_decoding_and_padding():
    model = apply_dca(tiny_zebra(), chunk_size=6, temperature=True)
    x = ids(seq=41)
    full = logits(model, x)
    with torch.no_grad():
        out = model(x[:, :9], use_cache=True)
        pieces, cache = [out.logits], hf.output_cache(out)
        for t in range(9, 41, 4):
            out = model(x[:, t : t + 4], **hf.cache_kwargs(cache), use_cache=True)
            pieces.append(out.logits)
            cache = hf.output_cache(out)
    assert max_abs_err(torch.cat(pieces, dim=1), full) <= 1e-4
    short = ids(1, 23, seed=3)[0]
    padded = torch.cat([torch.zeros(18, dtype=torch.long), short])[None]
    mask = torch.cat([torch.zeros(18, dtype=torch.long), torch.ones(23, dtype=torch.long)])[None]
    batch_mask = torch.cat([torch.ones(1, 41, dtype=torch.long), mask])
    both = logits(model, torch.cat([x[:1], padded]), attention_mask=batch_mask)
    assert max_abs_err(both[0], full[0]) <= 1e-4
    assert max_abs_err(both[1, 18:], logits(model, short[None])[0]) <= 1e-4


def test_zebra_without_global_layers_is_refused():
    with pytest.raises(ValueError, match="global"):
        apply_dca(tiny_zebra(["local", "local", "global_approx", "local"]))
    assert dca_config(tiny_zebra()) is None
