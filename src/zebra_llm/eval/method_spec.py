"""The method spec language: ``name`` or ``name:key=value,...`` (the methods and their options:
``zebra_llm.eval.methods``), parsed into a validated :class:`MethodSpec`, and the checks an evaluation
makes with it before any model is loaded (:func:`check_plan`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .methods import METHODS, SPEC_OPTIONS, ExtensionMethod, Method, _format_value

@dataclass(frozen=True)
class MethodSpec:
    """A method name and its options, parsed and validated (``MethodSpec.parse``)."""

    name: str
    options: Any = None  # the method's options dataclass
    given: tuple[str, ...] = ()  # option names set explicitly, in canonical order

    @classmethod
    def parse(cls, text: "str | MethodSpec") -> "MethodSpec":
        if isinstance(text, MethodSpec):
            return text
        text = str(text).strip()
        name, _, rest = text.partition(":")
        name = name.strip().lower()
        if name not in METHODS:
            raise ValueError(f"method: unknown method {name!r}; known methods are {', '.join(METHODS)}")
        method = METHODS[name]
        values: dict[str, Any] = {}
        if rest.strip():
            # "," separates options; ";" too, for places where "," is taken (lm-eval's model_args)
            for part in rest.replace(";", ",").split(","):
                key, eq, raw = part.partition("=")
                key = key.strip()
                if not eq or not key:
                    raise ValueError(f"method {name}: expected key=value, got {part.strip()!r} in {text!r}")
                if key in values:
                    raise ValueError(f"method {name}: option {key!r} given twice")
                values[key] = raw.strip()
        return cls(name, method.make_options(values), tuple(sorted(values)))

    @property
    def method(self) -> "Method":
        return METHODS[self.name]

    def __str__(self) -> str:
        """Canonical text: parses back to an equal spec."""
        if not self.given:
            return self.name
        parts = [f"{k}={_format_value(getattr(self.options, k))}" for k in self.given]
        return f"{self.name}:{','.join(parts)}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": str(self), "options": dataclasses.asdict(self.options)}

    def apply(self, model):
        """Apply the method to a loaded model (in place where possible); returns the model to use."""
        return self.method.apply(model, self.options)

    def for_model(self, model_config) -> "MethodSpec":
        """This spec as it runs on a model with ``model_config``, its label naming what runs.

        A model saved after ``apply_extension`` carries its method's settings (``config.zebra_extension``).
        A spec of that method runs them: the result is the spec with every setting that differs from what
        the same spec gives on the model without them written out (``dca`` on a model saved with
        ``chunk_size=40`` is ``dca:chunk_size=40``). A spec of another method, or whose settings give
        another config than the saved one, is refused (``ValueError``) unless it has
        ``override_saved=true``, which runs the spec as written, without the saved settings. A model
        without saved settings: the spec itself.
        """
        from zebra_llm.extensions import saved_settings

        saved = saved_settings(model_config)
        if saved is None or self.options.override_saved:
            return self
        method, settings = saved
        described = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(settings.items()) if v is not None)
        if self.name != method:
            raise ValueError(
                f"method {self}: the model was saved with method {method} ({described}); run {method} on it, "
                f"or add override_saved=true to the spec to run {self.name} instead"
            )
        assert issubclass(self.method, ExtensionMethod)
        runs = self.method.config(model_config, self.options)
        saved_config = type(runs).from_dict(settings)
        if runs != saved_config:
            raise ValueError(
                f"method {self}: the model was saved with {method}:{described}, and this spec runs other "
                f"settings; leave them out to run the saved ones, or add override_saved=true"
            )
        plain = self.method.config(model_config, self.options, use_saved=False)
        names = [f.name for f in dataclasses.fields(self.options) if f.name not in SPEC_OPTIONS]
        differ = {n: getattr(runs, n) for n in names if hasattr(runs, n) and getattr(runs, n) != getattr(plain, n)}
        if not differ:
            return self
        options = dataclasses.replace(self.options, **differ)
        return MethodSpec(self.name, options, tuple(sorted(set(self.given) | set(differ))))

    def max_length(self, config) -> int | None:
        """The longest sequence this method may be evaluated at on a model with ``config`` (the
        unmodified model's config; None: no limit)."""
        if getattr(self.options, "max_length", None) is not None:
            return self.options.max_length
        return self.method.default_max_length(config, self.options)

    def check_length(self, config, length: int) -> None:
        """Refuse ``length`` above the limit on a model with ``config`` (the unmodified model's)."""
        check_limit(self, length, self.max_length(config), self.method.limit_reason(config, self.options))

    @property
    def prefix_cache_exact(self) -> bool:
        """Whether a KV cache computed for a prompt's prefix gives exactly the logits of a full forward.

        False for dynamic NTK: its frequencies depend on the length of each forward call.
        """
        return self.method.prefix_cache_exact


def check_limit(spec: MethodSpec, length: int, limit: int | None, reason: str) -> None:
    if limit is not None and length > limit:
        raise ValueError(
            f"length {length} is above what method {spec} supports on this model ({limit} tokens: {reason}); "
            f"add max_length={length} to the method spec to run it anyway"
        )


def parse_methods(specs) -> list[MethodSpec]:
    """Parse a list of specs; duplicates (after canonicalisation) are an error."""
    out = [MethodSpec.parse(s) for s in specs]
    if not out:
        raise ValueError("method: give at least one method")
    seen = set()
    for m in out:
        if str(m) in seen:
            raise ValueError(f"method: {m} given twice")
        seen.add(str(m))
    return out


def check_plan(model_spec, methods, lengths, *, exempt=()) -> list[MethodSpec]:
    """Refuse, before any work, a spec that contradicts the model's saved method and a length above a
    method's limit (``exempt``: specs whose limit is not checked). Returns the specs as they run on this
    model (:meth:`MethodSpec.for_model`: saved settings written out), the labels of their results."""
    from zebra_llm.loading import model_config

    config = model_config(model_spec)  # the config only: no weights are read
    resolved = []
    for m in methods:
        spec = MethodSpec.parse(m)
        runs = spec.for_model(config)
        resolved.append(runs)
        if str(spec) in exempt:
            continue
        runs.method.check_config(config, runs.options)
        for n in lengths:
            runs.check_length(config, n)
    return resolved


__all__ = ["MethodSpec", "check_limit", "check_plan", "parse_methods"]
