"""Markdown tables and figures from saved results files (``zebra report``).

A finished run's saved summary is used as is; for a run that was stopped
halfway the summary is recomputed from the items finished so far. Several
files of one kind (e.g. one per method or per machine) are merged into one
table and figure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .efficiency import summarize_bench
from .perplexity import summarize_perplexity
from .plots import _length_label, plot_bench, plot_heatmap, plot_perplexity
from .results import load_results
from .retrieval import summarize_retrieval

KINDS = ("ppl", "passkey", "needle", "bench")
_TITLES = {"ppl": "Perplexity", "passkey": "Passkey retrieval accuracy", "needle": "Needle-in-a-haystack accuracy",
           "bench": "Efficiency"}


def summarize(kind: str, items: list[dict]) -> list[dict]:
    if kind == "ppl":
        return summarize_perplexity(items)
    if kind in ("passkey", "needle"):
        return summarize_retrieval(items)
    if kind == "bench":
        return summarize_bench(items)
    raise ValueError(f"results: unknown kind {kind!r}; known kinds are {', '.join(KINDS)}")


def file_rows(data: dict) -> list[dict]:
    """A file's summary rows: the saved summary of a finished run (it covers that run's plan), or,
    for a run that has not finished, a summary recomputed from the items finished so far."""
    return data.get("summary") or summarize(data["kind"], data["items"])


def _methods(rows):
    out = []
    for r in rows:
        if r["method"] not in out:
            out.append(r["method"])
    return out


def _table(header: list[str], body: list[list[str]], align: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def perplexity_table(rows: list[dict], key: str = "ppl") -> str:
    """Methods as rows, lengths as columns (the DCA paper's Table 1 shape)."""
    lengths = sorted({r["length"] for r in rows})
    cell = {(r["method"], r["length"]): r for r in rows}
    body = []
    for m in _methods(rows):
        body.append([f"`{m}`"] + [_fmt(cell.get((m, n), {}).get(key), ".2f", "") for n in lengths])
    return _table(["method"] + [_length_label(n) for n in lengths], body, ["---"] + ["---:"] * len(lengths))


def retrieval_table(rows: list[dict]) -> str:
    """Accuracy (%) over all depths, methods as rows, lengths as columns."""
    overall = [r for r in rows if r.get("depth") == "all"]
    lengths = sorted({r["length"] for r in overall})
    cell = {(r["method"], r["length"]): r for r in overall}
    body = []
    for m in _methods(overall):
        row = [f"`{m}`"]
        for n in lengths:
            r = cell.get((m, n))
            row.append("" if r is None else f"{100 * r['accuracy']:.0f} ({r['correct']}/{r['trials']})")
        body.append(row)
    return _table(["method"] + [_length_label(n) for n in lengths], body, ["---"] + ["---:"] * len(lengths))


def bench_table(rows: list[dict]) -> str:
    mib = 2**20
    body = []
    for r in sorted(rows, key=lambda r: (r["length"], r["method"] != "none")):
        body.append([
            str(r["length"]), f"`{r['method']}`",
            _fmt(r.get("prefill_s"), ".2f"), _fmt(r.get("prefill_time_ratio"), ".2f"),
            _fmt(r.get("decode_tokens_per_s"), ".1f"), _fmt(r.get("decode_speed_ratio"), ".2f"),
            _fmt(None if r.get("peak_bytes") is None else r["peak_bytes"] / mib, ".0f"),
            _fmt(r.get("peak_memory_ratio"), ".2f"),
            _fmt(None if r.get("kv_cache_bytes") is None else r["kv_cache_bytes"] / mib, ".1f"),
            _fmt(r.get("kv_cache_ratio"), ".2f"),
            _fmt(None if r.get("flops") is None else r["flops"] / 1e12, ".2f"), _fmt(r.get("flops_ratio"), ".2f"),
        ])
    header = ["length", "method", "prefill (s)", "x none", "decode (tok/s)", "x none", "peak mem (MiB)", "x none",
              "KV cache (MiB)", "x none", "TFLOPs", "x none"]
    return _table(header, body, ["---:", "---"] + ["---:"] * 10)


def markdown_table(kind: str, rows: list[dict]) -> str:
    if kind == "ppl":
        text = perplexity_table(rows)
        if any(r.get("ppl_last_quarter") for r in rows):
            text += ("\n\nPerplexity of the last quarter of the positions (where extrapolation fails first):\n\n"
                     + perplexity_table(rows, "ppl_last_quarter"))
        return text
    if kind in ("passkey", "needle"):
        return retrieval_table(rows)
    return bench_table(rows)


def draw(kind: str, rows: list[dict], path, *, trained_context: int | None = None) -> Path:
    if kind == "ppl":
        return plot_perplexity(rows, path, trained_context=trained_context)
    if kind in ("passkey", "needle"):
        return plot_heatmap(rows, path, title=_TITLES[kind])
    return plot_bench(rows, path)


def _describe(data: dict) -> str:
    cfg = data.get("config", {})
    v = data.get("versions", {})
    model = cfg.get("model", "?")
    bits = [f"model `{model}`"]
    if data["kind"] == "ppl":
        bits.append(f"data `{cfg.get('data') or 'stdlib'}`, mode {cfg.get('mode')}")
    elif data["kind"] == "needle":
        bits.append(f"haystack `{cfg.get('data') or 'stdlib'}`")
    if cfg.get("dtype"):
        bits.append(cfg["dtype"])
    bits.append(f"{v.get('machine', '?')}, {v.get('cuda_device') or str(v.get('torch_threads', '?')) + ' CPU threads'}")
    bits.append(f"torch {v.get('torch', '?')}, transformers {v.get('transformers', '?')}")
    return "; ".join(bits)


def report(paths: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike | None = None,
           figures: bool = True) -> tuple[str, list[Path]]:
    """Markdown (one section per kind) and the figures drawn from the evaluation results files at ``paths``.

    Figures go to ``out_dir`` (default: next to the first file of each kind) as ``<kind>.png``. The results
    of ``zebra experiment`` have their own report (``zebra_llm.experiments.tables.experiment_report``);
    ``zebra report`` takes both (``zebra_llm.cli.report.build_report``).
    """
    if not paths:
        raise ValueError("report: give at least one results file")
    by_kind: dict[str, list[tuple[Path, dict]]] = {}
    sections, drawn = [], []
    for p in paths:
        data = load_results(p)
        if data["kind"] not in KINDS:
            raise ValueError(f"results: {p} has unknown kind {data['kind']!r}")
        by_kind.setdefault(data["kind"], []).append((Path(p), data))
    for kind in KINDS:
        if kind not in by_kind:
            continue
        files = by_kind[kind]
        if not any(d["items"] for _, d in files):
            raise ValueError(f"results: {', '.join(str(p) for p, _ in files)} has no finished items yet")
        rows = [r for _, d in files for r in file_rows(d)]
        text = [f"### {_TITLES[kind]}", "", _table_note(kind, files), "", markdown_table(kind, rows)]
        if figures:
            target = Path(out_dir) if out_dir is not None else files[0][0].parent
            stem = files[0][0].stem if len(files) == 1 else kind
            trained = next((m.get("trained_context") for _, d in files for m in d.get("models", {}).values()), None)
            path = draw(kind, rows, target / f"{stem}.png", trained_context=trained)
            drawn.append(path)
            text += ["", f"Figure: `{path}`"]
        sections.append("\n".join(text))
    return "\n\n".join(sections) + "\n", drawn


def _table_note(kind: str, files) -> str:
    notes = [_describe(d) for _, d in files]
    unique = list(dict.fromkeys(notes))
    return "; ".join(f"{n}" for n in unique) + f" ({len(files)} file{'s' if len(files) > 1 else ''})"
