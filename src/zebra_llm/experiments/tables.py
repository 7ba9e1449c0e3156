"""Markdown tables and figures of the experiments, from ``results.json`` alone.

Used by ``zebra experiment`` (after a run, or with ``--report-only``), by
``zebra report`` (which recognises experiment results files) and by
``experiments/write_results_md.py`` (the tables of ``docs/results.md``). Cells
that have not finished are shown as ``pending``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..eval.plots import _figure, _length_axis, _length_label, _save
from .markdown import PENDING, fmt, markdown_table, rows_where, value_where

def status_line(data: dict) -> str:
    cells = data.get("cells", {})
    done = sum(1 for s in cells.values() if s == "done")
    pending = [n for n, s in cells.items() if s != "done"]
    text = f"{done} of {len(cells)} cells finished"
    if pending:
        text += f"; pending: {', '.join(pending)}"
    return text + "."


# ----------------------------------------------------------------------------- zebra_strategies


def strategy_tables(data: dict) -> dict[str, str]:
    """The strategy grid's tables by name: ``gap`` (Figure 2), ``ppl`` (Figure 4), ``efficiency``, ``valid``."""
    cfg, rows = data["config"], data["rows"]
    strategies, lengths = cfg["strategies"], cfg["train_lengths"]
    cells = data.get("cells", {})

    def _f(x, spec=".2f", cell=None):  # a finished cell without the value: n/a; an unfinished one: pending
        missing = PENDING if cell is None or cells.get(cell) != "done" else "n/a"
        return fmt(x, spec, missing)

    out = {}
    gap, ppl = [], []
    for n in lengths:
        top = n * max(cfg.get("extrapolation") or [1])
        splits, x = [], cfg.get("first_split", 128)
        while x <= top:
            splits.append(x)
            x *= 2
        header = ["train len", "strategy"] + [("<=" if i == 0 else "") + _length_label(x) + ("*" if x > n else "")
                                               for i, x in enumerate(splits)]
        for s in strategies:
            for method in ("none", "dca"):
                if method == "dca" and not rows_where(rows, strategy=s, train_len=n, method="dca"):
                    continue
                label = f"`{s}`" + (" + DCA" if method == "dca" else "")
                vals, gaps = [], []
                for x in splits:
                    v = value_where(rows, strategy=s, train_len=n, split="test", length_split=x, method=method)
                    g = value_where(rows, strategy="global", train_len=n, split="test", length_split=x, method="none")
                    if method == "dca" and x <= n:
                        vals.append("")
                        gaps.append("")
                        continue
                    cell = f"train_{n}_{s}"
                    vals.append(_f(v, cell=cell))
                    gaps.append(_f(None if v is None or g is None else v - g, "+.2f", cell=cell))
                ppl.append([str(n), label] + vals)
                gap.append([str(n), label] + gaps)
        out[f"ppl_{n}"] = markdown_table(header, ppl)
        out[f"gap_{n}"] = markdown_table(header, gap)
        ppl, gap = [], []
    out["gap"] = "\n\n".join(out[f"gap_{n}"] for n in lengths)
    out["ppl"] = "\n\n".join(out[f"ppl_{n}"] for n in lengths)
    eff = []
    for n in lengths:
        g_speed = value_where(rows, strategy="global", train_len=n, split="speed", metric="train_tokens_per_s")
        g_kv = value_where(rows, strategy="global", train_len=n, metric="kv_cache_bytes")
        for s in strategies:
            speed = value_where(rows, strategy=s, train_len=n, split="speed", metric="train_tokens_per_s")
            kv = value_where(rows, strategy=s, train_len=n, metric="kv_cache_bytes")
            valid = sorted(rows_where(rows, strategy=s, train_len=n, split="valid"), key=lambda r: r["step"])
            gaps = []
            for r in rows_where(rows, strategy=s, train_len=n, split="test", method="none"):
                if r["length_split"] <= n:
                    g = value_where(rows, strategy="global", train_len=n, split="test", length_split=r["length_split"],
                             method="none")
                    if g is not None:
                        gaps.append(r["value"] - g)
            cell, sp = f"train_{n}_{s}", f"speed_{n}"
            eff.append([
                str(n), f"`{s}`",
                _f(valid[-1]["value"] if valid else None, cell=cell),
                _f(sum(gaps) / len(gaps) if gaps else None, "+.2f", cell=cell),
                _f(value_where(rows, strategy=s, train_len=n, split="efficiency", metric="train_tokens_per_s"), ".0f", cell),
                _f(speed, ".0f", sp),
                _f(None if speed is None or g_speed is None else speed / g_speed, ".2f", sp),
                _f(None if kv is None else kv / 2**20, ".2f", cell),
                _f(None if kv is None or g_kv is None else kv / g_kv, ".2f", cell),
                _f(value_where(rows, strategy=s, train_len=n, metric="train_tflops_total"), ".2f", cell),
            ])
    out["efficiency"] = markdown_table(
        ["train len", "strategy", "final valid ppl", "mean test ppl gap to global (splits <= train len)",
         "train tok/s (run median)", "train tok/s (side by side)", "x global", "KV cache at 4x len (MiB)",
         "x global", "train TFLOPs"], eff)
    return out


