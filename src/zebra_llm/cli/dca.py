"""``zebra dca``: inspect Dual Chunk Attention's positions and the settings it takes for a model.

Evaluating or generating with DCA goes through the evaluation commands with the ``dca`` method
(``zebra_llm.eval``); in Python, ``zebra_llm.apply_dca(model)``.
"""

from __future__ import annotations

import json

import typer

from zebra_llm.extensions.config import METHODS

# The matrix is printed: seq_len^2 cells (and allocated as int64). Beyond this it is neither
# readable nor cheap (100000 would need 80 GB).
MAX_PRINTED_SEQ_LEN = 1024

app = typer.Typer(
    name="dca",
    help="Dual Chunk Attention: relative positions and per-model settings.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def positions(
    seq_len: int = typer.Argument(..., help="sequence length"),
    chunk_size: int = typer.Option(..., help="s, the chunk length"),
    pretraining_length: int = typer.Option(..., help="c, the model's trained context"),
) -> None:
    """Print the relative position each query sees for each key (the paper's Figure 2; '.' above the diagonal)."""
    from zebra_llm.dca import relative_positions

    if not 1 <= seq_len <= MAX_PRINTED_SEQ_LEN:
        raise ValueError(
            f"seq_len must be in [1, {MAX_PRINTED_SEQ_LEN}] (the printed matrix has seq_len^2 cells), got {seq_len}"
        )
    matrix = relative_positions(seq_len, chunk_size=chunk_size, pretraining_length=pretraining_length)
    width = len(str(pretraining_length - 1))
    for i, row in enumerate(matrix.tolist()):
        cells = [str(v).rjust(width) if v >= 0 else ".".rjust(width) for v in row]
        typer.echo(f"{str(i).rjust(len(str(seq_len - 1)))}: " + " ".join(cells))


@app.command()
def settings(
    model: str = typer.Argument("smollm2", help="smollm2, a model directory, a .gguf file or a hub name"),
    pretraining_length: int = typer.Option(None, help="override c"),
    chunk_size: int = typer.Option(None, help="override s"),
    temperature: bool = typer.Option(
        None, "--temperature/--no-temperature",
        help="YaRN-style temperature beyond c (default off; on from a vLLM dual_chunk_attention_config)",
    ),
    preset: str = typer.Option(None, help="chunkllama: ChunkLlama's defaults (largest position 3c/4, window c/8)"),
) -> None:
    """The settings ``apply_dca`` would use for MODEL (reads its config only), also in vLLM's form."""
    from zebra_llm.dca import resolve_config
    from zebra_llm.loading import load_config

    config = load_config(model)
    dca = resolve_config(config, pretraining_length=pretraining_length, chunk_size=chunk_size, temperature=temperature,
                         preset=preset)
    typer.echo(json.dumps({**dca.to_dict(), "local_window": dca.local_window, "vllm": dca.to_vllm()}, indent=2))


RULE_MAX_LEN = 512  # the matrix is printed: beyond this it is unreadable (and seq_len^2 entries)


@app.command()
def rule(
    method: str = typer.Argument(..., help=", ".join(METHODS)),
    seq_len: int = typer.Argument(..., help=f"sequence length (1..{RULE_MAX_LEN})"),
    trained_length: int | None = typer.Option(
        None, help="the model's trained context (gives the default settings; not needed when the settings "
        "give the geometry in full)"),
    setting: list[str] = typer.Option([], "--set", "-s", help="a method setting as key=value (repeatable)"),
) -> None:
    """Print any extension method's relative positions (zebra_llm.extensions.relative_positions)."""
    from zebra_llm.extensions import relative_positions

    if not 1 <= seq_len <= RULE_MAX_LEN:
        raise ValueError(f"seq_len must be in 1..{RULE_MAX_LEN}, got {seq_len}")
    settings = {}
    for item in setting:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set takes key=value, got {item!r}")
        settings[key.strip()] = _setting_value(raw.strip())
    if trained_length is not None:
        key = "pretraining_length" if method == "dca" and "preset" not in settings else "trained_length"
        settings.setdefault(key, trained_length)
    matrix = relative_positions(method, seq_len, **settings)
    cells = [[("." if v < 0 else (f"{v:g}" if isinstance(v, float) else str(v))) for v in row]
             for row in matrix.tolist()]
    width = max(len(c) for row in cells for c in row)
    for i, row in enumerate(cells):
        typer.echo(f"{str(i).rjust(len(str(seq_len - 1)))}: " + " ".join(c.rjust(width) for c in row))


def _setting_value(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw
