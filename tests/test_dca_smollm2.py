"""DCA on the real SmolLM2-135M (trained context 8192)."""

from __future__ import annotations

import pytest
import torch

from zebra_llm.dca import apply_dca, remove_dca

from dca_tiny import one_thread  # noqa: F401 (fixture)
from helpers import max_abs_err

pytestmark = pytest.mark.usefixtures("one_thread")


def _text_ids(tokenizer, n):
    import inspect

    import zebra_llm.attention.local as source

    ids = tokenizer(inspect.getsource(source), return_tensors="pt").input_ids
    assert ids.shape[1] >= n
    return ids[:, :n]


def test_within_one_chunk_equals_unmodified(load_smollm2):
    model, tokenizer = load_smollm2()
    x = _text_ids(tokenizer, 300)
    with torch.no_grad():
        before = model(x).logits
        apply_dca(model)  # pretraining_length 8192, chunk 6144: 300 tokens are one chunk
        after = model(x).logits
        remove_dca(model)
        restored = model(x).logits
    assert max_abs_err(after, before) <= 1e-4
    assert torch.equal(restored, before)


def test_decoding_across_chunks_matches_full_forward(load_smollm2):
    """With a small pretraining_length override (64, chunks of 48), 140 tokens span three chunks."""
    model, tokenizer = load_smollm2()
    apply_dca(model, pretraining_length=64, temperature=False)
    x = _text_ids(tokenizer, 140)
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :90], use_cache=True)
        pieces, cache = [out.logits], out.past_key_values
        for t in range(90, 140, 7):  # several tokens at a time, crossing the chunk boundary at 96
            out = model(x[:, t : t + 7], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.past_key_values
    assert max_abs_err(torch.cat(pieces, dim=1), full) <= 1e-4
