"""Tiny random Zebra models for the tests of several folders (modeling, eval): the debug preset with
weights large enough that attention patterns matter, and the layer-type names."""

import torch

from zebra_llm import ZebraConfig, ZebraForCausalLM

F, S, A = "full_attention", "sliding_attention", "global_approx"
VOCAB = 512


def tiny(layer_types=None, **overrides):
    """A random debug-sized model with weights large enough that attention patterns matter."""
    kwargs = dict(vocab_size=VOCAB, initializer_range=0.1, window=16, approx_chunk_size=6)
    kwargs.update(overrides)
    if layer_types is not None:
        kwargs["layer_types"] = layer_types
    torch.manual_seed(0)
    return ZebraForCausalLM(ZebraConfig.from_preset("debug", **kwargs)).eval()


def logits(model, ids, **kwargs):
    """The model's logits for ``ids``, without gradients."""
    with torch.no_grad():
        return model(ids, **kwargs).logits
