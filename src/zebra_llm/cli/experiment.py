"""``zebra experiment NAME``: one of the Zebra paper's experiments at small scale, the associative-recall grid,
or one of the research grids of the extension methods (the extension contest, DCA's quality).

Resumable: every finished cell is a JSON file under ``<out>/cells`` and is never
recomputed; rerunning with all cells present recomputes nothing and reprints the
tables (``--report-only`` never computes anything). ``contest`` and ``dca_quality``
take their own options (``zebra experiment contest --help``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from zebra_llm.experiments import EXPERIMENTS, OWN_OPTIONS

app = typer.Typer(name="experiment", no_args_is_help=True, add_completion=False,
                  help="Run (or resume) an experiment, then print its tables and draw its figures.")

HELP = {
    "zebra_strategies": "The four attention strategies pretrained at three training lengths (Figures 2-4).",
    "lcat_smollm2": "Long context adaptation training of SmolLM2-135M converted to Zebra.",
    "lit": "Long instruction tuning on synthetic long-document QA records.",
    "recall": "Multi-query associative recall trained from scratch for every attention layout.",
    "lcat_control": "LCAT from a model pretrained here, beside the same model kept all-global (its control).",
    "contest": "The extension contest: every extension method on the same prompts (its own options: --help).",
    "dca_quality": "Dual Chunk Attention's perplexity and passkey on SmolLM2-135M (its own options: --help).",
}
# every argument goes to the experiment's own parser, --help included
RAW = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _grid_command(name: str) -> Callable[..., None]:
    """The command of experiment ``name`` (a typed config with ``--set`` overrides)."""

    def command(
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
        from zebra_llm.experiments.runner import run_experiment

        text, figures = run_experiment(
            name, config=config, out=out, runs_dir=runs_dir, overrides=set_ or [], only=only or None,
            report_only=report_only, figures=not no_figure,
        )
        typer.echo(text)
        for f in figures:
            typer.echo(f"figure: {f}")

    command.__doc__ = HELP.get(name, f"Run (or resume) the experiment {name}.")
    return command


def _own_options_command(name: str) -> Callable[[typer.Context], None]:
    """The command of a grid with its own command line: every argument goes to its ``main``."""

    def command(ctx: typer.Context) -> None:
        import importlib

        code = importlib.import_module(f"zebra_llm.experiments.{name}").main(list(ctx.args))
        if code:
            raise typer.Exit(code)

    command.__doc__ = HELP.get(name, f"Run (or resume) the experiment {name}.")
    return command


for _name in EXPERIMENTS:
    app.command(_name)(_grid_command(_name))
for _name in OWN_OPTIONS:
    app.command(_name, context_settings=RAW, add_help_option=False)(_own_options_command(_name))
