"""The ``zebra`` command: a thin layer over the library's functions.

Each subcommand group lives in its own module and is mounted here. Guide: docs/cli.md.
"""

from __future__ import annotations

import sys

import typer

from . import bench as _bench
from . import dca as _dca
from . import demo as _demo
from . import eval as _eval
from . import generate as _generate
from . import lm_eval as _lm_eval
from . import report as _report
from ._common import run_guarded
from .model import app as _model_app
from .train import app as _train_app

app = typer.Typer(
    name="zebra",
    help="Long context for language models: Zebra attention and Dual Chunk Attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.add_typer(_model_app)  # convert, export, presets, flops
app.add_typer(_dca.app, name="dca")
app.add_typer(_eval.app, name="eval")
app.add_typer(_train_app, name="train")
app.command("bench")(_bench.bench)
app.command("generate")(_generate.generate)
app.command("report")(_report.report)
app.command("demo")(_demo.demo)
app.command("serve")(__import__("zebra_llm.cli.serve", fromlist=["serve"]).serve)
app.add_typer(__import__("zebra_llm.cli.experiment", fromlist=["app"]).app, name="experiment")
app.command("lm-eval", context_settings=_lm_eval.SETTINGS, add_help_option=False)(_lm_eval.lm_eval)


@app.callback()
def _root() -> None:
    """Long context for language models: Zebra attention and Dual Chunk Attention."""


@app.command()
def info() -> None:
    """Print versions, devices and the attention backends available here."""
    import platform

    import torch
    import transformers

    import zebra_llm
    from zebra_llm.attention import backends

    typer.echo(f"zebra-llm {zebra_llm.__version__}")
    typer.echo(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    typer.echo(f"cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    typer.echo(f"attention backend (default): {backends.default_backend()}")
    typer.echo(f"flash-attn: {'yes' if backends.flash_attn_available() else 'no'}")
    typer.echo(f"flex attention: {'yes' if backends.flex_available() else 'no'}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``zebra`` console script."""
    sys.exit(run_guarded(app, argv))


__all__ = ["app", "main"]
