"""``zebra experiment NAME``: one of the Zebra paper's experiments at small scale, or the associative-recall grid.

Resumable: every finished cell is a JSON file under ``<out>/cells`` and is never
recomputed; rerunning with all cells present recomputes nothing and reprints the
tables (``--report-only`` never computes anything).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def experiment(
    name: str = typer.Argument(..., help="zebra_strategies, lcat_smollm2, lit or recall."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON config (default: "
                                          "experiments/configs/<name>_cpu.yaml when present, else built-in)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results directory (default docs/results/<name>)."),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="Checkpoints and logs (default runs/<name>)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override KEY=VALUE (repeatable)."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only these cells (repeatable)."),
    report_only: bool = typer.Option(False, "--report-only", help="Only print tables and draw figures from the "
                                     "saved results."),
    no_figure: bool = typer.Option(False, "--no-figure", help="Do not draw figures."),
) -> None:
    """Run (or resume) an experiment, then print its tables and draw its figures."""
    from zebra_llm.experiments.runner import run_experiment

    text, figures = run_experiment(
        name, config=config, out=out, runs_dir=runs_dir, overrides=set_ or [], only=only or None,
        report_only=report_only, figures=not no_figure,
    )
    typer.echo(text)
    for f in figures:
        typer.echo(f"figure: {f}")
