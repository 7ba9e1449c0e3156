"""``zebra convert``, ``zebra export``, ``zebra presets``, ``zebra flops``: thin wrappers over
``zebra_llm.modeling`` and ``zebra_llm.flops``."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import layout_flags, with_options

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

ALLOW_MISSING_HELP = ("load the source even if its files lack weights the model has, hold weights it has no place "
                      "for, or hold weights of another shape (those are then initialised at random or ignored)")


@app.command()
@with_options(layout_flags(), before="dtype", into="layout")  # --attention, --window, ...: ZebraLayout's fields
def convert(
    source: str = typer.Argument(..., help="'smollm2', a model directory, a .gguf file or a hub name"),
    output: Path = typer.Argument(..., help="directory to write the Zebra model (and tokenizer) to"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    portable: bool = typer.Option(
        False, help="save as a stock transformers model (Ministral/Qwen2/Qwen3 with layer_types), no zebra_llm needed"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists (never the source itself)"),
    allow_missing_weights: bool = typer.Option(False, "--allow-missing-weights", help=ALLOW_MISSING_HELP),
    layout: dict = None,  # the layer settings' flags (see layout_flags)
) -> None:
    """Convert a Llama / Mistral / Qwen2 / Qwen3 checkpoint to a Zebra model, weights unchanged."""
    from zebra_llm.loading import parse_dtype
    from zebra_llm.modeling import convert_checkpoint

    from ._common import quiet_transformers

    quiet_transformers()

    out = convert_checkpoint(
        source,
        output,
        **layout,
        dtype=parse_dtype(dtype),
        portable=portable,
        overwrite=overwrite,
        strict=not allow_missing_weights,
    )
    typer.echo(f"wrote {'portable ' if portable else ''}Zebra model to {out}")


@app.command()
def export(
    source: Path = typer.Argument(..., help="a saved Zebra model directory"),
    output: Path = typer.Argument(..., help="directory for the stock-transformers copy"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUTPUT if it exists (never the source itself)"),
    allow_missing_weights: bool = typer.Option(False, "--allow-missing-weights", help=ALLOW_MISSING_HELP),
) -> None:
    """Save a Zebra model (global and local layers only) so stock transformers loads it without zebra_llm."""
    from zebra_llm.modeling import export_portable
    from zebra_llm.modeling.convert import check_output_path, load_source

    from ._common import quiet_transformers

    quiet_transformers()

    if not source.exists():
        raise FileNotFoundError(f"export: {source} does not exist (expected a saved Zebra model directory)")
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"export: {source} has no config.json (not a saved model directory)")
    check_output_path(source, output, overwrite=overwrite, what="export")  # before any weights are read
    model, tokenizer = load_source(str(source), strict=not allow_missing_weights)
    out = export_portable(model, output, tokenizer=tokenizer, overwrite=overwrite)
    typer.echo(f"wrote {model.config.num_hidden_layers}-layer model as {_model_type(out)} to {out}")


def _model_type(path: Path) -> str:
    import json

    return json.loads((path / "config.json").read_text())["model_type"]


@app.command()
def presets() -> None:
    """List the named Zebra configurations (ZebraConfig.from_preset)."""
    from zebra_llm.modeling import list_presets

    for name, description in list_presets().items():
        typer.echo(f"{name:12s} {description}")


@app.command()
def flops(
    model: str = typer.Argument(..., help="a preset name or a model directory (config.json)"),
    seq_len: list[int] = typer.Option([4096], "--seq-len", help="sequence length (repeatable)"),
) -> None:
    """FLOPs estimate of a forward and a forward+backward pass, against the same model all-global."""
    from zebra_llm import flops as F
    from zebra_llm.modeling import ZebraConfig

    config = _config(model, ZebraConfig)
    baseline = None
    if config.model_type == "zebra":
        baseline = ZebraConfig.from_dict({**config.to_dict(), "layer_types": ["full_attention"] * len(config.layer_types)})
    typer.echo("seq_len  forward_TFLOPs  fwd+bwd_TFLOPs  attention_share  vs_all_global")
    for n in seq_len:
        est = F.estimate(config, n)
        ratio = f"{est.forward / F.estimate(baseline, n).forward:.3f}" if baseline is not None else "-"
        typer.echo(
            f"{n:7d}  {est.forward / 1e12:14.3f}  {est.forward_backward / 1e12:14.3f}  "
            f"{est.attention / est.forward:15.3f}  {ratio:>13s}"
        )


def _config(model: str, ZebraConfig):
    from zebra_llm.modeling.presets import PRESETS

    if model in PRESETS:
        return ZebraConfig.from_preset(model)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"flops: {model} is neither a preset ({sorted(PRESETS)}) nor a directory with config.json")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


__all__ = ["app"]
