"""Fixed-size caches (``StaticCache``) with sliding-window layers under an extension: one rule (issue 25,
item 5). They used to be refused only while the prompt was shorter than the window (and accepted past
it); they now work at every prompt length, and prefill plus token-by-token decoding equals the full
forward, before the window fills, as it fills and past it."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, StaticCache

from zebra_llm.extensions import apply_extension

WINDOW = 8


def _model(method, settings):
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         use_sliding_window=True, sliding_window=WINDOW, max_window_layers=0,
                         layer_types=["full_attention", "sliding_attention"])
    model = Qwen2ForCausalLM(config).eval()
    apply_extension(model, method, **settings)
    return model


@pytest.mark.parametrize("method, settings", [("rerope", {"window": 5}), ("dca", {"pretraining_length": 16}),
                                              ("self_extend", {"group_size": 2, "neighbor_window": 4})])
@pytest.mark.parametrize("prompt", [1, 4, WINDOW - 1, WINDOW, 12])
def test_static_cache_with_sliding_layers_matches_the_full_forward(method, settings, prompt):
    model = _model(method, settings)
    x = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x).logits
        cache = StaticCache(config=model.config, max_cache_len=32)
        pieces = [model(x[:, :prompt], past_key_values=cache, use_cache=True).logits]
        for t in range(prompt, x.shape[1]):
            pieces.append(model(x[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5 * full.abs().max().item() + 1e-6