def strategy_figures(data: dict, out_dir: str | os.PathLike) -> list[Path]:
    cfg, rows = data["config"], data["rows"]
    lengths, strategies = cfg["train_lengths"], cfg["strategies"]
    out_dir = Path(out_dir)
    drawn = []
    # Figure 2 (gap to global per split) and Figure 4 (test ppl per split): one panel per training length.
    for name, gap in (("fig2_gap_to_global.png", True), ("fig4_test_ppl.png", False)):
        fig, axes = _figure(4.2 * len(lengths), 3.4, ncols=len(lengths))
        for ax, n in zip(axes[0], lengths):
            for k, s in enumerate(strategies):
                for method in ("none", "dca"):
                    pts = sorted((r["length_split"], r["value"]) for r in
                                 rows_where(rows, strategy=s, train_len=n, split="test", method=method))
                    if gap:
                        ref = {r["length_split"]: r["value"] for r in
                               rows_where(rows, strategy="global", train_len=n, split="test", method="none")}
                        pts = [(x, v - ref[x]) for x, v in pts if x in ref]
                    if not pts or (gap and s == "global" and method == "none"):
                        continue
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", linestyle="--" if method == "dca" else "-", color=f"C{k}",
                            label=s + (" + DCA" if method == "dca" else ""))
            ax.axvline(n, color="grey", linewidth=0.8, linestyle=":")
            if gap:
                ax.axhline(0, color="black", linewidth=0.8)
            splits = sorted({r["length_split"] for r in rows_where(rows, train_len=n, split="test")})
            if splits:
                _length_axis(ax, splits)
            ax.set_title(f"trained at {n} tokens")
            ax.set_xlabel("test split (document length)")
            ax.set_ylabel("ppl - ppl(global)" if gap else "test perplexity")
            if not gap:
                ax.set_yscale("log")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        drawn.append(_save(fig, out_dir / name))
    # Figure 3: validation perplexity against cumulative training TFLOPs.
    fig, axes = _figure(4.2 * len(lengths), 3.4, ncols=len(lengths))
    for ax, n in zip(axes[0], lengths):
        for k, s in enumerate(strategies):
            pts = sorted((r["tflops"], r["value"]) for r in rows_where(rows, strategy=s, train_len=n, split="valid"))
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=".", color=f"C{k}", label=s)
        ax.set_title(f"trained at {n} tokens")
        ax.set_xlabel("training TFLOPs")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    drawn.append(_save(fig, out_dir / "fig3_valid_ppl_vs_tflops.png"))
    return drawn


# ----------------------------------------------------------------------------- dispatch


def tables(data: dict) -> dict[str, str]:
    exp = data["experiment"]
    if exp == "zebra_strategies":
        from .positions import is_position_grid, position_grid_tables

        return position_grid_tables(data) if is_position_grid(data) else strategy_tables(data)
    if exp == "lcat_smollm2":
        from .lcat import lcat_tables

        return lcat_tables(data)
    if exp == "lit":
        from .lit import lit_tables

        return lit_tables(data)
    if exp == "recall":
        from .recall import recall_tables

        return recall_tables(data)
    if exp == "lcat_control":
        from .lcat_control import lcat_control_tables

        return lcat_control_tables(data)
    raise ValueError(f"results: unknown experiment {exp!r}")


def figures(data: dict, out_dir) -> list[Path]:
    exp = data["experiment"]
    if exp == "zebra_strategies":
        from .positions import is_position_grid, position_grid_figures

        return position_grid_figures(data, out_dir) if is_position_grid(data) else strategy_figures(data, out_dir)
    if exp == "lcat_smollm2":
        from .lcat import lcat_figures

        return lcat_figures(data, out_dir)
    if exp == "lit":
        from .lit import lit_figures

        return lit_figures(data, out_dir)
    if exp == "recall":
        from .recall import recall_figures

        return recall_figures(data, out_dir)
    if exp == "lcat_control":
        from .lcat_control import lcat_control_figures

        return lcat_control_figures(data, out_dir)
    raise ValueError(f"results: unknown experiment {exp!r}")


def experiment_report(data: dict, *, out_dir=None) -> tuple[str, list[Path]]:
    """Markdown of every table of ``data`` and the figures drawn into ``out_dir`` (None: no figures)."""
    parts = [f"## {data['experiment']}", "", status_line(data)]
    for name, text in tables(data).items():
        if name.startswith(("gap_", "ppl_")):
            continue  # per-length pieces of `gap` / `ppl`
        parts += ["", f"### {name}", "", text]
    drawn = figures(data, out_dir) if out_dir is not None else []
    return "\n".join(parts) + "\n", drawn
