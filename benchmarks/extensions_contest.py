"""The extension contest: every training-free context-extension method at its documented defaults, on the
same models, lengths and prompts (perplexity by length, passkey, RULER tasks), one resumable command.

    PYTHONPATH=$PWD/src python benchmarks/contest_model.py --steps 170      # the small model (~12 min)
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py             # the small model's grid
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --model smollm2 --tasks passkey \\
        --multiples 1 --passkey-trials 2 --methods none dca self_extend     # SmolLM2 at 8k (slow on CPU)
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --model smollm2 --multiples 2 4  # 16k/32k: later
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --report-only    # tables + figures from JSON

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
* ``self_extend``, ``rerope``, ``string``: their library defaults for a model trained at c.

Every spec is given ``max_length=N``: that only lifts the evaluation guard of ``zebra_llm.eval.methods``
(4x a method's nominal context), it changes no computation; rows past a method's nominal context are
flagged ``past_nominal``. Nothing was tuned on these texts.

Statistics: perplexity is exp of the token-weighted mean NLL over n held-out documents, with a 95%
interval from a t-interval over the documents' mean NLLs (exponentiated); accuracies (passkey, and the
RULER tasks whose score is 0/1) get Wilson 95% intervals; RULER's fractional scores (multi-value tasks)
use Wilson on the summed score as an approximation.

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
METHODS = ("none", "linear", "dynamic", "yarn", "dca", "dca:temperature=true", "dca:preset=chunkllama",
           "yarn+dca", "self_extend", "rerope", "string")
RULER_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multivalue",
               "niah_multiquery", "vt", "cwe")
TASKS = ("ppl", "passkey", *RULER_TASKS)
PASSKEY_DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
MODEL_NAMES = {"smollm2": "smollm2-135m", SMALL_MODEL: "contest-llama-256"}


# ------------------------------------------------------------------ the grid


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-"))


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
    from zebra_llm.eval.method_spec import MethodSpec

    base, spec = method_specs(label, length, _trained(config))
    plain = MethodSpec.parse(re.sub(r",?max_length=\d+", "", spec).rstrip(":"))
    limit = plain.max_length(config)
    nominal = None if limit is None else limit // 4  # the guard is 4x the nominal context
    if label == "yarn+dca":
        return False
    return nominal is not None and length > nominal


def _trained(config) -> int:
    from zebra_llm.eval.methods import trained_context

    return trained_context(config)


def cell_path(out_dir: Path, model: str, task: str, label: str, length: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)
    return out_dir / "cells" / model_name(model) / task / f"{slug}@{length}.json"


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


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    keys = [k for k in _T975 if k <= df]
    return _T975[max(keys)] if keys else float("nan")


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


def _load_objects(model: str, base: str | None, spec: str):
    if base is None:
        return None
    from zebra_llm.eval import MethodSpec
    from zebra_llm.loading import load_model

    m, tok = load_model(model)
    return {str(MethodSpec.parse(spec)): (MethodSpec.parse(base).apply(m), tok)}


def run_cell(args, model: str, config, tokenizer, task: str, label: str, length: int) -> dict:
    """Compute one cell; returns {"row": ..., "items": [...]}."""
    from zebra_llm.eval import MethodSpec

    base, spec_text = method_specs(label, length, _trained(config))
    spec = str(MethodSpec.parse(spec_text))
    objects = _load_objects(model, base, spec)
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
    row.update(model=model_name(model), task=task, method=label, spec=spec, base=base, length=length,
               multiple=length / _trained(config), trained_context=_trained(config),
               past_nominal=past_nominal(label, length, config), seconds=round(time.perf_counter() - started, 2))
    return {"row": row, "items": items}


def run_grid(args) -> int:
    """Every missing cell, cheapest task first, then the report. Returns the number of cells computed."""
    from zebra_llm.io import write_json_atomic
    from zebra_llm.loading import load_config
    from zebra_llm.train.models import load_tokenizer

    config = load_config(args.model)
    tokenizer = load_tokenizer(args.model)
    trained = _trained(config)
    lengths = [int(m * trained) for m in args.multiples]
    # every length on the same documents: those long enough for the longest length of this run
    args.ppl_min_tokens = args.ppl_min_tokens or max(lengths)
    computed = 0
    for task in args.tasks:
        for length in lengths:
            for label in args.methods:
                path = cell_path(args.out_dir, args.model, task, label, length)
                if path.is_file():
                    continue
                print(f"[contest] {model_name(args.model)} {task} {label} @ {length}", file=sys.stderr, flush=True)
                cell = run_cell(args, args.model, config, tokenizer, task, label, length)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, cell)
                computed += 1
                if not args.no_report:
                    report(args.out_dir, figures=False)
        if computed and not args.no_report and not args.no_figures:
            report(args.out_dir, figures=True)
    return computed


# ------------------------------------------------------------------ report


def load_rows(out_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((out_dir / "cells").glob("*/*/*.json")):
        cell = json.loads(path.read_text(encoding="utf-8"))
        row = cell["row"]
        if row["metric"] == "ppl":  # statistics recomputed from the items: one definition for every cell
            row.update(ppl_row(cell["items"]))
        rows.append(row)
        row["_items"] = cell["items"]
    _paired_ratios(rows)
    for row in rows:
        del row["_items"]
    order = {m: i for i, m in enumerate(METHODS)}
    task_order = {t: i for i, t in enumerate(TASKS)}
    rows.sort(key=lambda r: (r["model"], task_order.get(r["task"], 99), order.get(r["method"], 99), r["length"]))
    return rows


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
    return text + ("†" if row.get("past_nominal") else "")


def tables(rows: list[dict]) -> str:
    """Markdown: per (model, task) a method x length table with n and 95% intervals."""
    out = []
    for model in sorted({r["model"] for r in rows}):
        mrows = [r for r in rows if r["model"] == model]
        for task in [t for t in TASKS if any(r["task"] == t for r in mrows)]:
            trows = [r for r in mrows if r["task"] == task]
            lengths = sorted({r["length"] for r in trows})
            ns = sorted({r["n"] for r in trows})
            what = "perplexity (lower is better)" if task == "ppl" else f"{task}: {trows[0]['metric']} %"
            out.append(f"**{model}, {what}**, n = {'/'.join(map(str, ns))} per cell, 95% interval in brackets\n")
            out.append("| method | " + " | ".join(f"{n} ({n // trows[0]['trained_context']}x)" for n in lengths) + " |")
            out.append("|---|" + "---:|" * len(lengths))
            by = {(r["method"], r["length"]): r for r in trows}
            for m in [m for m in METHODS if any(r["method"] == m for r in trows)]:
                cells = [_fmt(by[(m, n)]) if (m, n) in by else "" for n in lengths]
                out.append(f"| `{m}` | " + " | ".join(cells) + " |")
            out.append("")
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
length past the method's nominal reach (its evaluation guard lifted with `max_length`).

"""


