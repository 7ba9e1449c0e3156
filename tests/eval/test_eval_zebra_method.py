"""The `zebra` method (conversion with zebra_llm.convert_to_zebra) through the evaluations."""

import pytest
import torch

from zebra_llm import hf
from zebra_llm.eval import PerplexityConfig, load_with_method, run_perplexity
from zebra_llm.eval.efficiency import BenchConfig, estimate_flops, run_bench

from eval_helpers import TINY_CONTEXT, tiny_llama


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_zebra_method_converts_and_keeps_weights():
    ids = torch.randint(0, 100, (1, 40), generator=torch.Generator().manual_seed(0))
    base = _logits(tiny_llama(100), ids)
    glob = load_with_method((tiny_llama(100), None), "zebra:attention=global")
    assert glob.model.config.model_type == "zebra" and glob.info["trained_context"] == TINY_CONTEXT
    torch.testing.assert_close(_logits(glob.model, ids), base, rtol=1e-4, atol=1e-4)
    group = load_with_method((tiny_llama(100), None), "zebra:layer_group_size=2,window=8")
    assert group.model.config.model_type == "zebra"
    out = _logits(group.model, ids)
    # a window of 8 changes what the local layer sees past position 8, not before
    torch.testing.assert_close(out[:, :8], base[:, :8], rtol=1e-4, atol=1e-4)
    assert (out[:, 8:] - base[:, 8:]).abs().max() > 1e-3
    assert group.max_length == 4 * TINY_CONTEXT


def test_zebra_method_in_perplexity_and_bench(tiny_model_dir, tiny_corpus):
    ppl = run_perplexity(PerplexityConfig(model=str(tiny_model_dir), data=str(tiny_corpus), lengths=[48],
                                          methods=["none", "zebra:attention=global", "zebra:layer_group_size=2,window=8"]),
                         progress=False)
    rows = {r["method"]: r["ppl"] for r in ppl["summary"]}
    assert rows["zebra:attention=global"] == pytest.approx(rows["none"], rel=1e-4)
    assert rows["zebra:layer_group_size=2,window=8"] != pytest.approx(rows["none"], rel=1e-3)

    bench = run_bench(BenchConfig(model=str(tiny_model_dir), methods=["zebra:layer_group_size=2,window=8"],
                                  lengths=[128], decode_tokens=2, isolate=False), progress=False)
    z = next(r for r in bench["summary"] if r["method"] != "none")
    # one global and one local layer of window 8: KV cache about (1 + 8/128) / 2 of the global model's
    assert z["kv_cache_ratio"] <= 0.5 + 8 / 128 + 1e-9
    assert z["flops"] is not None and z["flops_ratio"] < 1


def test_estimate_flops_uses_library_estimate():
    from zebra_llm.flops import forward_flops

    config = tiny_llama(100).config
    assert estimate_flops(config, 64) == forward_flops(config, 64)
    assert estimate_flops(config, 64, batch_size=3) == 3 * forward_flops(config, 64)
    config.model_type = "gpt2"  # a family the estimate does not cover: reported as n/a
    assert estimate_flops(config, 64) is None


def test_zebra_prefix_cache_reuse_is_exact(tiny_model_dir):
    """Continuing a prefilled Zebra cache (sliding-window layers past their window) equals a full prefill."""
    from zebra_llm.eval.passkey import run_passkey
    from zebra_llm.eval.retrieval import RetrievalConfig, prefill_cache

    loaded = load_with_method(str(tiny_model_dir), "zebra:layer_group_size=2,window=8")
    ids = torch.randint(0, 1000, (1, 50), generator=torch.Generator().manual_seed(1))
    cache = prefill_cache(loaded.model, ids[0, :30].tolist())
    with torch.no_grad():
        cont = loaded.model(ids[:, 30:], **hf.cache_kwargs(cache)).logits
        full = loaded.model(ids).logits[:, 30:]
    torch.testing.assert_close(cont, full, rtol=1e-4, atol=1e-4)

    base = dict(model=str(tiny_model_dir), methods=["zebra:layer_group_size=2,window=8"], lengths=[120],
                depths=[0.5], trials=2, max_new_tokens=4)
    a = run_passkey(RetrievalConfig(**base), progress=False)
    b = run_passkey(RetrievalConfig(**base, reuse_prefix=False, batch_size=2), progress=False)
    assert [i["output"] for i in a["items"]] == [i["output"] for i in b["items"]]
