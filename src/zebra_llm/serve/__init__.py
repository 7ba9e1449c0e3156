"""``zebra serve``: an OpenAI-compatible server (FastAPI + uvicorn, the ``[serve]`` extra) for models
with DCA or any other method of the ``--method`` spec language applied, and for Zebra models.

* ``create_app(model, method, ...)``: the FastAPI app (``app.py``); ``ServeConfig``: its settings.
* ``Engine``: the thread that owns the model and decodes all active requests in one batch
  (``engine.py``; caches stacked with left padding, ``batch_cache.py``).
* ``run(app, host=, port=)``: uvicorn in the foreground with SIGTERM handled; ``ServerThread``: in a
  background thread (``server.py``).

Guide: docs/serving.md.
"""

from .app import ServeConfig, context_limit, create_app
from .engine import Engine, EngineStopped, Event, GenerationRequest, QueueFull, SamplingParams
from .server import ServerThread, run

__all__ = [
    "Engine",
    "EngineStopped",
    "Event",
    "GenerationRequest",
    "QueueFull",
    "SamplingParams",
    "ServeConfig",
    "ServerThread",
    "context_limit",
    "create_app",
    "run",
]
