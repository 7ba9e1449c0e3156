"""The extension contest's grid (:mod:`.contest`): its methods and tasks, how each method label is put on
the model for a cell (:class:`Plan`), where a cell is stored, and a cell's summary row with its interval."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple

# the checkout: the contest writes its committed results and fills its pages
ROOT = Path(__file__).resolve().parents[3]
OUT_DIR = ROOT / "docs" / "results" / "extensions" / "contest"
SMALL_MODEL = "runs/contest-llama-256/final"
BASE_METHODS = ("none", "linear", "dynamic", "yarn", "dca", "dca:temperature=true", "dca:preset=chunkllama",
                "yarn+dca", "self_extend", "rerope", "string")
# methods of zebra_llm.extensions applied through apply_extension(..., trained_length=c') in the simulated protocol
EXTENSION_LABELS = ("self_extend", "rerope", "string", "sinks")


def _available_methods() -> tuple[str, ...]:
    """The contest's methods: the eleven above, and ``sinks`` once ``zebra_llm.extensions`` has it."""
    from ..extensions.config import METHODS as EXTENSIONS

    return BASE_METHODS + (("sinks",) if "sinks" in EXTENSIONS else ())


METHODS = _available_methods()
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue",
               "niah_multiquery", "vt", "cwe")
TASKS = ("ppl", "passkey", *RULER_TASKS)
PASSKEY_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
MODEL_NAMES = {"smollm2": "smollm2-135m", SMALL_MODEL: "contest-llama-256"}


