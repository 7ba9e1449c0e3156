"""A Zebra model exported in the portable format (``zebra export``) is served by stock ``transformers
serve`` in a subprocess, with no zebra_llm code in the loop, and answers a greedy completion with the
tokens ``zebra serve`` gives for the Zebra model itself (its own ``"zebra"`` attention)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from helpers import free_port  # noqa: E402

PROMPT = "once upon a time the cat sat on a mat"


def _transformers_serve_command():
    exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if exe is None:
        pytest.skip("the transformers CLI is not installed")
    probe = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"transformers serve is not usable here: {probe.stderr.strip().splitlines()[-1:]}")
    return exe


@pytest.mark.subprocess
def test_portable_export_is_served_by_transformers_serve(tiny_model_dir, tmp_path):
    from zebra_llm import export_portable
    from zebra_llm.eval.loaded import load_with_method
    from zebra_llm.serve import ServerThread, create_app

    exe = _transformers_serve_command()
    zebra = load_with_method(str(tiny_model_dir), "zebra:layer_group_size=2,window=16")
    portable = tmp_path / "portable"
    export_portable(zebra.model, portable, tokenizer=zebra.tokenizer)
    ids = zebra.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]  # transformers serve adds no BOS

    port = free_port()
    # Run from an empty directory with only the standard environment: nothing of zebra_llm is imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([exe, "serve", str(portable), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                             "--dtype", "float32", "--log-level", "warning"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"transformers serve exited: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "transformers serve did not come up in 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120) as c:
            theirs = c.completions.create(model=str(portable), prompt=PROMPT, max_tokens=8, temperature=0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert theirs.usage.prompt_tokens == len(ids)

    app = create_app(zebra, served_model_name="zebra")
    with ServerThread(app) as s, openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60) as c:
        ours = c.completions.create(model="zebra", prompt=ids, max_tokens=8, temperature=0)
    assert ours.choices[0].text == theirs.choices[0].text
    assert ours.usage.completion_tokens == theirs.usage.completion_tokens
