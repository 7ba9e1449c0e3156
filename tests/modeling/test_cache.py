"""Zebra models with fixed-size caches, packed sequences, and the cache's name (issue 11, items 1, 2, 10)."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import DynamicCache, StaticCache

from zebra_llm import hf

from helpers import max_abs_err
from zebra_helpers import VOCAB, A, F, S, logits, tiny

TOL = 1e-4
LAYOUTS = pytest.mark.parametrize("layer_types", [[F, S, F, S], [A, S, A, F]], ids=["group", "with_global_approx"])


def _decode(model, ids, cache, prefill):
    """Prefill ``prefill`` tokens, then one token at a time; the logits of every position."""
    steps = []
    with torch.no_grad():
        steps.append(model(ids[:, :prefill], use_cache=True, **hf.cache_kwargs(cache)).logits)
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], use_cache=True, **hf.cache_kwargs(cache)).logits)
    return torch.cat(steps, dim=1)


@LAYOUTS
@pytest.mark.parametrize("prefill", [5, 19], ids=["prefill-inside-window", "prefill-past-window"])
def test_static_cache_decoding_equals_dynamic_cache(layer_types, prefill):
    model = tiny(layer_types)  # window 16: decoding runs past it
    ids = torch.randint(0, VOCAB, (2, 27))
    dynamic = _decode(model, ids, DynamicCache(config=model.config), prefill)
    static = _decode(model, ids, StaticCache(config=model.config, max_cache_len=32), prefill)
    assert max_abs_err(static, dynamic) <= TOL
    assert max_abs_err(dynamic, logits(model, ids)) <= TOL


@LAYOUTS
def test_static_cache_chunked_prefill_equals_full_forward(layer_types):
    model = tiny(layer_types)
    ids = torch.randint(0, VOCAB, (1, 60))
    cache = StaticCache(config=model.config, max_cache_len=60)
    with torch.no_grad():
        parts = [model(ids[:, a:b], use_cache=True, **hf.cache_kwargs(cache)).logits for a, b in ((0, 9), (9, 30), (30, 60))]
    assert max_abs_err(torch.cat(parts, dim=1), logits(model, ids)) <= TOL


@LAYOUTS
def test_generate_with_static_cache_equals_dynamic_cache(layer_types):
    model = tiny(layer_types)
    model.generation_config.pad_token_id = 0
    batch = torch.randint(1, VOCAB, (2, 14))
    mask = torch.ones_like(batch)
    batch[1, :5], mask[1, :5] = 0, 0  # left padding
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, output_scores=True,
                  return_dict_in_generate=True)
    dynamic = model.generate(batch, **kwargs)
    static = model.generate(batch, cache_implementation="static", **kwargs)
    assert isinstance(hf.output_cache(static), StaticCache)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert max(max_abs_err(a, b) for a, b in zip(static.scores, dynamic.scores)) <= TOL


def test_static_cache_too_small_is_an_error():
    model = tiny([F, S, F, S])
    cache = StaticCache(config=model.config, max_cache_len=8)
    with pytest.raises(ValueError, match="max_cache_len=8"):
        model(torch.randint(0, VOCAB, (1, 12)), use_cache=True, **hf.cache_kwargs(cache))
    cache = StaticCache(config=model.config, max_cache_len=8)
    model(torch.randint(0, VOCAB, (1, 8)), use_cache=True, **hf.cache_kwargs(cache))  # exactly full is fine
    with pytest.raises(ValueError, match="8 cached"):
        model(torch.randint(0, VOCAB, (1, 1)), use_cache=True, **hf.cache_kwargs(cache))


def test_static_cache_with_a_mask_based_implementation_equals_dynamic_cache():
    model = tiny([F, S, F, S])
    model.set_attn_implementation("sdpa")
    ids = torch.randint(0, VOCAB, (2, 27))
    dynamic = _decode(model, ids, DynamicCache(config=model.config), 5)
    static = _decode(model, ids, StaticCache(config=model.config, max_cache_len=32), 5)
    assert max_abs_err(static, dynamic) <= TOL


PACKED = torch.cat([torch.arange(12), torch.arange(8)])[None]  # two documents in one row


@pytest.mark.parametrize(
    "implementation,kwargs",
    [
        ("zebra", {}),  # use_cache defaults to True
        ("zebra", {"use_cache": False}),
        ("zebra", {"use_cache": True}),
        ("zebra", {"use_cache": False, "attention_mask": torch.ones(1, 20, dtype=torch.long)}),
        ("zebra", {"cache": "dynamic"}),
        ("zebra", {"cache": "static"}),
        ("sdpa", {}),
        ("sdpa", {"use_cache": False, "attention_mask": torch.ones(1, 20, dtype=torch.long)}),
        ("eager", {"use_cache": True}),
    ],
)
def test_packed_sequences_are_refused_on_every_path(implementation, kwargs):
    model = tiny([F, S, F, S])
    model.set_attn_implementation(implementation)
    kwargs = dict(kwargs)
    if "cache" in kwargs:
        kind = kwargs.pop("cache")
        cache = DynamicCache(config=model.config) if kind == "dynamic" else StaticCache(config=model.config, max_cache_len=32)
        kwargs.update(use_cache=True, **hf.cache_kwargs(cache))
    ids = torch.randint(0, VOCAB, (1, 20))
    with pytest.raises(ValueError, match="packed"):
        model(ids, position_ids=PACKED, **kwargs)
    with pytest.raises(ValueError, match="packed"):  # position ids without a batch dimension
        model(ids, position_ids=PACKED[0], **kwargs)
    with pytest.raises(ValueError, match="packed"):  # a batch whose second row is packed
        model(ids.repeat(2, 1), position_ids=torch.cat([torch.arange(20)[None], PACKED]), **kwargs)


def test_packed_sequences_with_a_mask_based_implementation_stay_apart():
    """Without a cache and without an attention mask transformers builds the per-document mask: allowed."""
    model = tiny([F, S, F, S])
    model.set_attn_implementation("sdpa")
    ids = torch.randint(0, VOCAB, (1, 20))
    packed = logits(model, ids, position_ids=PACKED, use_cache=False)
    assert max_abs_err(packed[:, :12], logits(model, ids[:, :12], use_cache=False)) <= TOL
    assert max_abs_err(packed[:, 12:], logits(model, ids[:, 12:], use_cache=False)) <= TOL


def test_left_padded_and_continued_positions_are_not_packing():
    model = tiny([F, S, F, S])
    ids = torch.randint(1, VOCAB, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate gives a left-padded batch: 0 0 0 0 0 1 2 ...
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, position_ids=positions, use_cache=True, **hf.cache_kwargs(cache))
        # a continuation chunk: positions go on from the cache
        more = torch.randint(1, VOCAB, (2, 3))
        model(more, attention_mask=torch.cat([mask, torch.ones_like(more)], 1),
              position_ids=positions[:, -1:] + torch.arange(1, 4), use_cache=True, **hf.cache_kwargs(cache))


def test_outputs_carry_the_cache_under_the_installed_name(caplog):
    model = tiny([F, S, F, S])
    ids = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    assert hf.CACHE_FIELD in out.keys()
    assert isinstance(hf.output_cache(out), DynamicCache)
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    assert hf.CACHE_FIELD == ("cache" if (major, minor) >= (5, 24) else "past_key_values")
    # the library itself never goes through transformers' deprecated alias
    with caplog.at_level(logging.WARNING, logger="transformers"):
        transformers.logging.enable_propagation()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            model(ids, use_cache=True, **hf.cache_kwargs(DynamicCache(config=model.config)))
    assert "deprecated" not in caplog.text
