"""The contest's report (:mod:`.contest`): ``contest.json``, ``contest.md`` with its tables, the heatmaps,
and the generated blocks of the README and ``docs/extensions.md``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .contest_decide import _key, load_cells, recommendation
from .contest_plan import METHODS, OUT_DIR, ROOT, TASKS

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

