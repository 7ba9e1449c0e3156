"""Dual Chunk Attention quality on SmolLM2-135M (trained context 8192): perplexity and passkey.

    zebra experiment dca_quality                      # everything (hours on 2 CPU cores)
    zebra experiment dca_quality --parts ppl --lengths 4096 8192
    zebra experiment dca_quality --device cuda --dtype bfloat16
    zebra experiment dca_quality --report-only --write-docs  # tables into the docs

``python benchmarks/dca_quality.py`` takes the same options (a wrapper of this command).

Everything is computed by ``zebra_llm.eval`` (chunked-loss perplexity on the first N tokens of a
document, passkey retrieval with the Landmark Attention / ChunkLlama prompt, greedy decoding); this
script only chooses the grid and prints the tables. Results go to JSON files under ``--out-dir``
(default ``docs/results/dca_quality``, the committed results), one per (part, text, base model),
written after every item: a stopped run resumes where it was, and rerunning prints the tables from
what is there. Figures (perplexity by length per text, passkey heatmap), with the table's method
labels, go to ``--out-dir`` too.

The tables in ``docs/benchmarks.md`` and the summary in ``README.md`` are generated, never typed:
``--write-docs`` replaces the text between each ``<!-- BEGIN GENERATED ...: NAME -->`` and
``<!-- END GENERATED: NAME -->`` marker pair with block NAME of this report, and
``tests/project/test_docs.py`` checks that the pages hold what the JSON gives. Block ``demo`` is the
table of ``zebra demo --out-dir docs/results/demo`` (the README's main job), read from its JSON.

Methods, at each length N (factor f = N / trained context, only where f > 1):

* ``none``: the model unchanged;
* ``dca:temperature=true`` (``--methods dca``): Dual Chunk Attention (pretraining_length 8192,
  chunk_size 6144) with the YaRN-style temperature beyond 8192 keys (the library's default until
  the extension contest, now opt-in); ``dca:temperature=false`` (``dca-notemp``): the paper's DCA
  exactly, today's default;
* ``linear:factor=f``, ``yarn:factor=f`` and ``dynamic:factor=f``: transformers' own rope scaling
  (position interpolation, YaRN, dynamic NTK);
* ``yarn:factor=2 + dca``: DCA stacked on a YaRN-scaled rope, with pretraining_length 16384 (the
  context YaRN x2 reaches) and chunk_size 12288, as the paper stacks DCA on PI/NTK-scaled
  models (its ChunkCodeLlama and ChunkTogether rows).

No setting was chosen by looking at these texts: the DCA defaults are the paper's (chunk
3/4 of the trained context), the stacked base is the smallest YaRN factor past 8192.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

TRAINED = 8192
STACKED_BASE = "yarn:factor=2"
STACKED_DCA = "dca:pretraining_length=16384,temperature=true"


def methods_at(length: int, wanted: list[str]) -> list[tuple[str | None, str, str]]:
    """(base spec applied first or None, evaluated spec, table label) for one length."""
    from zebra_llm.eval import MethodSpec

    out = []
    if "none" in wanted:
        out.append((None, "none", "none"))
    if "dca" in wanted:
        out.append((None, "dca:temperature=true", "dca:temperature=true"))
    if "dca-notemp" in wanted:
        out.append((None, "dca:temperature=false", "dca:temperature=false"))
    factor = length / TRAINED
    for name in ("linear", "yarn", "dynamic"):
        if name in wanted and factor > 1:
            out.append((None, f"{name}:factor={factor:g}", f"{name}:factor=N/{TRAINED}"))
    if "stacked" in wanted:
        out.append((STACKED_BASE, STACKED_DCA, f"{STACKED_BASE} + dca (c=16384)"))
    # the eval library records methods by their canonical spec text
    return [(base, str(MethodSpec.parse(spec)), label) for base, spec, label in out]


def _file(out_dir: Path, part: str, text: str | None, base: str | None) -> Path:
    stem = part if text is None else f"{part}_{Path(text).stem.lstrip('_')}"
    if base is not None:
        stem += "_on_" + base.replace(":", "_").replace("=", "")
    return out_dir / f"{stem}.json"


def _objects(base: str | None, spec: str, dtype: str, device: str | None):
    """model_objects for the eval runners: the model with ``base`` applied, for ``spec`` to go on top."""
    if base is None:
        return None
    from zebra_llm.eval import MethodSpec
    from zebra_llm.loading import load_model

    model, tokenizer = load_model("smollm2", dtype=dtype, device=device)
    return {spec: (MethodSpec.parse(base).apply(model), tokenizer)}


def _items(path: Path, spec: str, length: int) -> list[dict]:
    from zebra_llm.eval.results import load_results

    if not path.is_file():
        return []
    return [i for i in load_results(path)["items"] if i["method"] == spec and i["length"] == length]


def _summaries(args, part: str, lengths, text_path: Path | None, make_config, run, summarize):
    """(label, length, row) of each row ``summarize`` gives for every (length, method) of ``part``, each
    evaluated first by ``run`` on ``make_config(spec, length)`` unless ``args.report_only`` (the results
    file resumes what it holds)."""
    for length in lengths:
        for base, spec, label in methods_at(length, args.methods):
            path = _file(args.out_dir, part, None if text_path is None else text_path.name, base)
            config = make_config(spec, length)
            where = part if text_path is None else f"{part} {text_path.name}"
            print(f"{where} {length} {label}", file=sys.stderr, flush=True)
            if not args.report_only:
                run(config, path, progress=args.progress, model_objects=_objects(base, spec, args.dtype, args.device))
            for row in summarize(_items(path, spec, length)):
                yield label, length, row


def run_ppl(args, text_path: Path) -> tuple[dict[tuple[str, int], dict], list[dict]]:
    """Table rows by (label, length), and the same rows as a list for the figure."""
    from zebra_llm.eval import PerplexityConfig, run_perplexity, summarize_perplexity

    def config(spec: str, length: int) -> PerplexityConfig:
        return PerplexityConfig(model="smollm2", methods=[spec], data=str(text_path), mode="fixed",
                                lengths=[length], dtype=args.dtype, device=args.device)

    rows: dict[tuple[str, int], dict] = {}
    figure_rows: list[dict] = []
    for label, length, row in _summaries(args, "ppl", args.lengths, text_path, config, run_perplexity,
                                         summarize_perplexity):
        rows[(label, length)] = row
        figure_rows.append({**row, "method": label})
    return rows, figure_rows


def run_passkey_grid(args) -> tuple[dict[tuple[str, int], dict], list[dict]]:
    """Overall accuracy by (label, length), and per-depth rows for the heatmap."""
    from zebra_llm.eval.passkey import run_passkey
    from zebra_llm.eval.retrieval import RetrievalConfig, summarize_retrieval

    def config(spec: str, length: int) -> RetrievalConfig:
        return RetrievalConfig(model="smollm2", methods=[spec], lengths=[length], depths=args.depths,
                               trials=args.trials, dtype=args.dtype, device=args.device)

    rows: dict[tuple[str, int], dict] = {}
    figure_rows: list[dict] = []
    for label, length, row in _summaries(args, "passkey", args.passkey_lengths, None, config, run_passkey,
                                         summarize_retrieval):
        if row["depth"] == "all":
            rows[(label, length)] = row
        else:
            figure_rows.append({**row, "method": label})
    return rows, figure_rows


def _labels(rows) -> list[str]:
    seen = []
    for label, _ in rows:
        if label not in seen:
            seen.append(label)
    return seen


def _length(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _method_table(rows, lengths, cell) -> str:
    """A method x length table of ``cell(row)`` for each (label, length) row, empty where there is none."""
    head = "| method | " + " | ".join(_length(n) for n in lengths) + " |"
    lines = [head, "|---|" + "---:|" * len(lengths)]
    for label in _labels(rows):
        cells = ["" if (label, n) not in rows else cell(rows[(label, n)]) for n in lengths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ppl_cell(r: dict) -> str:
    tail = r.get("ppl_last_quarter")
    quarter = f" ({tail:.1f})" if tail is not None and math.isfinite(tail) else ""
    return f"{r['ppl']:.2f}{quarter}"


def ppl_table(rows, lengths) -> str:
    return _method_table(rows, lengths, _ppl_cell)


def passkey_table(rows, lengths) -> str:
    return _method_table(rows, lengths, lambda r: f"{100 * r['accuracy']:.0f}% ({r['correct']}/{r['trials']})")


REPO = Path(__file__).resolve().parents[3]
DEFAULT_OUT_DIR = REPO / "docs" / "results" / "dca_quality"
DOC_PAGES = (REPO / "docs" / "benchmarks.md", REPO / "README.md")
DEMO_RESULTS = REPO / "docs" / "results" / "demo" / "ppl.json"  # the README's main job, `zebra demo`
EMULATED = "passkey_emulated_c2048.json"
# the README summary: a few rows and columns of the full tables
SUMMARY_TEXT = "_pydecimal.py"
SUMMARY_METHODS = ("none", "dca:temperature=false", "dca:temperature=true", f"yarn:factor=N/{TRAINED}")
SUMMARY_PPL_LENGTHS = (4096, 16384, 32768)
SUMMARY_PASSKEY_LENGTHS = (8192, 16384, 32768)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="zebra experiment dca_quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                    help="results files and figures (default: docs/results/dca_quality, the committed results)")
    ap.add_argument("--parts", nargs="+", default=["ppl", "passkey"], choices=["ppl", "passkey"])
    ap.add_argument("--texts", nargs="+", default=["_pydecimal.py", "turtle.py"],
                    help="standard-library modules (paths relative to the stdlib) or files")
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--passkey-lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--trials", type=int, default=2, help="passkeys per (length, depth)")
    ap.add_argument("--methods", nargs="+", default=["none", "dca", "dca-notemp", "linear", "yarn", "dynamic", "stacked"],
                    choices=["none", "dca", "dca-notemp", "linear", "yarn", "dynamic", "stacked"])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    ap.add_argument("--report-only", action="store_true",
                    help="compute nothing: tables and figures from what --out-dir holds (missing cells stay empty)")
    ap.add_argument("--no-figures", dest="figures", action="store_false", help="draw no figures")
    ap.add_argument("--write-docs", action="store_true",
                    help="write the tables between the GENERATED markers of docs/benchmarks.md and README.md")
    return ap.parse_args(argv)


def _emulated_table(path: Path) -> str:
    """Passkey with DCA emulating a 2048-token context: accuracy per depth, per method."""
    from zebra_llm.eval.results import load_results
    from zebra_llm.eval.retrieval import summarize_retrieval

    rows = summarize_retrieval(load_results(path)["items"])
    depths = [d for d in dict.fromkeys(r["depth"] for r in rows) if d != "all"]
    lengths = sorted({r["length"] for r in rows})
    head = "| method | length | " + " | ".join(f"depth {d:.0%}" for d in depths) + " | all |"
    lines = [head, "|---|---:|" + "---:|" * (len(depths) + 1)]
    for method in dict.fromkeys(r["method"] for r in rows):
        for n in lengths:
            by_depth = {r["depth"]: r for r in rows if r["method"] == method and r["length"] == n}
            cells = [f"{by_depth[d]['correct']}/{by_depth[d]['trials']}" if d in by_depth else "" for d in depths]
            total = by_depth.get("all")
            cells.append("" if total is None else f"{100 * total['accuracy']:.0f}% ({total['correct']}/{total['trials']})")
            lines.append(f"| `{method}` | {_length(n)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _summary_table(ppl_rows, passkey_rows) -> str:
    """The README's few lines: perplexity on one text and passkey accuracy, for a few methods."""
    head = ("| method | " + " | ".join(f"ppl {_length(n)}" for n in SUMMARY_PPL_LENGTHS) + " | "
            + " | ".join(f"passkey {_length(n)}" for n in SUMMARY_PASSKEY_LENGTHS) + " |")
    lines = [head, "|---|" + "---:|" * (len(SUMMARY_PPL_LENGTHS) + len(SUMMARY_PASSKEY_LENGTHS))]
    for label in SUMMARY_METHODS:
        cells = [f"{ppl_rows[(label, n)]['ppl']:.2f}" if (label, n) in ppl_rows else "" for n in SUMMARY_PPL_LENGTHS]
        for n in SUMMARY_PASSKEY_LENGTHS:
            r = passkey_rows.get((label, n))
            cells.append("" if r is None else f"{r['correct']}/{r['trials']}")
        lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_report(args) -> dict[str, str]:
    """Markdown blocks by name (the names of the docs' GENERATED markers), computing missing cells first
    unless ``args.report_only``."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    blocks: dict[str, str] = {}
    ppl_by_text: dict[str, dict] = {}
    passkey_rows: dict = {}
    if "ppl" in args.parts:
        for text in args.texts:
            path = Path(text) if Path(text).is_file() else stdlib / text
            if not path.is_file():
                raise FileNotFoundError(f"text {text} is neither a file nor a standard-library module")
            rows, figure_rows = run_ppl(args, path)
            ppl_by_text[path.name] = rows
            if figure_rows and args.figures:
                from zebra_llm.eval.plots import plot_perplexity

                fig = plot_perplexity(figure_rows, args.out_dir / f"ppl_{path.stem.lstrip('_')}.png",
                                      title=f"SmolLM2-135M, first N tokens of {path.name}",
                                      trained_context=TRAINED)
                print(f"figure: {fig}", file=sys.stderr)
            blocks[f"ppl_{path.stem.lstrip('_')}"] = (
                f"Perplexity, first N tokens of `{path.name}` (last quarter of the positions in brackets):\n\n"
                + ppl_table(rows, args.lengths))
    if "passkey" in args.parts:
        passkey_rows, figure_rows = run_passkey_grid(args)
        if figure_rows and args.figures:
            from zebra_llm.eval.plots import plot_heatmap

            fig = plot_heatmap(figure_rows, args.out_dir / "passkey.png",
                               title="SmolLM2-135M, passkey retrieval")
            print(f"figure: {fig}", file=sys.stderr)
        blocks["passkey"] = (f"Passkey retrieval, {len(args.depths)} depths x {args.trials} keys per length:\n\n"
                             + passkey_table(passkey_rows, args.passkey_lengths))
        if (args.out_dir / EMULATED).is_file():
            blocks["passkey_emulated"] = _emulated_table(args.out_dir / EMULATED)
    if SUMMARY_TEXT in ppl_by_text and passkey_rows:
        blocks["summary"] = _summary_table(ppl_by_text[SUMMARY_TEXT], passkey_rows)
    if DEMO_RESULTS.is_file():  # written by `zebra demo --out-dir docs/results/demo`, not computed here
        from zebra_llm.eval.report import report

        blocks["demo"] = report([DEMO_RESULTS], figures=False)[0].strip()
    return blocks


def _marker(kind: str, name: str) -> str:
    if kind == "begin":
        return f"<!-- BEGIN GENERATED by benchmarks/dca_quality.py --write-docs: {name} -->"
    return f"<!-- END GENERATED: {name} -->"


def fill_blocks(text: str, blocks: dict[str, str], *, page: str = "page") -> str:
    """``text`` with each ``dca_quality`` GENERATED block replaced by ``blocks[name]``.

    A marker for a block this report does not produce, or a BEGIN without its END, is a ValueError
    naming the page and the block: a table silently left stale is what the markers exist to prevent.
    """
    import re

    begin = re.compile(r"<!-- BEGIN GENERATED by benchmarks/dca_quality\.py --write-docs: (\w+) -->")
    out, pos = [], 0
    for m in begin.finditer(text):
        if m.start() < pos:
            raise ValueError(f"{page}: GENERATED block {m.group(1)} starts inside another block")
        name = m.group(1)
        end = text.find(_marker("end", name), m.end())
        if end < 0:
            raise ValueError(f"{page}: GENERATED block {name} has no end marker {_marker('end', name)!r}")
        if name not in blocks:
            raise ValueError(f"{page}: GENERATED block {name} is not produced by this report "
                             f"(it produces: {', '.join(sorted(blocks)) or 'nothing: no results found'})")
        out.append(text[pos:m.end()])
        out.append("\n" + blocks[name] + "\n")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def generated_names(text: str) -> list[str]:
    """Names of the dca_quality GENERATED blocks in a page."""
    import re

    return re.findall(r"<!-- BEGIN GENERATED by benchmarks/dca_quality\.py --write-docs: (\w+) -->", text)


def main(argv=None):
    import platform

    args = parse_args(argv)
    if args.write_docs and args.out_dir.resolve() != DEFAULT_OUT_DIR:
        # the docs show the committed results; tables of another run would silently replace them
        print(f"error: --write-docs shows the committed results only: leave --out-dir at "
              f"{DEFAULT_OUT_DIR.relative_to(REPO)}, got {args.out_dir}", file=sys.stderr)
        raise SystemExit(2)
    if not args.report_only:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    blocks = build_report(args)

    import torch

    device = args.device or "cpu"
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({platform.machine()})"
    print(f"\nDevice: {name}, {torch.get_num_threads()} threads, {args.dtype}, torch {torch.__version__}\n")
    print("\n\n".join(blocks.values()))
    if args.write_docs:
        from zebra_llm.io import write_text_atomic

        for page in DOC_PAGES:
            old = page.read_text(encoding="utf-8")
            new = fill_blocks(old, blocks, page=str(page.relative_to(REPO)))
            if new != old:
                write_text_atomic(page, new)
                print(f"updated {page.relative_to(REPO)}", file=sys.stderr)

