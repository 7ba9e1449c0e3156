"""The extension contest: every training-free context-extension method at its documented defaults, on the
same models, lengths and prompts (perplexity by length, passkey, RULER tasks), one resumable command.

    PYTHONPATH=$PWD/src python benchmarks/contest_model.py --steps 170      # the small model (~12 min)
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py             # the small model's grid
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --model smollm2 --tasks passkey \\
        --multiples 1 --passkey-trials 2 --methods none dca self_extend     # SmolLM2 at 8k (slow on CPU)
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --model smollm2 --multiples 2 4  # 16k/32k: later
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --model smollm2 --trained-length 2048 \
        --multiples 2 4 --passkey-trials 6 --ruler-trials 30 --threads 1   # simulated c' = 2048: 4k and 8k
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --report-only --write-docs  # tables, README

A **cell** is (model, task, method, length). Each finished cell is written atomically to
``<out-dir>/cells/<model>/<task>/<method>@<length>.json`` (its items and its summary row) and is never
computed again: rerunning the command skips it, so a stopped run resumes where it was, and a larger
``--trials`` later only adds new cells of other tasks/lengths (delete a cell file to recompute it).
``contest.json`` (a flat ``rows`` list), ``contest.md`` (tables) and one heatmap per (model, task) are
regenerated from the cell files after every cell and by ``--report-only``.

Methods (labels of the tables), at length N on a model trained at c tokens, f = N / c:

* ``none``; ``linear`` / ``dynamic`` / ``yarn``: transformers' rope scaling with ``factor=f`` (the
  factor that maps N onto c, how these methods are documented to be used);
* ``dca`` (the paper's, no temperature), ``dca:temperature=true``, ``dca:preset=chunkllama``;
* ``yarn+dca``: ``dca:pretraining_length=2c`` on a ``yarn:factor=2`` model, the stacking of
  ``benchmarks/dca_quality.py`` (the paper stacks DCA on PI/NTK-scaled models);
* ``self_extend``, ``rerope``, ``string`` (and ``sinks`` once ``zebra_llm.extensions`` has it): their
  library defaults for a model trained at c.

**Simulated trained length** (``--trained-length C``): every method set up as if the model had been
trained at c' = C (rope factors N / c' over an original context of c', DCA's ``pretraining_length`` c',
the chunkllama geometry of c', ``apply_extension(..., trained_length=c')`` for the piecewise methods) and
evaluated at multiples of c' that stay inside the model's real context, where ``none`` is the model at
its own positions: the ceiling, shown and not ranked. Cells of model ``<name>-c<C>``. It measures what a
method's position folding costs against the model's own positions, not true extrapolation
(docs/extensions.md, "The simulated trained length").

Every spec is given ``max_length=N``: that only lifts the evaluation guard of ``zebra_llm.eval.methods``
(4x a method's nominal context), it changes no computation; rows past a method's nominal context are
flagged ``past_nominal``. Nothing was tuned on these texts.

Statistics: perplexity is exp of the token-weighted mean NLL over n held-out documents, with a 95%
interval from a t-interval over the documents' mean NLLs (exponentiated); accuracies (passkey, and the
RULER tasks whose score is 0/1) get Wilson 95% intervals; RULER's fractional scores (multi-value tasks)
use Wilson on the summed score as an approximation. Each row is tested against the best ranked method
of its (model, task, length) on the shared prompts (``zebra_llm.eval.stats``: exact McNemar, a sign test
for fractional scores, a paired t-test of per-document NLL for perplexity; Holm over the ranked methods),
and :func:`recommendation` turns the cells into the README's and docs' sentences by the rule :data:`RULE`.

Held-out text: perplexity runs on standard-library modules that are NOT in the training corpus
(``zebra_llm.data.sources.STDLIB_MODULES``), copied to ``runs/contest-heldout/``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "docs" / "results" / "extensions" / "contest"
SMALL_MODEL = "runs/contest-llama-256/final"
HELDOUT_DIR = ROOT / "runs" / "contest-heldout"
# Long stdlib modules outside the training corpus (sources.STDLIB_MODULES), longest first.
HELDOUT_MODULES = (
    "doctest.py", "argparse.py", "subprocess.py", "mailbox.py", "pathlib.py", "difflib.py", "ast.py",
    "configparser.py", "threading.py", "dataclasses.py", "shutil.py", "statistics.py", "enum.py",
    "ftplib.py", "imaplib.py", "textwrap.py", "tempfile.py", "zipfile/__init__.py", "pickle.py", "fractions.py",
)
BASE_METHODS = ("none", "linear", "dynamic", "yarn", "dca", "dca:temperature=true", "dca:preset=chunkllama",
                "yarn+dca", "self_extend", "rerope", "string")
# methods of zebra_llm.extensions applied through apply_extension(..., trained_length=c') in the simulated protocol
EXTENSION_LABELS = ("self_extend", "rerope", "string", "sinks")


def _available_methods() -> tuple[str, ...]:
    """The contest's methods: the eleven above, and ``sinks`` once ``zebra_llm.extensions`` has it."""
    try:
        from zebra_llm.extensions.config import METHODS as EXTENSIONS
    except ImportError:  # run without PYTHONPATH=src: the grid needs it anyway
        return BASE_METHODS
    return BASE_METHODS + (("sinks",) if "sinks" in EXTENSIONS else ())


METHODS = _available_methods()
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue",
               "niah_multiquery", "vt", "cwe")
TASKS = ("ppl", "passkey", *RULER_TASKS)
PASSKEY_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
MODEL_NAMES = {"smollm2": "smollm2-135m", SMALL_MODEL: "contest-llama-256"}


# ------------------------------------------------------------------ the grid