def report(out_dir: Path, *, figures: bool = True) -> dict:
    """contest.json, contest.md and the heatmaps, from the cell files alone."""
    from zebra_llm.io import write_json_atomic, write_text_atomic

    rows = load_rows(out_dir)
    data = {"kind": "extensions_contest", "command": "python benchmarks/extensions_contest.py", "rows": rows}
    write_json_atomic(out_dir / "contest.json", data)
    pairs = sorted({(r["model"], r["task"]) for r in rows})
    page = HEADER + tables(rows) + "".join(f"\n![{m}: {t}](heatmap_{m}_{t}.png)\n" for m, t in pairs)
    write_text_atomic(out_dir / "contest.md", page if rows else "no finished cells yet\n")
    written = []
    if figures:
        for model in sorted({r["model"] for r in rows}):
            for task in sorted({r["task"] for r in rows if r["model"] == model}):
                sel = [r for r in rows if r["model"] == model and r["task"] == task]
                written.append(heatmap(sel, out_dir / f"heatmap_{model}_{task}.png", f"{model}: {task}"))
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


def readme_text(rows: list[dict], speed: dict | None = None) -> str:
    """The README's generated block: which method to use when, from the real model's passkey cells and the
    measured speed (``speed_ratios``); the small model's sentences when the real model has no cells."""
    cells = [r for r in rows if r["model"] == "smollm2-135m" and r["task"] == "passkey"]
    if not cells:
        return readme_block(rows)
    speed = speed_ratios() if speed is None else speed
    length = max(r["length"] for r in cells)
    at = sorted((r for r in cells if r["length"] == length), key=lambda r: (-r["value"], r["method"]))
    trained = at[0]["trained_context"]
    found = {r["method"]: round(r["value"] * r["n"]) for r in at}
    n = at[0]["n"]
    listing = ", ".join(f"`{r['method']}` {found[r['method']]}/{r['n']}" for r in at)
    first = (f"On SmolLM2-135M at {length} tokens ({length / trained:g}x its trained {trained}) the methods found "
             f"these passkeys: {listing} ({n} prompts per method, so Wilson 95% intervals as wide as the "
             "[contest tables](docs/results/extensions/contest/contest.md) show).")
    best = max(found.values())
    tied = [m for m in found if found[m] >= best - 1]  # within one prompt of the best: a tie at n = 3
    near = [m for m in tied if m in speed]
    if not near:
        return first
    pick = min(near, key=lambda m: (speed[m]["decode"], speed[m]["prefill"]))
    slower = [m for m in near if m != pick and speed[m]["decode"] > speed[pick]["decode"] * 1.1]
    second = (f"Within those intervals the methods that retrieve tie, so choose by the measured cost: use `{pick}`, which "
              f"found {found[pick]}/{n} at the unmodified model's speed (prefill {speed[pick]['prefill']:.2f}x, "
              f"decoding {speed[pick]['decode']:.2f}x at 16k)")
    if slower:
        second += ", over " + " and ".join(
            f"`{m}` ({found[m]}/{n}, decoding {speed[m]['decode']:.2f}x)" for m in sorted(slower))
    unmeasured = sorted(m for m in tied if m not in speed)
    if unmeasured:
        second += " (" + ", ".join(f"`{m}` {found[m]}/{n}" for m in unmeasured) + " had no speed run)"
    return first + " " + second + "; for perplexity alone see the DCA-against-YaRN table above."


