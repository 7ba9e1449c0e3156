"""Tables and figures of a strategy grid with seeds and per-position loss (issue 19, item 2).

A grid run with ``seeds`` and ``position_factors`` (:mod:`.strategies`) has several runs per (length,
strategy) and, per run, the test loss by position bucket (:mod:`.position_loss`). What is read here:

* the loss by position per strategy, mean ± sd over seeds, at the training length and beyond it, with
  and without DCA (``positions``; figure ``fig_position_loss.png``);
* per strategy, the loss at the end of the window (positions ``window/2 + 1 .. window``: every strategy
  attends to the same keys there, and the local layers already see a full window) and beyond the *local reach* (positions past ``layers x (window - 1)``: what no stack of
  local layers can see), the gap of each to global's at the same seed, and the difference of the two gaps
  (``position_summary``). The gap inside the window is training noise plus model quality; the part of the
  gap beyond the reach that exceeds it is what attention adds;
* the test perplexity by length split as in the paper's Figure 2, mean ± sd (``split_ppl``), the cost of
  the cells (``position_cost``), and the original grid's tables for the first seed (``*_first_seed``).

Two sets of runs are called different only when every run of one is below every run of the other (an
exact one-sided rank test: p = 0.05 with 3 runs each, 0.10 with 3 vs 2).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .markdown import PENDING, markdown_table, rows_where


def mean_sd(values: list[float], spec: str = ".3f") -> str:
    """``mean ± sd (n=k)``; one value alone; ``pending`` for none."""
    if not values:
        return PENDING
    if len(values) == 1:
        return f"{values[0]:{spec}} (n=1)"
    return f"{statistics.fmean(values):{spec}} ± {statistics.stdev(values):{spec}} (n={len(values)})"


def separated(a: list[float], b: list[float]) -> str:
    """``a < b`` / ``a > b`` when every value of one is below every value of the other, with the exact
    one-sided p of that order under exchangeability; else ``not separated``."""
    if not a or not b:
        return PENDING
    p = 1 / math.comb(len(a) + len(b), len(a))
    if max(a) < min(b):
        return f"below (p = {p:.2f})"
    if min(a) > max(b):
        return f"above (p = {p:.2f})"
    return "not separated"


def local_reach(cfg: dict, n: int) -> int:
    """Positions a stack of local layers can see back: ``layers x (window - 1)``."""
    layers = int(cfg.get("model", {}).get("num_hidden_layers", 4))
    return layers * (n // cfg["window_divisor"] - 1)


def band_nll(rows: list[dict], lo: int, hi: int) -> float | None:
    """Token-weighted mean loss of the position buckets lying inside ``lo < position <= hi``."""
    inside = [r for r in rows if r["lo"] >= lo and r["hi"] <= hi]
    tokens = sum(r["tokens"] for r in inside)
    return sum(r["value"] * r["tokens"] for r in inside) / tokens if tokens else None


def _position_rows(rows, **kw) -> list[dict]:
    return [r for r in rows_where(rows, split="position", **kw)]


def _by_seed(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r.get("seed"), []).append(r)
    return out


def _evals(rows: list[dict], n: int) -> list[tuple[int, str]]:
    """The (factor, method) evaluations found for training length ``n``, 1x first."""
    return sorted({(r["factor"], r.get("method", "none")) for r in _position_rows(rows, train_len=n)},
                  key=lambda e: (e[0], e[1] != "none"))


def positions_tables(data: dict) -> str:
    """Per training length and evaluation: loss by position bucket per strategy (mean ± sd over seeds)."""
    from .position_loss import position_table
    from .strategies import HAS_GLOBAL

    cfg, rows = data["config"], data["rows"]
    parts = []
    for n in cfg["train_lengths"]:
        w = n // cfg["window_divisor"]
        for f, method in _evals(rows, n) or [(1, "none")]:
            found = _position_rows(rows, train_len=n, factor=f, method=method)
            docs = sorted({r["docs"] for r in found})
            parts.append(f"Trained at {n} tokens (window {w}, local reach {local_reach(cfg, n)}), scored at "
                         f"{f * n} tokens" + (" with DCA on the global layers" if method == "dca" else "")
                         + f" ({', '.join(map(str, docs)) or '?'} test documents; loss in nats per token, "
                         "`*` = beyond the training length):")
            shown = [s for s in cfg["strategies"] if method == "none" or s in HAS_GLOBAL]
            parts.append(position_table(rows, strategies=shown, train_len=n, length=f * n, method=method))
    return "\n\n".join(parts)


def _band_values(rows, n, strategy, f, method, lo, hi) -> dict:
    """seed -> loss in the band for one strategy's runs."""
    out = {}
    for seed, mine in _by_seed(_position_rows(rows, train_len=n, strategy=strategy, factor=f, method=method)).items():
        v = band_nll(mine, lo, hi)
        if v is not None:
            out[seed] = v
    return out