def model_name(model: str, simulated: int | None = None) -> str:
    """The cells' folder name of a model; ``-c<C>`` for the simulated protocol with trained length C."""
    name = MODEL_NAMES.get(model, re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-"))
    return name if simulated is None else f"{name}-c{simulated}"


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


def cell_path(out_dir: Path, model: str, task: str, label: str, length: int, simulated: int | None = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)
    return out_dir / "cells" / model_name(model, simulated) / task / f"{slug}@{length}.json"


def heldout_dir(where: Path, tokenizer, min_tokens: int, max_docs: int) -> Path:
    """The held-out documents long enough for ``min_tokens``, copied under runs/ (first ``max_docs``)."""
    from zebra_llm.data.sources import STDLIB_MODULES, stdlib_dir

    root = stdlib_dir()
    target = where / f"min{min_tokens}"
    if target.is_dir() and len(list(target.iterdir())) >= max_docs:
        return target
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for name in HELDOUT_MODULES:
        assert name not in STDLIB_MODULES
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if len(tokenizer(text)["input_ids"]) < min_tokens + 1:
            continue
        shutil.copyfile(path, target / name.replace("/", "_"))
        count += 1
        if count >= max_docs:
            break
    if count == 0:
        raise ValueError(f"no held-out stdlib module has {min_tokens} tokens")
    return target


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


# ------------------------------------------------------------------ running a cell


def _load_objects(model: str, plan: Plan):
    """``{spec: (model, tokenizer)}`` with the plan's extension and base applied, or None (spec alone)."""
    if plan.base is None and plan.extension is None:
        return None
    from zebra_llm.eval import MethodSpec
    from zebra_llm.extensions import apply_extension
    from zebra_llm.loading import load_model

    m, tok = load_model(model)
    if plan.extension is not None:
        method, trained = plan.extension
        apply_extension(m, method, **({} if trained is None else {"trained_length": trained}))
    if plan.base is not None:
        m = MethodSpec.parse(plan.base).apply(m)
    return {str(MethodSpec.parse(plan.spec)): (m, tok)}


def run_cell(args, model: str, config, tokenizer, task: str, label: str, length: int,
             simulated: int | None = None) -> dict:
    """Compute one cell; returns {"row": ..., "items": [...]}."""
    from zebra_llm.eval import MethodSpec

    trained = _trained(config)
    plan = method_plan(label, length, trained, simulated)
    spec = str(MethodSpec.parse(plan.spec))
    objects = _load_objects(model, plan)
    started = time.perf_counter()
    if task == "ppl":
        from zebra_llm.eval import PerplexityConfig, run_perplexity

        data = heldout_dir(args.heldout_dir, tokenizer, max(args.ppl_min_tokens or 0, length), args.ppl_docs)
        cfg = PerplexityConfig(model=model, methods=[spec], data=str(data), mode="fixed", lengths=[length],
                               max_docs=args.ppl_docs, same_docs=True)
        result = run_perplexity(cfg, None, progress=False, model_objects=objects)
        items = [i for i in result["items"] if i["method"] == spec]
        row = ppl_row(items)
    elif task == "passkey":
        from zebra_llm.eval.passkey import run_passkey
        from zebra_llm.eval.retrieval import RetrievalConfig

        cfg = RetrievalConfig(model=model, methods=[spec], lengths=[length], depths=list(args.passkey_depths),
                              trials=args.passkey_trials, seed=0)
        result = run_passkey(cfg, None, progress=False, model_objects=objects)
        items = [i for i in result["items"] if i["method"] == spec]
        row = accuracy_row([float(bool(i["correct"])) for i in items], "accuracy")
    else:
        from zebra_llm.eval.ruler import RulerConfig, run_ruler

        cfg = RulerConfig(model=model, methods=[spec], tasks=[task], lengths=[length], trials=args.ruler_trials,
                          seed=0)
        result = run_ruler(cfg, None, progress=False, model_objects=objects)
        items = [i for i in result["items"] if i["method"] == spec]
        row = accuracy_row([float(i["score"]) for i in items], "score")
    row.update(model=model_name(model, simulated), task=task, method=label, spec=spec, base=plan.base, length=length)
    if simulated is None:
        row.update(multiple=length / trained, trained_context=trained,
                   past_nominal=past_nominal(label, length, config))
    else:
        sim = simulated_config(config, simulated)
        ceiling = label == "none"
        row.update(multiple=length / simulated, trained_context=simulated, protocol="simulated",
                   model_trained_context=trained, applied=plan.describe(), ceiling=ceiling,
                   past_nominal=False if ceiling else past_nominal(label, length, sim))
    if plan.extension is not None and simulated is None:
        row["applied"] = plan.describe()
    row["seconds"] = round(time.perf_counter() - started, 2)
    return {"row": row, "items": items}


def run_grid(args) -> int:
    """Every missing cell, in the order of ``--tasks`` then ``--multiples`` then ``--methods`` (so the first
    task at the first length is finished for every method before the next), then the report. Returns the
    number of cells computed."""
    from zebra_llm.io import write_json_atomic
    from zebra_llm.loading import load_config
    from zebra_llm.train.models import load_tokenizer

    config = load_config(args.model)
    tokenizer = load_tokenizer(args.model)
    simulated = args.trained_length
    trained = _trained(config) if simulated is None else simulated
    lengths = [int(m * trained) for m in args.multiples]
    if simulated is not None and max(lengths) > _trained(config):
        raise SystemExit(f"--multiples: the simulated protocol evaluates inside the model's real context "
                         f"({_trained(config)} tokens), got {max(lengths)} (= {max(args.multiples):g} x {simulated})")
    # every length on the same documents: those long enough for the longest length of this run
    args.ppl_min_tokens = args.ppl_min_tokens or max(lengths)
    computed = 0
    for task in args.tasks:
        for length in lengths:
            for label in args.methods:
                path = cell_path(args.out_dir, args.model, task, label, length, simulated)
                if path.is_file():
                    continue
                print(f"[contest] {model_name(args.model, simulated)} {task} {label} @ {length}", file=sys.stderr,
                      flush=True)
                cell = run_cell(args, args.model, config, tokenizer, task, label, length, simulated)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, cell)
                computed += 1
                if not args.no_report:
                    report(args.out_dir, figures=False)
        if computed and not args.no_report and not args.no_figures:
            report(args.out_dir, figures=True)
    return computed


