"""Running the app on uvicorn: in the foreground with SIGTERM handled (``zebra serve``), or in a
background thread on a free port (tests, the load benchmark, notebooks).

SIGTERM (and Ctrl-C): the engine stops taking requests at once (a request that still arrives gets 503),
uvicorn closes its listening socket, running requests go on for up to ``shutdown_timeout`` seconds;
shortly before that deadline the engine cancels what still runs (a stream then ends with an error event
saying the server shut down, a non-streamed request gets 503), uvicorn closes the connections, the
engine thread ends, and the process exits 0.
"""

from __future__ import annotations

import threading
import time


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        draining = False

        def handle_exit(self, sig, frame):
            engine = getattr(self.config.app.state, "engine", None)
            if engine is not None and not self.draining:
                self.draining = True
                engine.stop_accepting()
                # cancel in time for the streams to end with a message before uvicorn cuts them
                timeout = self.config.timeout_graceful_shutdown or 0
                timer = threading.Timer(max(0.0, timeout - min(1.0, timeout / 4)), engine.cancel_all)
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)
            # uvicorn raises the captured signal again once it has shut down (the default SIGTERM
            # action then kills the process, status -15); the shutdown is ours, so the process exits 0
            self._captured_signals.clear()

    return Server


def _config(app, host: str, port: int, shutdown_timeout: float, log_level: str):
    import uvicorn

    if shutdown_timeout < 0:
        raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout}")
    return uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=shutdown_timeout,
                          log_level=log_level, lifespan="on", access_log=log_level == "debug")


def run(app, *, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0,
        log_level: str = "info") -> None:
    """Serve ``app`` until SIGTERM or Ctrl-C, then shut down within ``shutdown_timeout`` seconds."""
    server = _server_class()(_config(app, host, port, shutdown_timeout, log_level))
    server.run()
    if not server.started:
        raise RuntimeError(f"the server could not start on {host}:{port} (see the log above)")


class ServerThread:
    """``app`` served by uvicorn in a daemon thread (no signal handlers): ``with ServerThread(app) as s:
    s.url``. Port 0 picks a free port."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0, shutdown_timeout: float = 5.0,
                 log_level: str = "warning"):
        self.app = app
        self.server = _server_class()(_config(app, host, port, shutdown_timeout, log_level))
        self.thread = threading.Thread(target=self.server.run, name="zebra-serve-uvicorn", daemon=True)
        self.host = host

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server thread did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.app.state.engine.stop_accepting()
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["ServerThread", "run"]
