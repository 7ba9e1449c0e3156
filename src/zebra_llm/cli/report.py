"""``zebra report``: Markdown tables and figures from saved results files.

The command takes results of ``zebra eval`` / ``bench`` / ``demo`` (``zebra_llm.eval.report``) and of
``zebra experiment`` (``zebra_llm.experiments.tables``) alike; :func:`build_report` sends each file to its
own report, so the evaluation layer never reads an experiment's results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import typer


def is_experiment_results(path: str | os.PathLike) -> bool:
    """A results file of ``zebra experiment`` (a top-level ``experiment`` and ``rows``), not of ``zebra eval``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False  # the evaluation report says what is wrong with it
    return isinstance(data, dict) and "experiment" in data and isinstance(data.get("rows"), list)


def build_report(paths: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike | None = None,
                 figures: bool = True) -> tuple[str, list[Path]]:
    """Markdown and figures of ``zebra report``: each experiment's results file its own section (in the
    order given), then one section per kind of the evaluation results (several files of a kind merged).

    Figures go to ``out_dir`` (default: next to the results).
    """
    from zebra_llm.eval.report import report as eval_report

    experiments = [p for p in paths if is_experiment_results(p)]
    evaluations = [p for p in paths if p not in experiments]
    sections, drawn = [], []
    if experiments:
        from zebra_llm.experiments.cells import load_results as load_experiment
        from zebra_llm.experiments.tables import experiment_report
    for p in experiments:
        target = (Path(out_dir) if out_dir is not None else Path(p).parent) if figures else None
        text, figs = experiment_report(load_experiment(p), out_dir=target)
        sections.append(text.rstrip("\n"))
        drawn += figs
    if evaluations or not experiments:  # no file at all: the evaluation report refuses the empty list
        text, figs = eval_report(evaluations, out_dir=out_dir, figures=figures)
        sections.append(text[:-1])  # it ends with one newline, added back below
        drawn += figs
    return "\n\n".join(sections) + "\n", drawn


def report(
    results: list[Path] = typer.Argument(..., help="Results JSON files (from zebra eval / bench / demo / "
                                         "experiment)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to draw figures (default: next to "
                                           "the results)."),
    no_figure: bool = typer.Option(False, "--no-figure", help="Only print the tables."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the Markdown to this file."),
) -> None:
    """Redraw figures and print Markdown tables from saved results (several files of a kind are merged)."""
    from zebra_llm.io import write_text_atomic

    text, figures = build_report(results, out_dir=out_dir, figures=not no_figure)
    typer.echo(text)
    if markdown is not None:
        write_text_atomic(markdown, text)
        typer.echo(f"markdown: {markdown}")
    for f in figures:
        typer.echo(f"figure: {f}")