# ------------------------------------------------------------------ report


def prompt_scores(task: str, items: list[dict]) -> dict:
    """A cell's score per prompt, keyed so that the same prompt has the same key in every method's cell:
    perplexity: the document window's mean NLL; passkey: 0/1 per (depth, trial); RULER: the score per trial."""
    if task == "ppl":
        return {(i["doc"], i["start"]): i["nll_sum"] / i["tokens"] for i in items}
    if task == "passkey":
        return {(i["depth"], i["trial"]): float(bool(i["correct"])) for i in items}
    return {i["trial"]: float(i["score"]) for i in items}


def load_cells(out_dir: Path) -> tuple[list[dict], dict]:
    """The rows of every cell file (statistics recomputed from the items) and, per (model, task, method,
    length), the cell's :func:`prompt_scores`."""
    rows, scores = [], {}
    for path in sorted((out_dir / "cells").glob("*/*/*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        row = cell["row"]
        if row["metric"] == "ppl":  # statistics recomputed from the items: one definition for every cell
            row.update(ppl_row(cell["items"]))
        rows.append(row)
        row["_items"] = cell["items"]
        scores[_key(row)] = prompt_scores(row["task"], cell["items"])
    _paired_ratios(rows)
    for row in rows:
        del row["_items"]
    _compare_to_best(rows, scores)
    order = {m: i for i, m in enumerate(METHODS)}
    task_order = {t: i for i, t in enumerate(TASKS)}
    rows.sort(key=lambda r: (r["model"], task_order.get(r["task"], 99), order.get(r["method"], 99), r["length"]))
    return rows, scores


def load_rows(out_dir: Path) -> list[dict]:
    return load_cells(out_dir)[0]


def _key(row: dict) -> tuple:
    return (row["model"], row["task"], row["method"], row["length"])


def ranked(row: dict) -> bool:
    """Whether a row takes part in the ranking: not the ceiling of the simulated protocol (the model
    at its own positions) and not past the method's nominal reach."""
    return not row.get("ceiling") and not row.get("past_nominal")


ALPHA = 0.05  # the significance rule: Holm-corrected two-sided p < ALPHA against every other method
METHOD_ORDER = {m: i for i, m in enumerate(BASE_METHODS + ("sinks",))}


def _best(cands: list[dict], ppl: bool) -> dict:
    """The best row: lowest perplexity / highest score; ties go to the method listed first."""
    return min(cands, key=lambda r: ((r["value"] if ppl else -r["value"]), METHOD_ORDER.get(r["method"], 99)))


def compare(best: dict, other: dict, ppl: bool) -> dict:
    """The paired test of ``best``'s per-prompt scores against ``other``'s on their shared prompts: exact
    McNemar (a sign test for fractional scores) for accuracies, a paired t-test of the documents' mean
    NLL for perplexity."""
    from zebra_llm.eval.stats import paired_t, paired_test

    if ppl:
        shared = [k for k in best if k in other]
        if len(shared) < 2:
            return {"n_shared": len(shared), "p": 1.0}
        t = paired_t([other[k] - best[k] for k in shared])
        return {"n_shared": t["n"], "p": t["p"], "nll_diff": t["mean"], "nll_diff_ci": t["ci"]}
    t = paired_test(best, other)
    return {"n_shared": t["n_shared"], "p": t["p"], "best_only": t["a_better"], "other_only": t["b_better"]}


def _compare_to_best(rows: list[dict], scores: dict) -> None:
    """Per (model, task, length): the best ranked method, and every other row's paired test against it
    (``vs_best``; Holm-corrected over the ranked methods as ``p_holm``)."""
    from zebra_llm.eval.stats import holm

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["task"], r["length"]), []).append(r)
    for (model, task, length), group in groups.items():
        cands = [r for r in group if ranked(r)]
        if len(cands) < 2:
            continue
        ppl = task == "ppl"
        best = _best(cands, ppl)
        best_scores = scores[_key(best)]
        best["vs_best"] = {"best": best["method"], "n_shared": len(best_scores), "p": None}
        others = [r for r in group if r is not best]
        for r in others:
            r["vs_best"] = {"best": best["method"], **compare(best_scores, scores[_key(r)], ppl)}
        ranked_others = [r for r in others if ranked(r)]
        for r, adjusted in zip(ranked_others, holm([r["vs_best"]["p"] for r in ranked_others])):
            r["vs_best"]["p_holm"] = adjusted


# ------------------------------------------------------------------ the recommendation


def _pool(rows: list[dict], scores: dict, model: str, retrieval: bool) -> dict | None:
    """The cells a decision pools: the (task, length) pairs of ``model`` at which every method that is
    ranked somewhere has a cell (retrieval: every accuracy task; perplexity: the longest such length only),
    the methods ranked at all of them, and their per-prompt scores pooled over those cells."""
    mine = [r for r in rows if r["model"] == model and (r["metric"] != "ppl") == retrieval]
    methods = sorted({r["method"] for r in mine if ranked(r)}, key=lambda m: METHOD_ORDER.get(m, 99))
    if len(methods) < 2:
        return None
    have: dict = {}
    for r in mine:
        have.setdefault((r["task"], r["length"]), {})[r["method"]] = r
    combos = sorted(c for c, by in have.items() if all(m in by for m in methods))
    if not retrieval and combos:
        combos = [max(combos, key=lambda c: c[1])]
    if not combos:
        return None
    out_of_reach = sorted({m for c in combos for m in methods if not ranked(have[c][m])},
                          key=lambda m: METHOD_ORDER.get(m, 99))
    cands = [m for m in methods if m not in out_of_reach]
    pooled = {m: {(c, k): v for c in combos for k, v in scores[(model, c[0], m, c[1])].items()} for m in cands}
    ceiling = {}
    for c in combos:
        for m, r in have[c].items():
            if r.get("ceiling"):
                ceiling.setdefault(m, {}).update({(c, k): v for k, v in scores[_key(r)].items()})
    present = {r["method"] for r in mine}
    return {"combos": combos, "methods": cands, "out_of_reach": out_of_reach, "scores": pooled,
            "ceiling": ceiling, "rows": have, "missing": [m for m in METHODS if m not in present]}


