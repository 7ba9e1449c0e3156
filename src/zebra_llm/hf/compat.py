"""Names that changed between transformers versions, read from the installed one."""

from __future__ import annotations

import dataclasses
import inspect

from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.24 renamed the cache argument of model forwards and mask functions from
# ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40); pass the one it has.
CACHE_KWARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
# The same rename for the field of output objects (``CausalLMOutputWithPast.cache``).
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{name: cache}`` for a model forward or ``generate`` under the installed transformers' name."""
    return {CACHE_KWARG: cache}


def output_cache(output):
    """The cache an output object carries, read under the installed transformers' field name."""
    return getattr(output, CACHE_FIELD)


def merge_cache_kwargs(past_key_values, cache, where: str):
    """The cache a forward was given under either name (``cache`` from transformers >= 5.24)."""
    if cache is None:
        return past_key_values
    if past_key_values is not None and past_key_values is not cache:
        raise ValueError(f"{where}: give the cache as cache or as past_key_values, not both")
    return cache
