"""``zebra dca``: inspect Dual Chunk Attention's positions and the settings it takes for a model.

Evaluating or generating with DCA goes through the evaluation commands with the ``dca`` method
(``zebra_llm.eval``); in Python, ``zebra_llm.apply_dca(model)``.
"""

from __future__ import annotations

import json

import typer

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
    temperature: bool = typer.Option(True, help="YaRN-style temperature beyond c"),
) -> None:
    """The settings ``apply_dca`` would use for MODEL (reads its config only), also in vLLM's form."""
    from zebra_llm.dca import resolve_config
    from zebra_llm.loading import load_config

    config = load_config(model)
    dca = resolve_config(config, pretraining_length=pretraining_length, chunk_size=chunk_size, temperature=temperature)
    typer.echo(json.dumps({**dca.to_dict(), "local_window": dca.local_window, "vllm": dca.to_vllm()}, indent=2))
