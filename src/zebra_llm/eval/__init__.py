"""Evaluation: perplexity by length, passkey and needle retrieval, efficiency,
generation, figures and reports, for any model with any context-extension method.

Every evaluation takes a model spec (``smollm2``, a directory, a ``.gguf`` file
or a hub name) and one or more method specs (``none``, ``linear:factor=4``,
``dynamic:factor=4``, ``yarn:factor=4``, ``dca``, ``zebra:layer_group_size=4,window=512``)
applied on load; see :mod:`zebra_llm.eval.methods`. Guide: docs/evaluation.md.
"""

from .loss import check_loss_path, token_nll
from ..loading import trained_context
from .methods import METHODS  # first: the spec language builds on the registry
from .method_spec import MethodSpec, parse_methods
from .loaded import LoadedModel, load_with_method
from .perplexity import (
    PerplexityConfig,
    bucket_segments,
    fixed_segments,
    perplexity,
    run_perplexity,
    summarize_perplexity,
    window_segments,
)
from .results import ResultsFile, load_results

__all__ = [
    "METHODS",
    "LoadedModel",
    "MethodSpec",
    "PerplexityConfig",
    "ResultsFile",
    "bucket_segments",
    "check_loss_path",
    "fixed_segments",
    "load_results",
    "load_with_method",
    "parse_methods",
    "perplexity",
    "run_perplexity",
    "summarize_perplexity",
    "token_nll",
    "trained_context",
    "window_segments",
]
