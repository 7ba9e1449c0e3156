"""A model with an evaluation method applied: loaded by ``zebra_llm.loading``, then the method of a
spec (``method_spec``) put on it, with the length limit computed on the unmodified model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hf.extension import attention_modules, extension_state
from ..loading import load_model, trained_context
from .method_spec import MethodSpec, check_limit
from .methods import ExtensionMethod
from .results import model_fingerprint, produced_by, tokens_hash


@dataclass
class LoadedModel:
    """A model with a method applied, its tokenizer, and where they came from."""

    model: Any
    tokenizer: Any
    method: MethodSpec
    source: str
    info: dict = field(default_factory=dict)

    @property
    def max_length(self) -> int | None:
        return self.info.get("max_length")

    def check_length(self, length: int) -> None:
        """Refuse a length above the method's limit on this model (computed before the method was applied)."""
        check_limit(self.method, length, self.max_length, self.info.get("limit_reason", ""))

    @property
    def description(self) -> dict:
        """What a results file records of the model (``ResultsFile.set_model``): source, method, info."""
        return {"source": self.source, "method": self.method.to_dict(), **self.info}


def load_with_method(
    model_spec,
    method: "str | MethodSpec" = "none",
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    strict: bool = True,
) -> LoadedModel:
    """Load ``model_spec`` (``smollm2``, a directory, a ``.gguf`` file or a hub name) and apply ``method``
    (``strict`` as for ``zebra_llm.loading.load_model``: missing or unexpected weights are an error).

    A model object may be passed instead of a spec as ``(model, tokenizer)``; the
    method is then applied to that object in place.
    """
    spec = MethodSpec.parse(method)
    if isinstance(model_spec, tuple):
        model, tokenizer = model_spec
        source = getattr(model.config, "_name_or_path", "") or type(model).__name__
    else:
        model, tokenizer = load_model(
            model_spec, dtype=dtype, device=device, attn_implementation=attn_implementation, strict=strict
        )
        source = str(model_spec)
    spec = spec.for_model(model.config)  # the settings that run, in its label (a model's saved method)
    # Limits are defined on the unmodified model (rope scaling rewrites max_position_embeddings).
    trained = trained_context(model.config)
    limit = spec.max_length(model.config)
    reason = spec.method.limit_reason(model.config, spec.options)
    model = spec.apply(model)
    if device is not None:
        model = model.to(device)
    model.eval()
    info = {
        "model_type": model.config.model_type,
        "trained_context": trained,
        "max_length": limit,
        "limit_reason": reason,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(next(model.parameters()).device),
    }
    states = [extension_state(m) for m in attention_modules(model)] if issubclass(spec.method, ExtensionMethod) else []
    applied = next((state.config for state in states if state is not None), None)
    if applied is not None:  # every setting that ran, defaults included
        info["settings"] = {"method": applied.method, **applied.to_dict()}
    return LoadedModel(model, tokenizer, spec, source, info)


def load_for_run(config, spec: "MethodSpec", model_objects: dict | None = None, *,
                 lengths: Sequence[int] = ()) -> LoadedModel:
    """The model of an evaluation run (``config.model``, ``config.dtype``, ``config.device``) with
    ``spec`` applied, or the ``(model, tokenizer)`` given for that spec in ``model_objects``; each of
    ``lengths`` checked against the method's limit on it (:meth:`LoadedModel.check_length`)."""
    if model_objects and str(spec) in model_objects:
        loaded = load_with_method(model_objects[str(spec)], spec)
    else:
        loaded = load_with_method(config.model, spec, dtype=config.dtype, device=config.device,
                                  strict=not getattr(config, "allow_missing_weights", False))
    for n in lengths:
        loaded.check_length(n)
    return loaded


def item_records(config, loaded: LoadedModel, model_objects: dict | None = None) -> Callable[[Sequence[int]], dict]:
    """``made(ids)``: the ``produced_by`` record (issue 25.1) of an item of a run on ``loaded`` whose tokens
    are ``ids``: the model's files (``config.model``, or the weights of the object given for the method
    in ``model_objects``), the method as applied (its device left out: a resume may move to another
    device) and the tokens."""
    spec = loaded.method
    given = model_objects and str(spec) in model_objects
    weights = model_fingerprint(model_objects[str(spec)] if given else config.model)
    applied = [spec.to_dict(), {k: v for k, v in loaded.info.items() if k != "device"}]
    return lambda ids: produced_by(model=weights, method=applied, tokens=tokens_hash(ids))


__all__ = ["LoadedModel", "item_records", "load_for_run", "load_with_method"]
