"""The `dca` method (zebra_llm.apply_dca) through the evaluations."""

import pytest
import torch

from zebra_llm import hf
from zebra_llm.eval import PerplexityConfig, load_with_method, run_perplexity
from zebra_llm.eval.passkey import run_passkey
from zebra_llm.eval.retrieval import RetrievalConfig, prefill_cache

from eval_helpers import TINY_CONTEXT, tiny_llama


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_dca_method_applies_and_is_identity_within_one_chunk():
    ids = torch.randint(0, 100, (1, 3 * TINY_CONTEXT), generator=torch.Generator().manual_seed(0))
    base = _logits(tiny_llama(100), ids)
    loaded = load_with_method((tiny_llama(100), None), "dca:chunk_size=48")
    assert loaded.max_length is None  # DCA has no length limit
    out = _logits(loaded.model, ids)
    # a sequence no longer than one chunk is ordinary attention (DESIGN.md)
    torch.testing.assert_close(out[:, :48], base[:, :48], rtol=1e-4, atol=1e-4)
    assert (out[:, 48:] - base[:, 48:]).abs().max() > 1e-3
    # the spec's options reach apply_dca
    explicit = load_with_method((tiny_llama(100), None), "dca:pretraining_length=64,chunk_size=48")
    torch.testing.assert_close(_logits(explicit.model, ids), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec, message", [
    ("dca:chunk_size=64", "chunk_size"),
    ("dca:chunk_size=100", "chunk_size"),
])
def test_dca_invalid_chunk_size_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_with_method((tiny_llama(100), None), spec)


def test_dca_in_perplexity_past_the_limit_of_none(tiny_model_dir, tiny_corpus):
    # 300 tokens: above none's limit (4 x 64) but fine for DCA
    data = run_perplexity(PerplexityConfig(model=str(tiny_model_dir), data=str(tiny_corpus), lengths=[300],
                                           methods=["dca"]), progress=False)
    (row,) = data["summary"]
    assert row["method"] == "dca" and row["tokens"] > 0
    assert data["models"]["dca"]["max_length"] is None


def test_dca_prefix_cache_reuse_is_exact(tiny_model_dir):
    loaded = load_with_method(str(tiny_model_dir), "dca:chunk_size=24")
    ids = torch.randint(0, 1000, (1, 150), generator=torch.Generator().manual_seed(2))
    cache = prefill_cache(loaded.model, ids[0, :70].tolist())
    with torch.no_grad():
        cont = loaded.model(ids[:, 70:], **hf.cache_kwargs(cache)).logits
        full = loaded.model(ids).logits[:, 70:]
    torch.testing.assert_close(cont, full, rtol=1e-4, atol=1e-4)
    base = dict(model=str(tiny_model_dir), methods=["dca:chunk_size=24"], lengths=[150], depths=[0.5], trials=2,
                max_new_tokens=4)
    a = run_passkey(RetrievalConfig(**base), progress=False)
    b = run_passkey(RetrievalConfig(**base, reuse_prefix=False, batch_size=2), progress=False)
    assert [i["output"] for i in a["items"]] == [i["output"] for i in b["items"]]
