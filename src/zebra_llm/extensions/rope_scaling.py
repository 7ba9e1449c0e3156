"""RoPE scaling baselines on a loaded model, through transformers' own rope types: position interpolation
(``linear``; Chen et al., 2023, arXiv 2306.15595), dynamic NTK (``dynamic``) and YaRN (``yarn``; Peng et al.,
2023, arXiv 2309.00071).

:func:`apply_rope_scaling` sets ``config.rope_parameters`` and rebuilds the model's rotary-embedding module
from it through its public constructor, so the frequencies are exactly the ones transformers computes for a
checkpoint saved with that scaling.
"""

from __future__ import annotations

import math

from ..loading import trained_context

ROPE_TYPES = ("linear", "dynamic", "yarn")


def apply_rope_scaling(model, rope_type: str, factor: float, *, original_max_position_embeddings: int | None = None,
                       beta_fast: float | None = None, beta_slow: float | None = None,
                       attention_factor: float | None = None):
    """Scale ``model``'s RoPE by ``factor`` with transformers' ``rope_type`` (``linear``, ``dynamic``,
    ``yarn``; ``beta_fast``, ``beta_slow``, ``attention_factor``: YaRN's). ``original_max_position_embeddings``:
    the context the model was trained on (default: its trained context). Returns the same model; raises
    ``ValueError`` for a model without a single ``rope_parameters`` dict or one already scaled."""
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_type must be one of {', '.join(ROPE_TYPES)}, got {rope_type!r}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    config = model.config
    current = getattr(config, "rope_parameters", None)
    if not isinstance(current, dict) or "rope_theta" not in current:
        raise ValueError(
            f"model type {config.model_type} has no single rope_parameters dict with rope_theta; rope scaling "
            "applies to RoPE models"
        )
    if current.get("rope_type", "default") != "default":
        raise ValueError(
            f"the model already uses rope_type {current['rope_type']!r}; stacking two rope scalings is not supported"
        )
    original = original_max_position_embeddings or trained_context(config)
    params = {k: v for k, v in current.items() if k not in ("type", "factor", "original_max_position_embeddings")}
    params.update(rope_type=rope_type, factor=float(factor))
    if rope_type == "yarn":
        params["original_max_position_embeddings"] = int(original)
        for key, value in (("beta_fast", beta_fast), ("beta_slow", beta_slow), ("attention_factor", attention_factor)):
            if value is not None:
                params[key] = float(value)
    config.rope_parameters = params
    # PI and YaRN models are published with max_position_embeddings = factor * original; transformers'
    # dynamic NTK scales relative to max_position_embeddings, so there it must stay the original.
    config.max_position_embeddings = int(original) if rope_type == "dynamic" else int(original * factor)
    config.validate_rope()
    if _rebuild_rotary_embeddings(model) == 0:
        raise ValueError(f"found no rotary-embedding module in {type(model).__name__} to rebuild")
    return model


def _rebuild_rotary_embeddings(model) -> int:
    """Replace every rotary-embedding module by a fresh one built from its (updated) config.

    Rotary modules in transformers are built by ``type(module)(config)`` and keep their frequencies in a
    non-persistent ``inv_freq`` buffer, so rebuilding is the public way to change them after loading.
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "inv_freq") and hasattr(module, "rope_type") and hasattr(module, "config")
    ]
    for name, module in targets:
        device = module.inv_freq.device
        model.set_submodule(name, type(module)(module.config).to(device))
    return len(targets)


__all__ = ["ROPE_TYPES", "apply_rope_scaling"]