def decide(pool: dict, retrieval: bool, speed: dict) -> dict:
    """The stated rule on pooled cells: the best method (highest mean score / lowest perplexity) is named
    when its paired test against every other ranked method gives a Holm-corrected p < ALPHA; otherwise
    the tied set (the best and every method whose corrected p is not below ALPHA) and its cheapest member
    by measured speed (decode time ratio, then prefill) among those with a speed run."""
    from zebra_llm.eval.stats import holm

    scores = pool["scores"]
    mean = {m: sum(v.values()) / len(v) for m, v in scores.items()}
    if retrieval:
        best = max(pool["methods"], key=lambda m: (mean[m], -METHOD_ORDER.get(m, 99)))
    else:
        best = min(pool["methods"], key=lambda m: (math.exp(mean[m]), METHOD_ORDER.get(m, 99)))
    others = [m for m in pool["methods"] if m != best]
    tests = {m: compare(scores[best], scores[m], not retrieval) for m in others}
    adjusted = dict(zip(others, holm([tests[m]["p"] for m in others])))
    for m in others:
        tests[m]["p_holm"] = adjusted[m]
    tied = [best] + [m for m in others if adjusted[m] >= ALPHA]
    # the speed run (sequence length) that measured the most tied methods, the longest among equals
    seq = max(speed, key=lambda n: (sum(m in speed[n] for m in tied), n)) if speed else None
    at = speed.get(seq, {})
    measured = [m for m in tied if m in at]
    cheapest = min(measured, key=lambda m: (at[m]["decode"], at[m]["prefill"])) if measured else None
    n = {m: len(v) for m, v in scores.items()}
    values = {}
    if len(pool["combos"]) == 1:  # the cells' own values (token-weighted perplexity, accuracy)
        values = {m: pool["rows"][pool["combos"][0]][m]["value"] for m in pool["methods"]}
    return {"best": best, "significant": len(tied) == 1, "tied": tied, "cheapest": cheapest, "values": values,
            "speed_seq": seq, "cheapest_speed": at.get(cheapest), "unmeasured": [m for m in tied if m not in at],
            "mean": mean, "n": n, "tests": tests,
            "combos": pool["combos"], "out_of_reach": pool["out_of_reach"], "missing": pool["missing"],
            "ceiling": {m: sum(v.values()) / len(v) for m, v in pool["ceiling"].items()}}


def systematic_misses(rows: list[dict], scores: dict, model: str, min_trials: int = 3) -> list[dict]:
    """Passkey depths where a ranked method found none of at least ``min_trials`` keys while another
    ranked method found at least one there (a depth every method misses says nothing of one method)."""
    out = []
    for length in sorted({r["length"] for r in rows if r["model"] == model and r["task"] == "passkey"}):
        cells = [r for r in rows if r["model"] == model and r["task"] == "passkey" and r["length"] == length
                 and ranked(r)]
        by_depth: dict = {}
        for r in cells:
            for (depth, _trial), v in scores[_key(r)].items():
                by_depth.setdefault(depth, {}).setdefault(r["method"], []).append(v)
        for depth, per in sorted(by_depth.items()):
            for m, vs in per.items():
                if len(vs) >= min_trials and sum(vs) == 0 and any(sum(o) > 0 for k, o in per.items() if k != m):
                    out.append({"method": m, "length": length, "depth": depth, "trials": len(vs)})
    out.sort(key=lambda x: (METHOD_ORDER.get(x["method"], 99), x["length"], x["depth"]))
    return out


def recommendation(rows: list[dict], scores: dict, speed: dict, model: str) -> dict:
    """Retrieval and perplexity decisions of ``model``'s cells, its systematic misses and the methods left
    out of the ranking for their reach."""
    out = {"model": model, "alpha": ALPHA, "rule": "exact McNemar / sign test (retrieval) or paired t-test "
           "(perplexity) against the best, Holm-corrected, p < 0.05 against every other ranked method"}
    for kind, retrieval in (("retrieval", True), ("perplexity", False)):
        pool = _pool(rows, scores, model, retrieval)
        out[kind] = None if pool is None else decide(pool, retrieval, speed)
    out["misses"] = systematic_misses(rows, scores, model)
    reach = {}
    for r in rows:
        if r["model"] == model and r.get("past_nominal"):
            reach.setdefault(r["method"], []).append(r["length"])
    out["past_reach"] = {m: sorted(set(v)) for m, v in reach.items()}
    return out


def _paired_ratios(rows: list[dict]) -> None:
    """Perplexity relative to ``none`` on the same documents: exp of the mean per-document NLL difference,
    with a paired t-interval (the documents' own difficulty cancels, unlike the per-method intervals)."""
    ref = {(r["model"], r["length"]): r for r in rows if r["metric"] == "ppl" and r["method"] == "none"}
    for r in rows:
        base = ref.get((r["model"], r["length"]))
        if r["metric"] != "ppl" or base is None:
            continue
        mine = {(i["doc"], i["start"]): i["nll_sum"] / i["tokens"] for i in r["_items"]}
        theirs = {(i["doc"], i["start"]): i["nll_sum"] / i["tokens"] for i in base["_items"]}
        diffs = [mine[k] - theirs[k] for k in mine if k in theirs]
        if len(diffs) < 2:
            continue
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
        half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
        r["ratio_vs_none"] = math.exp(mean)
        r["ratio_ci"] = [math.exp(mean - half), math.exp(mean + half)]


