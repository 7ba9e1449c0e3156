"""``stream_generate`` runs ``generate`` in a thread: the caller's attention backend must reach it (issue 11, item 10)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from zebra_llm.attention import backends, use_backend
from zebra_llm.eval.generate import GenerationSettings, generate_text

from zebra_helpers import F, S, tiny


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_backend_chosen_by_the_caller_reaches_the_generation_thread(tokenizer, monkeypatch):
    model = tiny([F, S, S, F], vocab_size=len(tokenizer))
    seen = []
    original = backends._IMPLS[("global", "reference")]

    def spy(*args, **kwargs):
        seen.append(True)
        return original(*args, **kwargs)

    monkeypatch.setitem(backends._IMPLS, ("global", "reference"), spy)
    settings = GenerationSettings(max_new_tokens=4)
    plain = generate_text(model, tokenizer, "The grass is green.", settings)
    assert not seen  # the default backend does not use the reference kernel
    with use_backend("reference"):
        forced = generate_text(model, tokenizer, "The grass is green.", settings)
    assert seen, "the generation thread did not see use_backend('reference')"
    assert forced == plain  # same greedy text through either kernel
    assert backends.default_backend() == "auto"
