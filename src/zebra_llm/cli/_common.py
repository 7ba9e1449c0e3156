"""Shared CLI plumbing: bad input becomes a one-line message and exit code 2,
never a traceback (set ``ZEBRA_DEBUG=1`` to see the traceback)."""

from __future__ import annotations

import os

import typer

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