def _fmt(row: dict) -> str:
    if row["metric"] == "ppl":
        ci = "" if row["ci_low"] is None else f" [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"
        text = f"{row['value']:.2f}{ci}"
    else:
        text = f"{100 * row['value']:.0f}% [{100 * row['ci_low']:.0f}, {100 * row['ci_high']:.0f}]"
    return text + ("†" if row.get("past_nominal") else "") + (" ⌃" if row.get("ceiling") else "")


def tables(rows: list[dict], depths: dict | None = None) -> str:
    """Markdown: per (model, task) a method x length table with n and 95% intervals, the paired tests
    against the best ranked method, and (passkey, given ``depths``: :func:`depth_counts`) keys found by depth."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        mrows = [r for r in rows if r["model"] == model]
        for task in [t for t in TASKS if any(r["task"] == t for r in mrows)]:
            trows = [r for r in mrows if r["task"] == task]
            lengths = sorted({r["length"] for r in trows})
            ns = sorted({r["n"] for r in trows})
            what = "perplexity (lower is better)" if task == "ppl" else f"{task}: {trows[0]['metric']} %"
            out.append(f"**{model}, {what}**, n = {'/'.join(map(str, ns))} per cell, 95% interval in brackets\n")
            trained = trows[0]["trained_context"]
            out.append("| method | " + " | ".join(f"{n} ({n / trained:g}x)" for n in lengths) + " |")
            out.append("|---|" + "---:|" * len(lengths))
            by = {(r["method"], r["length"]): r for r in trows}
            for m in [m for m in METHODS if any(r["method"] == m for r in trows)]:
                cells = [_fmt(by[(m, n)]) if (m, n) in by else "" for n in lengths]
                out.append(f"| `{m}` | " + " | ".join(cells) + " |")
            out.append("")
            out.extend(_versus_table(model, task, trows, lengths))
            if task == "passkey":
                out.extend(_depth_table(model, trows, depths or {}))
            if task == "ppl":
                out.append(f"**{model}, perplexity relative to `none` on the same documents** (paired 95% interval)\n")
                out.append("| method | " + " | ".join(str(n) for n in lengths) + " |")
                out.append("|---|" + "---:|" * len(lengths))
                for m in [m for m in METHODS if any(r["method"] == m for r in trows) and m != "none"]:
                    cells = []
                    for n in lengths:
                        r = by.get((m, n), {})
                        cells.append(f"{r['ratio_vs_none']:.3f} [{r['ratio_ci'][0]:.3f}, {r['ratio_ci'][1]:.3f}]"
                                     if "ratio_vs_none" in r else "")
                    out.append(f"| `{m}` | " + " | ".join(cells) + " |")
                out.append("")
                out.append(f"**{model}, perplexity of the last quarter of the positions** (same documents)\n")
                out.append("| method | " + " | ".join(str(n) for n in lengths) + " |")
                out.append("|---|" + "---:|" * len(lengths))
                for m in [m for m in METHODS if any(r["method"] == m for r in trows)]:
                    cells = [f"{by[(m, n)]['ppl_last_quarter']:.2f}" if "ppl_last_quarter" in by.get((m, n), {})
                             else "" for n in lengths]
                    out.append(f"| `{m}` | " + " | ".join(cells) + " |")
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def _versus_table(model: str, task: str, trows: list[dict], lengths: list[int]) -> list[str]:
    """The paired test of every method against the best ranked one at each length."""
    if not any("vs_best" in r for r in trows):
        return []
    ppl = task == "ppl"
    how = ("paired t-test of the documents' mean NLL, difference to the best in nats"
           if ppl else "exact McNemar on the shared prompts: prompts only the best / only this method got right")
    out = [f"**{model}, {task}: each method against the best ranked one** ({how}; two-sided p, Holm-corrected "
           "over the ranked methods in brackets; ‡ the best; · not ranked: the ceiling or past its reach)\n",
           "| method | " + " | ".join(str(n) for n in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    by = {(r["method"], r["length"]): r for r in trows}
    for m in [m for m in METHODS if any(r["method"] == m for r in trows)]:
        cells = []
        for n in lengths:
            v = by.get((m, n), {}).get("vs_best")
            if v is None:
                cells.append("")
            elif v["p"] is None:
                cells.append("‡")
            else:
                text = (f"{v['nll_diff']:+.3f}, " if ppl and "nll_diff" in v else
                        "" if ppl else f"{v['best_only']}/{v['other_only']}, ")
                text += f"p {v['p']:.2g}" + (f" [{v['p_holm']:.2g}]" if "p_holm" in v else " ·")
                cells.append(text)
        out.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return out + [""]


def depth_counts(rows: list[dict], scores: dict) -> dict:
    """(model, method, length) -> {depth: (found, trials)} of the passkey cells."""
    out: dict = {}
    for r in rows:
        if r["task"] != "passkey":
            continue
        per: dict = {}
        for (depth, _trial), v in scores[_key(r)].items():
            found, n = per.get(depth, (0, 0))
            per[depth] = (found + int(v), n + 1)
        out[(r["model"], r["method"], r["length"])] = dict(sorted(per.items()))
    return out


def _depth_table(model: str, trows: list[dict], depths: dict) -> list[str]:
    columns = sorted({(r["length"], d) for r in trows for d in depths.get((model, r["method"], r["length"]), {})})
    if not columns:
        return []
    out = [f"**{model}, passkey keys found by depth** (found/trials; the heatmap below shows the same)\n",
           "| method | " + " | ".join(f"{n} @ {d:g}" for n, d in columns) + " |", "|---|" + "---:|" * len(columns)]
    for m in [m for m in METHODS if any(r["method"] == m for r in trows)]:
        cells = []
        for n, d in columns:
            fn = depths.get((model, m, n), {}).get(d)
            cells.append("" if fn is None else f"{fn[0]}/{fn[1]}")
        out.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return out + [""]


def depth_heatmap(model: str, depths: dict, path: Path) -> Path | None:
    """Passkey keys found (%) by method (rows) and (length, depth) (columns) of one model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mine = {(m, n): per for (mod, m, n), per in depths.items() if mod == model}
    if not mine:
        return None
    methods = [m for m in METHODS if any(k[0] == m for k in mine)]
    columns = sorted({(n, d) for (m, n), per in mine.items() for d in per})
    grid = np.full((len(methods), len(columns)), np.nan)
    fig, ax = plt.subplots(figsize=(2.6 + 0.55 * len(columns), 0.9 + 0.38 * len(methods)))
    for (m, n), per in mine.items():
        for d, (found, trials) in per.items():
            i, j = methods.index(m), columns.index((n, d))
            grid[i, j] = 100 * found / trials
            ax.text(j, i, f"{found}/{trials}", ha="center", va="center", fontsize=6,
                    color="black" if grid[i, j] >= 50 else "white")
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(columns)), [f"{n}\n@{d:g}" for n, d in columns], fontsize=7)
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("length (tokens) @ needle depth")
    ax.set_title(f"{model}: passkey keys found by depth", fontsize=9)
    fig.colorbar(im, ax=ax, label="found (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lengths = sorted({r["length"] for r in rows})
    ppl = rows[0]["metric"] == "ppl"
    grid = np.full((len(methods), len(lengths)), np.nan)
    label = np.full((len(methods), len(lengths)), "", dtype=object)
    for r in rows:
        i, j = methods.index(r["method"]), lengths.index(r["length"])
        if ppl:  # colour: perplexity relative to `none` at that length (lengths differ in difficulty)
            grid[i, j] = 100 * (r.get("ratio_vs_none", float("nan")) - 1)
            label[i, j] = f"{r['value']:.1f}"
        else:
            grid[i, j] = 100 * r["value"]
            label[i, j] = f"{100 * r['value']:.0f}"
    fig, ax = plt.subplots(figsize=(2.6 + 1.1 * len(lengths), 0.9 + 0.38 * len(methods)))
    if ppl:
        span = max(1.0, float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0)
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-span, vmax=span)
    else:
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    for (i, j), text in np.ndenumerate(label):
        if text:
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_title(title + (" (numbers: perplexity)" if ppl else " (%)"), fontsize=9)
    fig.colorbar(im, ax=ax, label="perplexity vs none (%)" if ppl else "score (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


HEADER = """# Extension contest: results

Generated by `benchmarks/extensions_contest.py --report-only` from `cells/` (never edit by hand); the
methods, statistics and commands are in [docs/extensions.md](../../../extensions.md#the-contest). † marks a
length past the method's nominal reach (its evaluation guard lifted with `max_length`); ⌃ the ceiling of the
simulated protocol (models `*-c<C>`): the unmodified model at its own positions, not ranked.

"""


def report(out_dir: Path, *, figures: bool = True, speed: dict | None = None) -> dict:
    """contest.json, contest.md and the heatmaps, from the cell files (and the speed runs) alone."""
    from zebra_llm.io import write_json_atomic, write_text_atomic

    rows, scores = load_cells(out_dir)
    speed = speed_ratios() if speed is None else speed
    recs = {m: recommendation(rows, scores, speed, m) for m in sorted({r["model"] for r in rows})}
    data = {"kind": "extensions_contest", "command": "python benchmarks/extensions_contest.py", "rows": rows,
            "recommendations": json.loads(json.dumps(recs))}
    write_json_atomic(out_dir / "contest.json", data)
    depths = depth_counts(rows, scores)
    pairs = sorted({(r["model"], r["task"]) for r in rows})
    decided = "".join(f"**{m}.** {recommendation_text(rec, speed)}\n\n" for m, rec in recs.items()
                      if rec["retrieval"] or rec["perplexity"])
    figs = "".join(f"\n![{m}: {t}](heatmap_{m}_{t}.png)\n" for m, t in pairs)
    figs += "".join(f"\n![{m}: passkey by depth](heatmap_depth_{m}_passkey.png)\n"
                    for m in sorted({k[0] for k in depths}))
    page = HEADER + (f"## What the numbers decide\n\n{decided}## Tables\n\n" if decided else "") + \
        tables(rows, depths) + figs
    write_text_atomic(out_dir / "contest.md", page if rows else "no finished cells yet\n")
    written = []
    if figures:
        for model in sorted({r["model"] for r in rows}):
            for task in sorted({r["task"] for r in rows if r["model"] == model}):
                sel = [r for r in rows if r["model"] == model and r["task"] == task]
                written.append(heatmap(sel, out_dir / f"heatmap_{model}_{task}.png", f"{model}: {task}"))
            fig = depth_heatmap(model, depths, out_dir / f"heatmap_depth_{model}_passkey.png")
            if fig is not None:
                written.append(fig)
    data["figures"] = [str(p) for p in written]
    return data


# ------------------------------------------------------------------ README block

README = ROOT / "README.md"
BEGIN = "<!-- BEGIN GENERATED by benchmarks/extensions_contest.py --write-docs: contest -->"
END = "<!-- END GENERATED by benchmarks/extensions_contest.py: contest -->"


def readme_block(rows: list[dict], model: str = "contest-llama-256") -> str:
    """The README's two sentences, every number from ``rows`` (the small model's cells)."""
    mine = [r for r in rows if r["model"] == model]
    ppl = [r for r in mine if r["metric"] == "ppl" and "ratio_vs_none" in r]
    retrieval = [r for r in mine if r["metric"] != "ppl"]
    if not ppl:
        return "The extension contest has no finished perplexity cells yet."
    longest = max(r["length"] for r in ppl)
    at = [r for r in ppl if r["length"] == longest and r["method"] != "none"]
    lo = min(at, key=lambda r: r["ratio_vs_none"])
    hi = max(at, key=lambda r: r["ratio_vs_none"])
    differ = [r for r in at if r["ratio_ci"][1] < 1 or r["ratio_ci"][0] > 1]
    trained = ppl[0]["trained_context"]
    first = (
        f"In the [extension contest](docs/results/extensions/contest/contest.md) on a 4-layer Llama trained "
        f"here at {trained} tokens, at {longest} tokens ({longest // trained}x) every method's perplexity is "
        f"between {100 * (lo.get('ratio_vs_none') - 1):+.1f}% (`{lo['method']}`) and "
        f"{100 * (hi.get('ratio_vs_none') - 1):+.1f}% (`{hi['method']}`) off `none`'s "
        f"({len(differ)} of {len(at)} paired 95% intervals exclude no change; n = {lo['n']} held-out documents)"
    )
    if retrieval:
        found = sum(r["value"] * r["n"] for r in retrieval)
        total = sum(r["n"] for r in retrieval)
        if found == 0:
            first += (f", and no method retrieves a single passkey or RULER answer (0 of {total} prompts at "
                      f"{min(r['length'] for r in retrieval)}-{max(r['length'] for r in retrieval)} tokens).")
        else:
            first += f"; retrieval scores {100 * found / total:.0f}% over {total} prompts (tables on the page)."
    else:
        first += "."
    flat = len(differ) == 0 or max(abs(r["ratio_vs_none"] - 1) for r in at) < 0.05
    if flat:
        second = (
            "A model this small barely uses distant positions, so it cannot rank the methods: choose by the "
            "SmolLM2 measurements above, `dca` (the paper's, no temperature) when answers must be retrieved "
            "past the trained context, and `dca` or `yarn:factor=N/c` when only perplexity matters."
        )
    else:
        second = (
            f"On perplexity `{lo['method']}` is the one to use at {longest // trained}x on this model; for "
            "retrieval past the trained context the SmolLM2 measurements above favour `dca` (the paper's)."
        )
    return first + " " + second


RULE = ("a method is named when its paired test against every other ranked method (exact McNemar on the "
        "shared prompts for retrieval, a sign test for fractional scores; a paired t-test of the documents' mean "
        "NLL for perplexity) gives a two-sided p < 0.05 after Holm's correction; otherwise the methods not "
        "significantly behind the best tie, and the cheapest of them by measured decode (then prefill) time "
        "is the one to use")


def _score(dec: dict, m: str, retrieval: bool) -> str:
    if not retrieval:
        value = dec["values"].get(m, math.exp(dec["mean"][m]))
        return f"`{m}` {value:.2f}"
    n = dec["n"][m]
    found = dec["mean"][m] * n
    return f"`{m}` {found:.0f}/{n}" if abs(found - round(found)) < 1e-9 else f"`{m}` {100 * dec['mean'][m]:.0f}% of {n}"


def _where(combos) -> str:
    tasks: dict = {}
    for task, length in combos:
        tasks.setdefault(task, []).append(str(length))
    return "; ".join(f"{t} at {' and '.join(v)}" for t, v in tasks.items())


def decision_text(dec: dict, retrieval: bool, speed: dict) -> str:
    """One sentence: the named method, or the tied set and its cheapest member, with the numbers."""
    what = "retrieval" if retrieval else "perplexity"
    ns = sorted(set(dec["n"].values()))
    where = (_where(dec["combos"]) + ("" if retrieval else " tokens") +
             f"; n = {'/'.join(map(str, ns))} {'prompts' if retrieval else 'documents'} per method" +
             ("; no cells yet for " + ", ".join(f"`{m}`" for m in dec["missing"]) if dec.get("missing") else ""))
    best = dec["best"]
    if dec["significant"]:
        worst = max(t["p_holm"] for t in dec["tests"].values())
        return (f"For {what} use `{best}`: {_score(dec, best, retrieval)} ({where}), ahead of every other ranked "
                f"method by the rule (largest corrected p {worst:.2g}).")
    if retrieval and dec["mean"][best] == 0:
        return f"For {what} nothing is decided: no ranked method found a single answer ({where})."
    tied = [m for m in dec["tied"] if m != best]
    text = (f"For {what} no method's lead is significant ({where}): the best, {_score(dec, best, retrieval)}, "
            f"ties with " + (", ".join(_score(dec, m, retrieval) for m in tied) or "none") + "")
    if dec["cheapest"] is not None:
        c = dec["cheapest"]
        r = dec["cheapest_speed"]
        text += (f"; of these, `{c}` is the cheapest by measured speed (prefill {r['prefill']:.2f}x, "
                 f"decoding {r['decode']:.2f}x the unmodified model at {dec['speed_seq']} tokens on CPU)")
        text += ", the one to use" if not dec["unmeasured"] else " of those with a speed run"
    if dec["unmeasured"]:
        text += f" ({', '.join(f'`{m}`' for m in dec['unmeasured'])} had no speed run)"
    behind = [m for m in dec["tests"] if m not in dec["tied"]]
    if behind:
        text += "; significantly behind: " + ", ".join(_score(dec, m, retrieval) for m in behind)
    return text + "."


def recommendation_text(rec: dict, speed: dict, *, misses: bool = True) -> str:
    """The sentences of one model's :func:`recommendation`."""
    parts = []
    for kind, retrieval in (("retrieval", True), ("perplexity", False)):
        if rec[kind] is not None:
            parts.append(decision_text(rec[kind], retrieval, speed))
    ceiling = (rec["retrieval"] or {}).get("ceiling") or {}
    for m, v in ceiling.items():
        n = rec["retrieval"]["n"][rec["retrieval"]["best"]]
        parts.append(f"The ceiling, the unmodified model at its own positions, scores {100 * v:.0f}% on the same "
                     f"{n} prompts.")
    if rec["past_reach"]:
        parts.append("Past their nominal reach and so not ranked: " + ", ".join(
            f"`{m}` (at {', '.join(map(str, v))})" for m, v in rec["past_reach"].items()) + ".")
    if misses and rec["misses"]:
        parts.append("Systematic misses (no passkey found at a depth where another ranked method found one): " +
                     ", ".join(f"`{x['method']}` at depth {x['depth']:g} of {x['length']} (0/{x['trials']})"
                               for x in rec["misses"]) + ".")
    return " ".join(parts)


SIMULATED_SUFFIX = re.compile(r"-c(\d+)$")


def readme_text(rows: list[dict], speed: dict | None = None, scores: dict | None = None) -> str:
    """The README's generated block: which method to use for retrieval and for perplexity, by the stated
    rule (:data:`RULE`) on SmolLM2's simulated-protocol cells, then its real-length cells; the small model's
    sentences when SmolLM2 has no cells."""
    real = "smollm2-135m"
    if scores is None:
        rows, scores = load_cells(OUT_DIR)
    speed = speed_ratios() if speed is None else speed
    models = sorted({r["model"] for r in rows if r["model"].startswith(real)})
    if not models:
        return readme_block(rows)
    out = [f"Which method to use, decided by the [extension contest](docs/results/extensions/contest/contest.md) "
           f"on SmolLM2-135M by a stated rule ({RULE}):"]
    for model in sorted(models, key=lambda m: m == real):
        rec = recommendation(rows, scores, speed, model)
        if rec["retrieval"] is None and rec["perplexity"] is None:
            continue
        sim = SIMULATED_SUFFIX.search(model)
        if sim:
            head = (f"**Simulated trained length** (every method set up as if SmolLM2 were trained at "
                    f"{sim.group(1)} tokens, evaluated at 2x and 4x that inside its real 8k context):")
        else:
            head = "**At SmolLM2's real lengths** (past its trained 8192):"
        out.append(head + " " + recommendation_text(rec, speed, misses=bool(sim)))
    return "\n\n".join(out)


def speed_ratios(root: Path = OUT_DIR.parent) -> dict:
    """seq -> method -> {"prefill": ratio, "decode": ratio}: SmolLM2's time ratios to the unmodified model
    from the committed speed runs (``speed_*.json``), for the methods with both parts at that length."""
    out: dict = {}
    for path in sorted(root.glob("speed_*.json")):
        for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
            if row["part"] in ("prefill", "decode") and row["variant"] != "unmodified":
                out.setdefault(row["seq"], {}).setdefault(row["variant"], {})[row["part"]] = row["time_ratio"]
    return {seq: {m: r for m, r in by.items() if "prefill" in r and "decode" in r} for seq, by in out.items()}


def fill_readme(text: str, block: str, begin: str = BEGIN, end: str = END, name: str = "README.md") -> str:
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{name}: no {begin!r} ... {end!r} block")
    return text[: start + len(begin)] + "\n" + block + "\n" + text[stop:]


DOCS = ROOT / "docs" / "extensions.md"
DOCS_BEGIN = "<!-- BEGIN GENERATED by benchmarks/extensions_contest.py --write-docs: recommendation -->"
DOCS_END = "<!-- END GENERATED: recommendation -->"


def docs_text(rows: list[dict], scores: dict, speed: dict | None = None) -> str:
    """docs/extensions.md's generated block: every model's decisions by the rule, with its misses."""
    speed = speed_ratios() if speed is None else speed
    out = []
    for model in sorted({r["model"] for r in rows}):
        rec = recommendation(rows, scores, speed, model)
        if rec["retrieval"] is None and rec["perplexity"] is None:
            continue
        sim = SIMULATED_SUFFIX.search(model)
        what = f"simulated trained length {sim.group(1)}" if sim else "real lengths"
        out.append(f"**`{model}`** ({what}): {recommendation_text(rec, speed)}")
    return "\n\n".join(out) or "No model has cells that the rule can decide on yet."


def fill_docs(text: str, block: str) -> str:
    return fill_readme(text, block, DOCS_BEGIN, DOCS_END, "docs/extensions.md")


# ------------------------------------------------------------------ command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=SMALL_MODEL, help="model spec (a directory, smollm2, ...)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--multiples", nargs="+", type=float, default=[2, 4, 8],
                   help="lengths as multiples of the trained context")
    p.add_argument("--ppl-docs", type=int, default=8)
    p.add_argument("--ppl-min-tokens", type=int, default=None,
                   help="use only documents of at least this many tokens (default: the longest length)")
    p.add_argument("--heldout-dir", type=Path, default=HELDOUT_DIR, help="where the held-out texts are copied")
    p.add_argument("--passkey-trials", type=int, default=4, help="trials per depth")
    p.add_argument("--passkey-depths", nargs="+", type=float, default=list(PASSKEY_DEPTHS))
    p.add_argument("--ruler-trials", type=int, default=10)
    p.add_argument("--trained-length", type=int, default=None, metavar="C",
                   help="simulated trained length c': every method set up as if the model were trained at C, "
                        "--multiples of C (inside the model's real context); none = the real model (ceiling)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--report-only", action="store_true", help="only regenerate tables and figures from the JSON")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="also fill the README's generated block")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the report after every cell")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 for a background job)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if not args.report_only:
        n = run_grid(args)
        print(f"[contest] computed {n} cells", file=sys.stderr)
    data = report(args.out_dir, figures=not args.no_figures)
    if args.write_docs:
        from zebra_llm.io import write_text_atomic

        rows, scores = load_cells(args.out_dir)
        write_text_atomic(README, fill_readme(README.read_text(encoding="utf-8"), readme_text(rows, None, scores)))
        write_text_atomic(DOCS, fill_docs(DOCS.read_text(encoding="utf-8"), docs_text(rows, scores)))
    print(f"[contest] {len(data['rows'])} rows -> {args.out_dir / 'contest.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
