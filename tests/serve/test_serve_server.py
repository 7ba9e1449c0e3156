"""``zebra serve`` as a process: SIGTERM stops accepting, lets a running request finish, cancels one
that cannot finish before the deadline (its stream ends with an error event), and exits 0; bad
options fail with one line before any model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import free_port

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

SRC = Path(__file__).resolve().parents[2] / "src"


def _stream(url: str, body: dict, out: dict, started: threading.Event) -> None:
    lines = []
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    started.set()
    except httpx.HTTPError as e:  # a stream cut by the server
        lines.append(f"cut: {type(e).__name__}")
    finally:
        out["lines"] = lines
        started.set()


@pytest.mark.subprocess
def test_sigterm_finishes_or_cancels_running_requests_and_exits_0(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zebra_llm", "serve", str(tiny_model_dir), "--method", "dca", "--port", str(port),
         "--served-model-name", "tiny", "--shutdown-timeout", "4", "--max-tokens-limit", "1000000",
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the server exited early: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "the server did not come up in 120 s"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        short, long_ = {}, {}
        events = [threading.Event(), threading.Event()]
        body = {"model": "tiny", "prompt": "once upon a time", "temperature": 0, "stream": True}
        threads = [threading.Thread(target=_stream, args=(url, {**body, "max_tokens": n}, out, ev), daemon=True)
                   for n, out, ev in ((40, short, events[0]), (1_000_000, long_, events[1]))]
        for t in threads:
            t.start()
        assert all(e.wait(60) for e in events), "the streams did not start"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        elapsed = time.monotonic() - sent
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, proc.stderr.read()[-2000:]
    assert elapsed < 4 + 20, f"shutdown took {elapsed:.1f} s with a deadline of 4 s"
    assert short["lines"][-1] == "data: [DONE]"  # finished within the deadline
    last = long_["lines"][-1]
    assert last.startswith("data: ") and "shut down" in json.loads(last[6:])["error"]["message"], long_["lines"][-3:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=2)


@pytest.mark.parametrize("argv,message", [
    (["serve", "smollm2", "--method", "dca:chunk_size=zero"], "chunk_size"),
    (["serve", "smollm2", "--method", "warp"], "unknown method"),
    (["serve", "smollm2", "--max-batch", "0"], "max_batch must be an integer >= 1"),
    (["serve", "smollm2", "--port", "70000"], "--port"),
])
def test_bad_options_fail_in_one_line_before_loading(argv, message, capsys):
    from zebra_llm.cli import app
    from zebra_llm.cli._common import run_guarded

    assert run_guarded(app, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
