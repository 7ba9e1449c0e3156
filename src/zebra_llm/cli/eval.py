"""``zebra eval ppl|passkey|needle|ruler``: thin wrappers over ``zebra_llm.eval``.

Every command writes its results JSON (resumable: finished items are kept and
skipped when the same command runs again), draws its figure next to it, and
prints the Markdown table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Perplexity, passkey and needle-in-a-haystack evaluations.", no_args_is_help=True)

from ._common import (  # noqa: F401  (the options and helpers every eval-like command shares; kept importable here)
    ALLOW_MISSING_WEIGHTS,
    BATCH,
    DEVICE,
    DTYPE,
    ENCODING,
    METHOD,
    MODEL,
    NO_FIGURE,
    NO_PROGRESS,
    OUTPUT_FLAGS,
    OVERWRITE,
    finish,
    parse_floats,
    parse_lengths,
    prepare_output,
    quiet_transformers,
    run_to_output,
    with_options,
)

# ------------------------------------------------------------------ commands


@app.command("ppl")
@with_options(OUTPUT_FLAGS, before="allow_missing_weights", into="after")
def ppl(
    model: str = MODEL,
    method: Optional[list[str]] = METHOD,
    data: Optional[str] = typer.Option(None, "--data", help="stdlib (default), a .txt/.jsonl/.parquet file, a "
                                       "directory of text files, or a datasets name (e.g. pg19)."),
    field: str = typer.Option("text", "--field", help="Text field of .jsonl/.parquet/datasets records."),
    split: str = typer.Option("train", "--split", help="Split of a datasets name."),
    doc_limit: Optional[int] = typer.Option(None, "--doc-limit", help="Read at most this many documents."),
    concat: bool = typer.Option(False, "--concat", help="Join all documents into one token stream."),
    mode: str = typer.Option("fixed", "--mode", help="fixed (first N tokens of each long-enough document), "
                             "windows (N-token windows every --stride tokens) or buckets (documents of x/2+1..x)."),
    lengths: str = typer.Option("4k", "--lengths", help="Comma-separated lengths, e.g. 4k,8k,16k,32k."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Window stride for --mode windows, at most the "
                                  "shortest length (each token is scored once)."),
    buckets: Optional[str] = typer.Option(None, "--buckets", help="Bucket upper bounds for --mode buckets."),
    max_docs: Optional[int] = typer.Option(None, "--max-docs", help="At most this many documents (or windows) "
                                           "per length."),
    all_docs: bool = typer.Option(False, "--all-docs", help="Fixed mode: at each length use every document "
                                  "long enough for it (default: only those long enough for the longest length)."),
    loss_chunk: int = typer.Option(1024, "--loss-chunk", help="Positions per LM-head chunk."),
    encoding: str = ENCODING,
    batch_size: int = BATCH,
    dtype: str = DTYPE,
    device: Optional[str] = DEVICE,
    output: Path = typer.Option(Path("results/ppl.json"), "--output", "-o", help="Results JSON (resumed if present)."),
    allow_missing_weights: bool = ALLOW_MISSING_WEIGHTS,
    after: dict = None,
) -> None:
    """Perplexity by length for each method, side by side."""
    from zebra_llm.eval import PerplexityConfig, run_perplexity

    quiet_transformers()
    config = PerplexityConfig(
        model=model, methods=method or ["none"], data=data, field=field, split=split, doc_limit=doc_limit,
        concat=concat, mode=mode, lengths=parse_lengths(lengths) if mode != "buckets" else [],
        stride=stride, buckets=parse_lengths(buckets, "buckets") if buckets else [], max_docs=max_docs,
        same_docs=not all_docs,
        batch_size=batch_size, loss_chunk=loss_chunk, dtype=dtype, device=device, encoding=encoding,
        allow_missing_weights=allow_missing_weights,
    )
    run_to_output(run_perplexity, config, output, after, device)


# The flags passkey and needle share (a RetrievalConfig each), written once: (parameter, type, option).
_RETRIEVAL_OPTIONS = (
    ("model", str, MODEL),
    ("method", Optional[list[str]], METHOD),
    ("lengths", str, typer.Option("4k", "--lengths", help="Comma-separated prompt lengths, e.g. 4k,8k,16k.")),
    ("depths", str, typer.Option("0,0.25,0.5,0.75,1", "--depths", help="Comma-separated depths in [0, 1] "
                                 "(fraction of the filler before the needle).")),
    ("trials", int, typer.Option(2, "--trials", help="Trials (different keys) per length and depth.")),
    ("seed", int, typer.Option(0, "--seed", help="Seed of the keys (the same for every method).")),
    ("max_new_tokens", Optional[int], typer.Option(None, "--max-new-tokens", help="Tokens to decode (default: the "
                                                   "answer's length + 4).")),
    ("no_prefix_cache", bool, typer.Option(False, "--no-prefix-cache", help="Prefill every trial in full instead "
                                           "of reusing the shared prefix's KV cache.")),
    ("batch_size", int, BATCH),
    ("dtype", str, DTYPE),
    ("device", Optional[str], DEVICE),
)
_retrieval_options = with_options(_RETRIEVAL_OPTIONS, before="output", into="shared")
_output_options = with_options(OUTPUT_FLAGS, before="shared", into="after")


def _run_retrieval(run, shared: dict, output: Path, after: dict, **task) -> None:
    """Build the RetrievalConfig from the shared flags, check the output, run ``run`` and report."""
    from zebra_llm.eval.retrieval import RetrievalConfig

    quiet_transformers()
    config = RetrievalConfig(
        model=shared["model"], methods=shared["method"] or ["none"], lengths=parse_lengths(shared["lengths"]),
        depths=parse_floats(shared["depths"], "depths"), trials=shared["trials"], seed=shared["seed"],
        batch_size=shared["batch_size"], max_new_tokens=shared["max_new_tokens"],
        reuse_prefix=not shared["no_prefix_cache"], dtype=shared["dtype"], device=shared["device"],
    )
    run_to_output(run, config, output, after, shared["device"], **task)


@app.command("passkey")
@_retrieval_options
@_output_options
def passkey(
    digits: int = typer.Option(5, "--digits", help="Digits of the pass key."),
    output: Path = typer.Option(Path("results/passkey.json"), "--output", "-o"),
    shared: dict = None,
    after: dict = None,
) -> None:
    """Passkey retrieval accuracy (greedy, exact match), lengths x depths x trials, with a heatmap."""
    from zebra_llm.eval.passkey import run_passkey

    _run_retrieval(run_passkey, shared, output, after, digits=digits)


@app.command("needle")
@_retrieval_options
@_output_options
def needle(
    data: Optional[str] = typer.Option(None, "--data", help="Haystack corpus: stdlib (default), a file, a "
                                       "directory or a datasets name."),
    field: str = typer.Option("text", "--field"),
    split: str = typer.Option("train", "--split"),
    encoding: str = ENCODING,
    digits: int = typer.Option(7, "--digits", help="Digits of the magic number."),
    output: Path = typer.Option(Path("results/needle.json"), "--output", "-o"),
    shared: dict = None,
    after: dict = None,
) -> None:
    """Needle in a haystack over a real corpus, lengths x depths x trials, with a heatmap."""
    from zebra_llm.eval.needle import run_needle

    _run_retrieval(run_needle, shared, output, after, data=data, field=field, split=split, encoding=encoding,
                   digits=digits)


@app.command("ruler")
@with_options(OUTPUT_FLAGS, before=None, into="after")
def ruler(
    model: str = MODEL,
    method: Optional[list[str]] = METHOD,
    tasks: str = typer.Option("all", "--tasks", help="Comma-separated RULER tasks (all: niah_single_1, "
                              "niah_single_2, niah_single_3, niah_multikey_1, niah_multivalue, niah_multiquery, "
                              "vt, cwe)."),
    data: Optional[str] = typer.Option(None, "--data", help="Corpus of the real-text haystacks and cwe words: "
                                       "stdlib (default), a file, a directory or a datasets name."),
    encoding: str = ENCODING,
    lengths: str = typer.Option("4k", "--lengths", help="Comma-separated prompt lengths."),
    trials: int = typer.Option(2, "--trials", help="Prompts per task and length."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated prompts."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default: the answer's length + 8."),
    dtype: str = DTYPE,
    device: Optional[str] = DEVICE,
    output: Path = typer.Option(Path("results/ruler.json"), "--output", "-o"),
    after: dict = None,
) -> None:
    """RULER-style synthetic tasks generated offline (needles, variable tracking, common words), scored as
    RULER does (fraction of the expected strings in the answer); table and methods x lengths heatmap."""
    from zebra_llm.eval.ruler import TASKS, RulerConfig, plot_ruler, ruler_table, run_ruler

    quiet_transformers()
    names = list(TASKS) if tasks.strip() == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    config = RulerConfig(model=model, methods=method or ["none"], tasks=names, lengths=parse_lengths(lengths),
                         trials=trials, seed=seed, max_new_tokens=max_new_tokens, data=data, encoding=encoding,
                         dtype=dtype, device=device)
    output = prepare_output(output, after["overwrite"])
    result = run_ruler(config, output, progress=not after["no_progress"])
    typer.echo(ruler_table(result["summary"]))
    typer.echo(f"results: {output}")
    if not after["no_figure"]:
        typer.echo(f"figure: {plot_ruler(result['summary'], output.with_suffix('.png'))}")