SPEED_FILES = ("speed_prefill_16k_cpu.json", "speed_decode_16k_cpu.json")


def speed_ratios(root: Path = OUT_DIR.parent) -> dict:
    """method -> {"prefill": ratio, "decode": ratio} at 16k on SmolLM2, from the committed speed runs."""
    out: dict = {}
    for name in SPEED_FILES:
        path = root / name
        if not path.is_file():
            continue
        for row in json.loads(path.read_text(encoding="utf-8"))["rows"]:
            if row["part"] in ("prefill", "decode") and row["seq"] == 16384 and row["variant"] != "unmodified":
                out.setdefault(row["variant"], {})[row["part"]] = row["time_ratio"]
    return {m: r for m, r in out.items() if "prefill" in r and "decode" in r}


def fill_readme(text: str, block: str) -> str:
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md: no {BEGIN!r} ... {END!r} block")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


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
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--report-only", action="store_true", help="only regenerate tables and figures from the JSON")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="also fill the README's generated block")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the report after every cell")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        n = run_grid(args)
        print(f"[contest] computed {n} cells", file=sys.stderr)
    data = report(args.out_dir, figures=not args.no_figures)
    if args.write_docs:
        from zebra_llm.io import write_text_atomic

        write_text_atomic(README, fill_readme(README.read_text(encoding="utf-8"), readme_text(data["rows"])))
    print(f"[contest] {len(data['rows'])} rows -> {args.out_dir / 'contest.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