def model_name(model: str, simulated: int | None = None, dtype: str = "float32") -> str:
    """The cells' folder name of a model; ``-c<C>`` for the simulated protocol with trained length C, and
    ``-<dtype>`` for weights other than float32 (a bfloat16 GPU run is its own column of the contest, never
    mixed into float32 cells)."""
    name = MODEL_NAMES.get(model, re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-"))
    name = name if simulated is None else f"{name}-c{simulated}"
    return name if dtype == "float32" else f"{name}-{dtype}"


class Plan(NamedTuple):
    """How one method label is put on the model for one cell: ``extension`` = (method, trained length or
    None) applied first by ``zebra_llm.apply_extension``, then ``base`` (a spec), then the evaluated ``spec``."""

    spec: str
    base: str | None = None
    extension: tuple | None = None

    def describe(self) -> str:
        parts = []
        if self.extension is not None:
            method, trained = self.extension
            parts.append(f"apply_extension({method}" + ("" if trained is None else f", trained_length={trained}") + ")")
        if self.base is not None:
            parts.append(self.base)
        parts.append(self.spec)
        return " + ".join(parts)


def _as_applied(length: int) -> str:
    """The evaluated spec of a model that already has its method applied: ``none`` with the length guard,
    told to run the model as it is where the evaluations know saved methods (``override_saved``)."""
    from zebra_llm.eval import MethodSpec

    try:
        return str(MethodSpec.parse(f"none:max_length={length},override_saved=true"))
    except ValueError:  # an evaluation registry without saved-method checks
        return f"none:max_length={length}"


def _in_eval_registry(label: str) -> bool:
    from zebra_llm.eval.methods import METHODS as REGISTRY

    return label.split(":")[0] in REGISTRY


def method_plan(label: str, length: int, trained: int, simulated: int | None = None) -> Plan:
    """The plan of ``label`` at ``length``. Real protocol (``simulated`` None): the method for the model's
    own trained length ``trained`` (:func:`method_specs`). Simulated protocol: every setting derived from
    the simulated trained length ``simulated`` = c' instead (rope factors N / c' on an original context
    of c', DCA's pretraining length c', SelfExtend's / ReRoPE's / STRING's / sinks' defaults for c'), while
    ``none`` is the model itself at its real context (the ceiling)."""
    guard = f"max_length={length}"
    if simulated is None:
        if label in EXTENSION_LABELS and not _in_eval_registry(label):
            return Plan(_as_applied(length), extension=(label, None))
        base, spec = method_specs(label, length, trained)
        return Plan(spec, base)
    c = simulated
    factor = max(length / c, 1.0)
    if label == "none":
        return Plan(f"none:{guard}")
    if label in ("linear", "dynamic", "yarn"):
        return Plan(f"{label}:factor={factor:g},original_max_position_embeddings={c},{guard}")
    if label == "yarn+dca":
        return Plan(f"dca:pretraining_length={2 * c},{guard}",
                    base=f"yarn:factor=2,original_max_position_embeddings={c}")
    if label == "dca":
        return Plan(f"dca:pretraining_length={c},{guard}")
    if label == "dca:temperature=true":
        return Plan(f"dca:pretraining_length={c},temperature=true,{guard}")
    if label == "dca:preset=chunkllama":
        from zebra_llm.dca import DCAConfig

        cfg = DCAConfig.chunkllama(c)
        return Plan(f"dca:pretraining_length={cfg.pretraining_length},chunk_size={cfg.chunk_size},{guard}")
    if label in EXTENSION_LABELS:
        return Plan(_as_applied(length), extension=(label, c))
    raise ValueError(f"method label {label!r}: not one of {', '.join(METHODS)}")


def simulated_config(config, trained: int):
    """A copy of ``config`` whose trained context reads ``trained`` (for the methods' nominal reach)."""
    import copy

    from zebra_llm.loading import trained_context

    sim = copy.deepcopy(config)
    sim.max_position_embeddings = trained
    rope = getattr(sim, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("original_max_position_embeddings"):
        rope["original_max_position_embeddings"] = trained
    assert trained_context(sim) == trained
    return sim


def nominal_reach(label: str, config) -> int | None:
    """The longest length ``label`` is meant to reach on a model with ``config`` (None: any length) at a
    length where rope factors map it onto the trained context; the guard of ``zebra_llm.eval.methods``
    is 4x this. Methods the evaluation registry does not know (``sinks``) are asked their config."""
    from zebra_llm.eval.method_spec import MethodSpec

    trained = _trained(config)
    if label == "yarn+dca":
        return None
    if label in EXTENSION_LABELS and not _in_eval_registry(label):
        from zebra_llm.extensions.config import make_config

        return getattr(make_config(label, trained, {}), "max_length", None)
    probe = 4 * trained  # rope factors as at 4x: their nominal reach is then that length
    base, spec = method_specs(label, probe, trained)
    plain = MethodSpec.parse(re.sub(r",?max_length=\d+", "", spec).rstrip(":"))
    limit = plain.max_length(config)
    if label in ("linear", "dynamic", "yarn"):
        return None  # factor = N / c at every length: each length is the method's nominal reach
    return None if limit is None else limit // 4  # the guard is 4x the nominal context


def method_specs(label: str, length: int, trained: int) -> tuple[str | None, str]:
    """(base spec applied first or None, evaluated spec) of a method label at ``length``."""
    factor = max(length / trained, 1.0)
    guard = f"max_length={length}"
    if label in ("linear", "dynamic", "yarn"):
        return None, f"{label}:factor={factor:g},{guard}"
    if label == "yarn+dca":
        return "yarn:factor=2", f"dca:pretraining_length={2 * trained},{guard}"
    sep = "," if ":" in label else ":"
    return None, f"{label}{sep}{guard}"


def past_nominal(label: str, length: int, config) -> bool:
    """Whether ``length`` is beyond what the method is meant to reach (its guard without max_length)."""
    nominal = nominal_reach(label, config)
    return nominal is not None and length > nominal


def _trained(config) -> int:
    from zebra_llm.eval.methods import trained_context

    return trained_context(config)


def cell_path(out_dir: Path, model: str, task: str, label: str, length: int, simulated: int | None = None,
              dtype: str = "float32") -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)
    return out_dir / "cells" / model_name(model, simulated, dtype) / task / f"{slug}@{length}.json"



# ------------------------------------------------------------------ statistics


def wilson(successes: float, n: int) -> tuple[float, float]:
    from zebra_llm.eval.stats import wilson as _wilson

    return _wilson(successes, n)


def t975(df: int) -> float:
    from zebra_llm.eval.stats import t_quantile_975

    return t_quantile_975(df)


def ppl_row(items: list[dict]) -> dict:
    nll = sum(i["nll_sum"] for i in items)
    tokens = sum(i["tokens"] for i in items)
    per_doc = [i["nll_sum"] / i["tokens"] for i in items]
    n = len(per_doc)
    mean = sum(per_doc) / n
    lo = hi = None
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in per_doc) / (n - 1))
        half = t975(n - 1) * sd / math.sqrt(n)
        lo, hi = math.exp(mean - half), math.exp(mean + half)
    row = {"value": math.exp(nll / tokens), "metric": "ppl", "n": n, "tokens": tokens, "ci_low": lo,
           "ci_high": hi}
    # the last quarter of the positions, where a failure to extrapolate shows first
    if all("tail_nll" in i for i in items):
        row["ppl_last_quarter"] = math.exp(sum(i["tail_nll"] for i in items) / sum(i["tail_tokens"] for i in items))
    return row


def accuracy_row(scores: list[float], metric: str) -> dict:
    n = len(scores)
    lo, hi = wilson(sum(scores), n)
    return {"value": sum(scores) / n, "metric": metric, "n": n, "ci_low": lo, "ci_high": hi}

