"""Figures from results (matplotlib, Agg canvas, no global pyplot state).

* perplexity vs length, one line per method (log-log), the trained context marked;
* retrieval heatmaps (passkey, needle): depth x length accuracy, one panel per method;
* efficiency vs length: prefill time, decode speed, peak memory, KV cache, one line per method.

Every function takes summary rows (``results["summary"]``) and writes a PNG
atomically; it returns the path.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from ..io import write_bytes_atomic


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())


def _methods_in_order(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def _length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 and n >= 1024 else str(n)


def _length_axis(ax, lengths: list[int]) -> None:
    """Log2 x axis with a tick and label at each measured length only."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [_length_label(n) for n in lengths])
    ax.xaxis.set_minor_locator(NullLocator())


def plot_perplexity(rows: list[dict], path, *, title: str = "Perplexity by length", trained_context: int | None = None):
    """``rows``: dicts with method, length, ppl."""
    rows = [r for r in rows if r.get("ppl") is not None]
    if not rows:
        raise ValueError("plot: no perplexity rows to draw")
    fig, axes = _figure(6.4, 4.2)
    ax = axes[0][0]
    lengths = sorted({r["length"] for r in rows})
    for method in _methods_in_order(rows):
        pts = sorted((r["length"], r["ppl"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    _length_axis(ax, lengths)
    values = [r["ppl"] for r in rows]
    if max(values) / min(values) > 3:  # a log axis where extrapolation blows up, a linear one otherwise
        from matplotlib.ticker import LogFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(3, 1)))
    if trained_context:
        ax.axvline(trained_context, color="gray", linestyle="--", linewidth=1)
        ax.annotate("trained context", (trained_context, ax.get_ylim()[1]), rotation=90, va="top", ha="right",
                    fontsize=8, color="gray")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_heatmap(rows: list[dict], path, *, title: str = "Passkey retrieval"):
    """``rows``: dicts with method, length, depth (a number; "all" rows are skipped), accuracy."""
    rows = [r for r in rows if r.get("depth") != "all" and r.get("accuracy") is not None]
    if not rows:
        raise ValueError("plot: no retrieval rows to draw")
    methods = _methods_in_order(rows)
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({float(r["depth"]) for r in rows})
    ncols = min(len(methods), 3)
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = _figure(2.2 + 1.0 * len(lengths) * ncols, 0.8 + (0.45 * len(depths) + 0.9) * nrows, ncols, nrows)
    image = None
    for k, method in enumerate(methods):
        ax = axes[k // ncols][k % ncols]
        grid = [[math.nan] * len(lengths) for _ in depths]
        for r in rows:
            if r["method"] == method:
                grid[depths.index(float(r["depth"]))][lengths.index(r["length"])] = r["accuracy"]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if not math.isnan(grid[i][j]):
                    ax.text(j, i, f"{100 * grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
        ax.set_xlabel("length")
        ax.set_ylabel("depth")
        ax.set_title(method, fontsize=9)
    for k in range(len(methods), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(title)
    return _save(fig, path)


_BENCH_PANELS = (
    ("prefill_s", "prefill time (s)", 1.0),
    ("decode_tokens_per_s", "decode speed (tokens/s)", 1.0),
    ("peak_bytes", "peak memory (MiB)", 1 / 2**20),
    ("kv_cache_bytes", "KV cache (MiB)", 1 / 2**20),
)


def plot_bench(rows: list[dict], path, *, title: str = "Efficiency by length"):
    """``rows``: dicts with method, length and the measured fields of ``zebra bench``."""
    if not rows:
        raise ValueError("plot: no bench rows to draw")
    panels = list(_BENCH_PANELS)
    if any(r.get("flops") for r in rows):
        panels.append(("flops", "forward TFLOPs (estimate)", 1e-12))
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(9.0, 3.2 * nrows, ncols, nrows)
    lengths = sorted({r["length"] for r in rows})
    for k, (key, label, scale) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for method in _methods_in_order(rows):
            pts = sorted((r["length"], r[key] * scale) for r in rows if r["method"] == method and r.get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        _length_axis(ax, lengths)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