def summary_table(data: dict) -> str:
    """Per strategy: loss inside the window and beyond the local reach, gaps to global at the same seed."""
    from .strategies import HAS_GLOBAL

    cfg, rows = data["config"], data["rows"]
    body = []
    for n in cfg["train_lengths"]:
        w, reach = n // cfg["window_divisor"], local_reach(cfg, n)
        found = _evals(rows, n)
        top_f = max([1] + [f for f, _ in found])
        for f, method in [e for e in found if e[0] in (1, top_f)]:
            top = f * n
            g_in = _band_values(rows, n, "global", f, method, w // 2, w)
            g_out = _band_values(rows, n, "global", f, method, reach, top)
            for s in [s for s in cfg["strategies"] if method == "none" or s in HAS_GLOBAL]:
                inside = _band_values(rows, n, s, f, method, w // 2, w)
                beyond = _band_values(rows, n, s, f, method, reach, top)
                seeds = sorted(set(inside) & set(beyond) & set(g_in) & set(g_out), key=str)
                gap_in = [inside[k] - g_in[k] for k in seeds]
                gap_out = [beyond[k] - g_out[k] for k in seeds]
                diff = [b - a for a, b in zip(gap_in, gap_out)]
                label = f"{f * n}" + (" + DCA" if method == "dca" else "")
                fall = [inside[k] - beyond[k] for k in beyond if k in inside]
                row = [str(n), f"`{s}`", label, mean_sd(list(inside.values())), mean_sd(list(beyond.values())),
                       mean_sd(fall)]
                if s == "global":
                    row += ["", "", "", ""]
                else:
                    row += [mean_sd(gap_in), mean_sd(gap_out), mean_sd(diff),
                            separated(list(beyond.values()), list(g_out.values()))]
                body.append(row)
    header = ["train len", "strategy", "scored at", "loss at window/2 < position <= window",
              "loss beyond the local reach", "fall (window - beyond)", "gap to global at the window", "gap to global beyond reach",
              "gap beyond - gap inside", "beyond reach vs global"]
    return markdown_table(header, body)


def _verdict(a: dict, b: dict) -> str:
    """``a`` against ``b`` (seed -> value): the means, the seeds and the rank test's reading."""
    if not a or not b:
        return PENDING
    va, vb = list(a.values()), list(b.values())
    order = separated(va, vb)
    said = "not separated at these seeds" if order == "not separated" else f"every seed {order}"
    return f"{mean_sd(va)} vs {mean_sd(vb)}: {said}"


def assessment(data: dict) -> str:
    """Bullets read from the numbers: does the quantity move (global vs local beyond the local reach), where
    each other strategy lies, what DCA does past the training length."""
    from .strategies import HAS_GLOBAL

    cfg, rows = data["config"], data["rows"]
    out = []
    for n in cfg["train_lengths"]:
        w, reach = n // cfg["window_divisor"], local_reach(cfg, n)

        def band(s, lo, hi, f=1, method="none"):
            return _band_values(rows, n, s, f, method, lo, hi)

        g_win, g_far = band("global", w // 2, w), band("global", reach, n)
        if not g_far:
            out.append(f"- {n} tokens: pending (global needs a finished cell).")
            continue
        fall = {k: g_win[k] - g_far[k] for k in g_far if k in g_win}
        out.append(f"- {n} tokens, global's own loss from the end of the window (positions {w // 2 + 1}-{w}) to "
                   f"beyond the local reach (> {reach}): falls by {mean_sd(list(fall.values()))} nats.")
        for s in [s for s in cfg["strategies"] if s != "global"]:
            win, far = band(s, w // 2, w), band(s, reach, n)
            if not far:
                out.append(f"- {n} tokens, `{s}`: pending.")
                continue
            gap_w = {k: win[k] - g_win[k] for k in win if k in g_win}
            gap_f = {k: far[k] - g_far[k] for k in far if k in g_far}
            excess = {k: gap_f[k] - gap_w[k] for k in gap_f if k in gap_w}
            out.append(f"- {n} tokens, `{s}` beyond the local reach vs global (loss): {_verdict(far, g_far)}; "
                       f"its gap to global there {mean_sd(list(gap_f.values()))}, at the window "
                       f"{mean_sd(list(gap_w.values()))}, excess beyond {mean_sd(list(excess.values()))}.")
        top = max(cfg.get("position_factors") or [1])
        if top > 1:
            for s in [s for s in cfg["strategies"] if s in HAS_GLOBAL]:
                plain, dca = band(s, n, top * n, top), band(s, n, top * n, top, "dca")
                if plain and dca:
                    out.append(f"- {n} tokens, `{s}` scored at {top * n}, positions past {n}: no method vs DCA "
                               f"{_verdict(plain, dca)}.")
    return "\n".join(out) or PENDING


def split_ppl_table(data: dict) -> str:
    """Test perplexity gap to global per length split (the paper's Figure 2), mean ± sd over seeds of the
    gap at the same seed."""
    cfg, rows = data["config"], data["rows"]
    parts = []
    for n in cfg["train_lengths"]:
        test = rows_where(rows, split="test", train_len=n)
        splits = sorted({r["length_split"] for r in test})
        body = []
        for s in cfg["strategies"]:
            for method in ("none", "dca"):
                if method == "dca" and not rows_where(test, strategy=s, method="dca"):
                    continue
                row = [f"`{s}`" + (" + DCA" if method == "dca" else "")]
                for x in splits:
                    g = {r.get("seed"): r["value"] for r in rows_where(test, strategy="global", length_split=x,
                                                                      method="none")}
                    mine = {r.get("seed"): r["value"] for r in rows_where(test, strategy=s, length_split=x,
                                                                         method=method)}
                    row.append("" if method == "dca" and x <= n else
                               mean_sd([v - g[k] for k, v in mine.items() if k in g], "+.2f"))
                body.append(row)
        header = ["strategy"] + [("<=" if i == 0 else "") + f"{x}" + ("*" if x > n else "")
                                 for i, x in enumerate(splits)]
        parts.append(f"Trained at {n} tokens (test perplexity minus global's at the same seed):\n\n"
                     + markdown_table(header, body or [[PENDING]]))
    return "\n\n".join(parts)


def model_table(data: dict) -> str:
    """Model size, training tokens and final validation perplexity per strategy."""
    cfg, rows = data["config"], data["rows"]
    body = []
    for n in cfg["train_lengths"]:
        for s in cfg["strategies"]:
            params = [r["value"] for r in rows_where(rows, train_len=n, strategy=s, metric="params")]
            tokens = [r["value"] for r in rows_where(rows, train_len=n, strategy=s, metric="train_tokens")]
            final = []
            for seed, mine in _by_seed(rows_where(rows, train_len=n, strategy=s, split="valid")).items():
                final.append(max(mine, key=lambda r: r["step"])["value"])
            body.append([str(n), f"`{s}`", f"{int(params[0]):,}" if params else PENDING,
                         f"{int(tokens[0]):,}" if tokens else PENDING, mean_sd(final, ".2f")])
    return markdown_table(["train len", "strategy", "parameters", "training tokens", "final valid ppl"], body)


def cost_table(data: dict) -> str:
    """Finished train cells and their CPU seconds (every part of resumed runs included)."""
    cfg = data["config"]
    cpu = data.get("cell_cpu_s", {})
    cells = data.get("cells", {})
    body = []
    for n in cfg["train_lengths"]:
        names = [c for c in cells if c.startswith(f"train_{n}_")]
        done = [c for c in names if cells[c] == "done"]
        secs = [cpu[c] for c in done if c in cpu]
        mean = statistics.fmean(secs) if secs else None
        body.append([str(n), f"{len(done)} of {len(names)}", f"{mean:.0f}" if mean else PENDING,
                     f"{sum(secs) / 3600:.2f}", f"{mean * (len(names) - len(done)) / 3600:.2f}" if mean else PENDING])
    return markdown_table(["train len", "train cells finished", "CPU s per cell (mean)", "CPU hours spent",
                           "CPU hours left (estimate)"], body)


def first_seed_data(data: dict) -> dict:
    """``data`` reduced to the first seed, with the cells named as in the original grid (its tables)."""
    seeds = data["config"].get("seeds") or [data["config"].get("seed", 0)]
    k = seeds[0]
    suffix = f"_seed{k}"
    cells = {c.removesuffix(suffix): v for c, v in data.get("cells", {}).items()
             if c.endswith(suffix) or c.startswith("speed_")}
    rows = [r for r in data["rows"] if r.get("seed", k) == k]
    return {**data, "cells": cells, "rows": rows}


def position_grid_tables(data: dict) -> dict[str, str]:
    """Every table of a seeded / per-position strategy grid by name."""
    from .tables import strategy_tables

    out = {"positions": positions_tables(data), "position_summary": summary_table(data),
           "split_ppl": split_ppl_table(data), "position_models": model_table(data),
           "position_cost": cost_table(data), "position_assessment": assessment(data)}
    first = strategy_tables(first_seed_data(data))
    for name in ("efficiency", "gap", "ppl"):
        out[f"{name}_first_seed"] = first[name]
    return out


def position_grid_figures(data: dict, out_dir) -> list[Path]:
    """``fig_position_loss.png`` (loss by position per strategy, mean and min-max over seeds, the window,
    the local reach and the training length marked) and the original grid's figures for the first seed."""
    from ..eval.plots import _figure, _save
    from .tables import strategy_figures

    cfg, rows = data["config"], data["rows"]
    lengths = cfg["train_lengths"]
    evals = {n: _evals(rows, n) or [(1, "none")] for n in lengths}
    ncols = max(len(e) for e in evals.values())
    fig, axes = _figure(3.8 * ncols, 3.2 * len(lengths), ncols=ncols, nrows=len(lengths))
    for i, n in enumerate(lengths):
        w, reach = n // cfg["window_divisor"], local_reach(cfg, n)
        for j, (f, method) in enumerate(evals[n]):
            ax = axes[i][j]
            for k, s in enumerate(cfg["strategies"]):
                runs = _by_seed(_position_rows(rows, train_len=n, strategy=s, factor=f, method=method))
                if not runs:
                    continue
                buckets = sorted({(r["lo"], r["hi"]) for rs in runs.values() for r in rs})
                xs, mean, low, high = [], [], [], []
                for lo, hi in buckets:
                    v = [r["value"] for rs in runs.values() for r in rs if r["lo"] == lo]
                    xs.append(math.sqrt((lo + 1) * hi))
                    mean.append(statistics.fmean(v))
                    low.append(min(v))
                    high.append(max(v))
                ax.plot(xs, mean, marker=".", color=f"C{k}", label=f"{s} (n={len(runs)})")
                ax.fill_between(xs, low, high, color=f"C{k}", alpha=0.2, linewidth=0)
            for x, style, what in ((w, "--", "window"), (reach, ":", "local reach"), (n, "-", "train length")):
                ax.axvline(x, color="grey", linestyle=style, linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_title(f"trained at {n}, scored at {f * n}" + (" + DCA" if method == "dca" else ""), fontsize=9)
            ax.set_xlabel("token position (bucket)")
            ax.set_ylabel("test loss (nats/token)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        for j in range(len(evals[n]), ncols):
            axes[i][j].axis("off")
    drawn = [_save(fig, Path(out_dir) / "fig_position_loss.png")]
    return drawn + strategy_figures(first_seed_data(data), out_dir)


def is_position_grid(data: dict) -> bool:
    cfg = data.get("config", {})
    return cfg.get("seeds") is not None or bool(cfg.get("position_factors"))


__all__ = ["band_nll", "is_position_grid", "mean_sd", "position_grid_figures", "position_grid_tables",
           "separated"]
