"""``zebra demo``: the README's main job, a short method comparison on the embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import NO_PROGRESS, quiet_transformers


def demo(
    out_dir: Path = typer.Option(Path("results/demo"), "--out-dir", help="Where the results, table and figure go."),
    model: str = typer.Option("smollm2", "--model"),
    method: Optional[list[str]] = typer.Option(None, "--method", "-m", help="Methods (default: none, "
                                               "linear:factor=2, dynamic:factor=2, yarn:factor=2, dca)."),
    lengths: Optional[str] = typer.Option(None, "--lengths", help="Lengths (default: 2k,12k)."),
    no_progress: bool = NO_PROGRESS,
) -> None:
    """Perplexity of SmolLM2-135M inside and past its trained context, for none, linear, dynamic, yarn and
    DCA side by side (a few minutes on a CPU; docs/cli.md)."""
    from zebra_llm.eval.demo import DEMO_LENGTHS, DEMO_METHODS, run_demo
    from zebra_llm.io import write_text_atomic

    from ._common import parse_lengths

    quiet_transformers()
    text, figures, output = run_demo(
        out_dir, model=model, methods=method or DEMO_METHODS,
        lengths=parse_lengths(lengths) if lengths else DEMO_LENGTHS, progress=not no_progress,
    )
    table = write_text_atomic(out_dir / "table.md", text)
    typer.echo(text)
    typer.echo(f"results: {output}")
    typer.echo(f"table: {table}")
    for f in figures:
        typer.echo(f"figure: {f}")
