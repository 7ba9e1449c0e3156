"""``zebra serve MODEL --method SPEC``: an OpenAI-compatible server (``zebra_llm.serve``)."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import DEVICE, DTYPE, quiet_transformers


def serve(
    model: str = typer.Argument("smollm2", help="smollm2 (embedded), a model directory (a Zebra checkpoint too), "
                                "a .gguf file or a hub name."),
    method: str = typer.Option("none", "--method", "-m", help="Method applied on load, as for zebra eval "
                               "(dca, self_extend:group_size=8, rerope:window=4096, string, yarn:factor=4, none)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="ZEBRA_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every route but /health."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="The model name clients send (default: MODEL)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Requests decoded together."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting beyond --max-batch before 503."),
    prefill_chunk: int = typer.Option(512, "--prefill-chunk", help="Prompt tokens prefilled between decode steps."),
    prefix_cache: int = typer.Option(4, "--prefix-cache", help="Prefilled prompts kept for reuse (0: off)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len",
                                                help="Cap on prompt + completion tokens (default: the method's limit)."),
    max_tokens_limit: int = typer.Option(4096, "--max-tokens-limit", help="Largest max_tokens a request may ask."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout",
                                           help="Seconds running requests get to finish after SIGTERM."),
    dtype: str = DTYPE,
    device: Optional[str] = DEVICE,
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's: debug, info, warning, error."),
) -> None:
    """Serve MODEL with METHOD on OpenAI's /v1/completions and /v1/chat/completions routes (docs/serving.md)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("zebra serve needs FastAPI and uvicorn: pip install 'zebra-llm[serve]'") from None
    from zebra_llm.eval.method_spec import MethodSpec
    from zebra_llm.serve import ServeConfig, create_app, run

    if not 0 <= port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {port}")
    config = ServeConfig(served_model_name=served_model_name, api_key=api_key, max_batch=max_batch,
                         max_queue=max_queue, prefill_chunk=prefill_chunk, prefix_cache=prefix_cache,
                         max_model_len=max_model_len, max_tokens_limit=max_tokens_limit)
    spec = MethodSpec.parse(method)  # a bad spec fails before the model loads
    quiet_transformers()
    app = create_app(model, spec, config=config, dtype=dtype, device=device)
    typer.echo(f"serving {app.state.model_name!r} (method {spec}, context limit "
               f"{app.state.limit or 'none'}) on http://{host}:{port}/v1", err=True)
    run(app, host=host, port=port, shutdown_timeout=shutdown_timeout, log_level=log_level)
