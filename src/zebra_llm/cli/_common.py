"""Shared CLI plumbing: bad input becomes a one-line message and exit code 2,
never a traceback (set ``ZEBRA_DEBUG=1`` to see the traceback)."""

from __future__ import annotations

import functools
import inspect
import os
import re
from pathlib import Path

import typer

from zebra_llm.eval.methods import methods_help

# Errors that mean "the user asked for something wrong or missing".
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def run_guarded(app: typer.Typer, argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as e:  # click's own exit, usage errors included
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except USER_ERRORS as e:
        if os.environ.get("ZEBRA_DEBUG"):
            raise
        text = str(e).strip()
        msg = text.splitlines()[0] if text else type(e).__name__
        typer.echo(f"error: {msg}", err=True)
        return 2
    return 0


def fail(message: str) -> None:
    """Stop a command with a one-line error."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


# ------------------------------------------------------------------ options shared by the eval-like commands

MODEL = typer.Option("smollm2", "--model", help="smollm2 (embedded), a model directory, a .gguf file or a hub name.")
METHOD = typer.Option(
    None, "--method", "-m",
    help="Method applied on load, repeatable, as name or name:key=value,... (e.g. yarn:factor=4, "
         "dca:preset=chunkllama); every method and its options: " + methods_help() + " (default: none).",
)
DTYPE = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16.")
DEVICE = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cpu).")
BATCH = typer.Option(1, "--batch-size", help="Sequences per forward.")
OVERWRITE = typer.Option(False, "--overwrite", help="Start the results file afresh instead of resuming it.")
NO_PROGRESS = typer.Option(False, "--no-progress", help="No progress bars.")
NO_FIGURE = typer.Option(False, "--no-figure", help="Do not draw the figure.")
ALLOW_MISSING_WEIGHTS = typer.Option(
    False, "--allow-missing-weights",
    help="Load the model even if its files lack weights it has, hold weights it has no place for or weights of "
         "another shape (those are then initialised at random or ignored; by default this is an error).",
)
ENCODING = typer.Option("utf-8", "--encoding", help="Encoding of local text files (strict: a byte that does not "
                        "decode is an error naming the file and offset), e.g. latin-1.")
# The flags after --output of every command that writes a results file and draws its figure, as
# ``with_options`` takes them (the command gets their values as the dict ``after``).
OUTPUT_FLAGS = (("overwrite", bool, OVERWRITE), ("no_progress", bool, NO_PROGRESS), ("no_figure", bool, NO_FIGURE))


def parse_lengths(text: str, what: str = "lengths") -> list[int]:
    """``"4k,8k,16384"`` -> ``[4096, 8192, 16384]``."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(k?)", part)
        if not m:
            raise ValueError(f"{what}: expected numbers like 4096 or 4k separated by commas, got {part!r}")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if not out:
        raise ValueError(f"{what}: give at least one value")
    return out


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what}: expected numbers separated by commas, got {text!r}") from None


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()


def finish(data: dict, output: Path, *, figure: bool) -> None:
    """Print where the results went and their table; draw the figure."""
    from zebra_llm.eval.report import report

    text, figures = report([output], figures=figure)
    typer.echo(text)
    typer.echo(f"results: {output}")
    for f in figures:
        typer.echo(f"figure: {f}")


def run_to_output(run, config, output: Path, after: dict, device: str | None = None, **task) -> None:
    """What an eval-like command does with its config: check ``output`` (``after``: the values of
    :data:`OUTPUT_FLAGS`), ``run(config, output, progress=..., **task)``, then print and draw (``finish``)."""
    output = prepare_output(output, after["overwrite"], device)
    data = run(config, output, progress=not after["no_progress"], **task)
    finish(data, output, figure=not after["no_figure"])


def prepare_output(output: Path, overwrite: bool, device: str | None = None) -> Path:
    """Checks before any work: the results path, and a device this torch can use."""
    from zebra_llm.loading import check_device

    check_device(device)
    if output.exists() and output.is_dir():
        raise IsADirectoryError(f"--output {output} is a directory; give a .json file path")
    if output.exists() and not output.is_file():
        raise ValueError(f"--output {output} is not a regular file; give a .json file path")
    if overwrite and output.exists():
        output.unlink()
    return output


# ------------------------------------------------------------------ options shared by several commands


def with_options(options, *, before: str, into: str):
    """A decorator: add ``options`` (``(name, type, typer.Option)`` triples) to a command's parameters,
    placed before its parameter ``before`` (None: after the last); the command gets their values as a dict in its parameter
    ``into`` (typer reads a command's flags from its signature, so a flag shared by several commands
    is otherwise written out in each of them)."""

    def decorate(command):
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != into]
        at = len(own) if before is None else [p.name for p in own].index(before)
        added = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=tp)
                 for name, tp, option in options]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name, _, _ in options}
            return command(**kwargs, **{into: values})

        wrapper.__signature__ = signature.replace(parameters=own[:at] + added + own[at:])
        wrapper.__annotations__ = {k: v for k, v in command.__annotations__.items() if k != into}
        wrapper.__annotations__.update({name: tp for name, tp, _ in options})
        return wrapper

    return decorate


def layout_flags(section: str | None = None, *, default: str | None = None) -> list[tuple[str, type, object]]:
    """One flag per Zebra layer setting, generated from ``ZebraLayout``'s typed fields (name, type, help),
    as ``with_options`` takes them. Without ``section`` each flag has the layout's default (conversion);
    with it, None (not given: the config file's value stands) and its help names the config field
    ``section.<name>`` and the default (``default``, e.g. "the preset's", or else the layout's)."""
    import dataclasses

    from zebra_llm.modeling.layout import DEFAULT_LAYOUT, SETTING_TYPES, ZebraLayout

    flags = []
    for f in dataclasses.fields(ZebraLayout):
        value = getattr(DEFAULT_LAYOUT, f.name)
        shown = f.metadata.get("none") if value is None else value
        if section is None:  # typer shows a default that is not None itself
            option = typer.Option(value, help=f.metadata["help"] + (f" (default: {shown})" if value is None else ""))
        else:
            option = typer.Option(None, help=f"{f.metadata['help']} ({section}.{f.name}; default {default or shown})")
        flags.append((f.name, SETTING_TYPES[f.name], option))
    return flags
