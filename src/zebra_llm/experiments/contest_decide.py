"""The contest's statistics over its cells (:mod:`.contest`): every cell's rows and per-prompt scores, the
paired tests against the best ranked method, and the recommendation by the stated rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .contest_plan import BASE_METHODS, METHODS, TASKS, ppl_row, t975

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
