"""``zebra bench``: efficiency per method and length (thin wrapper over ``zebra_llm.eval.efficiency``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

# The shared options are imported by name (as in cli/eval.py): the list shows what this command uses.
from ._common import (
    BATCH,
    DEVICE,
    DTYPE,
    METHOD,
    MODEL,
    OUTPUT_FLAGS,
    parse_lengths,
    quiet_transformers,
    run_to_output,
    with_options,
)


@with_options(OUTPUT_FLAGS, before=None, into="after")
def bench(
    model: str = MODEL,
    method: Optional[list[str]] = METHOD,
    lengths: str = typer.Option("1k,4k", "--lengths", help="Comma-separated prefill lengths."),
    decode_tokens: int = typer.Option(16, "--decode-tokens", help="Tokens decoded after the prefill."),
    repeats: int = typer.Option(1, "--repeats", help="Prefills timed per case (the median is kept)."),
    in_process: bool = typer.Option(False, "--in-process", help="Measure every case in this process instead of "
                                    "a fresh one (faster; peak memory less exact)."),
    batch_size: int = BATCH,
    dtype: str = DTYPE,
    device: Optional[str] = DEVICE,
    output: Path = typer.Option(Path("results/bench.json"), "--output", "-o"),
    after: dict = None,
) -> None:
    """FLOPs, prefill time, decode tokens/s, peak memory and KV-cache bytes per method and length,
    with ratios to the unmodified model measured in the same run."""
    from zebra_llm.eval.efficiency import BenchConfig, run_bench

    quiet_transformers()
    config = BenchConfig(model=model, methods=method or ["none"], lengths=parse_lengths(lengths),
                         decode_tokens=decode_tokens, repeats=repeats, batch_size=batch_size,
                         isolate=not in_process, dtype=dtype, device=device)
    run_to_output(run_bench, config, output, after, device)
