"""``zebra report``: Markdown tables and figures from saved results files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    results: list[Path] = typer.Argument(..., help="Results JSON files (from zebra eval / bench / demo / "
                                         "experiment)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to draw figures (default: next to "
                                           "the results)."),
    no_figure: bool = typer.Option(False, "--no-figure", help="Only print the tables."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the Markdown to this file."),
) -> None:
    """Redraw figures and print Markdown tables from saved results (several files of a kind are merged)."""
    from zebra_llm.eval.report import report as build
    from zebra_llm.io import write_text_atomic

    text, figures = build(results, out_dir=out_dir, figures=not no_figure)
    typer.echo(text)
    if markdown is not None:
        write_text_atomic(markdown, text)
        typer.echo(f"markdown: {markdown}")
    for f in figures:
        typer.echo(f"figure: {f}")
