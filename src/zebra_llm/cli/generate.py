"""``zebra generate``: prompt in, streamed text out, with any method applied."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import ALLOW_MISSING_WEIGHTS, DEVICE, DTYPE, MODEL, quiet_transformers


def generate(
    prompt: Optional[str] = typer.Argument(None, help="The prompt (or use --file)."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read the prompt from this file."),
    model: str = MODEL,
    method: str = typer.Option("none", "--method", "-m", help="Method applied on load (see zebra eval ppl --help)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 decodes greedily."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    dtype: str = DTYPE,
    device: Optional[str] = DEVICE,
    allow_missing_weights: bool = ALLOW_MISSING_WEIGHTS,
) -> None:
    """Generate text from a prompt, streamed to stdout as it is produced."""
    from zebra_llm.eval.generate import GenerationSettings, stream_generate
    from zebra_llm.eval.loaded import load_with_method

    if (prompt is None) == (file is None):
        raise ValueError("give a prompt or --file, not both and not neither")
    if file is not None:
        if not file.is_file():
            raise FileNotFoundError(f"--file {file} does not exist")
        prompt = file.read_text(encoding="utf-8")
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                  chat=chat)
    quiet_transformers()
    loaded = load_with_method(model, method, dtype=dtype, device=device, strict=not allow_missing_weights)
    from zebra_llm.eval.generate import encode_prompt

    loaded.check_length(encode_prompt(loaded.tokenizer, prompt, chat=chat).shape[1] + max_new_tokens)
    for piece in stream_generate(loaded.model, loaded.tokenizer, prompt, settings):
        typer.echo(piece, nl=False)
    typer.echo()
