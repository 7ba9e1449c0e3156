"""``zebra serve``'s app through the real ``openai`` client against a live server on a free localhost
port (a tiny random Llama with DCA): completions, chat, streaming, concurrency, bad input, the queue
bound, a client that disconnects, the API key, the context limit."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from zebra_llm.eval.loaded import load_with_method  # noqa: E402
from zebra_llm.serve import ServerThread, create_app  # noqa: E402

MODEL = "tiny"
KEY = "test-key"


@pytest.fixture(scope="module")
def tiny_dca(tiny_model_dir):
    return load_with_method(str(tiny_model_dir), "dca")


@pytest.fixture(scope="module")
def server(tiny_dca):
    app = create_app(tiny_dca, served_model_name=MODEL, api_key=KEY, max_batch=8, max_queue=8,
                     prefill_chunk=64, max_body_bytes=64 * 1024)
    with ServerThread(app) as s:
        yield s


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


def _prompt(n_words: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    words = "the cat sat on a mat while green birds sang about long context windows".split()
    return " ".join(words[i] for i in torch.randint(0, len(words), (n_words,), generator=g).tolist())


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["method"] == "dca"
    health = httpx.get(server.url + "/health", timeout=10)  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_completion_and_chat_with_usage(client):
    prompt = _prompt(90, 1)  # past the tiny model's trained context of 64 tokens: DCA serves it
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 64 and 1 <= r.usage.completion_tokens <= 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0)
    assert again.choices[0].text == r.choices[0].text  # greedy is deterministic
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": prompt}],
                                          max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 5
    assert chat.usage.prompt_tokens > r.usage.prompt_tokens  # the chat template's own tokens


def test_streaming_chat_and_completion_match_the_whole_answers(client):
    messages = [{"role": "user", "content": _prompt(40, 2)}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=9, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    prompt = _prompt(30, 3)
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    pieces = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in pieces) == whole.choices[0].text
    assert pieces[-1].usage.total_tokens == whole.usage.total_tokens


def test_concurrent_requests_get_their_tokens_alone(server, client, tiny_model_dir):
    prompts = [_prompt(n, 10 + n) for n in (5, 30, 70, 12, 55, 90)]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0).choices[0].text
             for p in prompts]
    before = httpx.get(server.url + "/health", timeout=10).json()["batch_sizes"]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(client.completions.create, model=MODEL, prompt=p, max_tokens=10, temperature=0)
                   for p in prompts]
        together = [f.result(timeout=60).choices[0].text for f in futures]
    assert together == alone
    after = httpx.get(server.url + "/health", timeout=10).json()["batch_sizes"]
    batched = {int(k): v - before.get(k, 0) for k, v in after.items()}
    assert max(k for k, v in batched.items() if v > 0) >= 2, f"no decode step batched requests: {batched}"
    # the same server code with the model unmodified: the tokens alone and together agree as well
    plain = create_app(str(tiny_model_dir), "none", served_model_name=MODEL, max_batch=8)
    with ServerThread(plain) as s, openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0,
                                                 timeout=30) as c:
        short = [prompts[i] for i in (0, 1, 3)]  # inside the trained context of 64 tokens
        alone = [c.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0).choices[0].text
                 for p in short]
        with concurrent.futures.ThreadPoolExecutor(len(short)) as pool:
            futures = [pool.submit(c.completions.create, model=MODEL, prompt=p, max_tokens=8, temperature=0)
                       for p in short]
            assert [f.result(timeout=60).choices[0].text for f in futures] == alone


BAD_BODIES = [
    (b"{not json", 400, "invalid JSON"),
    (b"[1, 2]", 400, "expected a JSON object"),
    (b"\xff\xfe\x00bad", 400, "not UTF-8"),
    (b"", 400, "empty"),
    (json.dumps({"model": MODEL}).encode(), 400, "prompt: required"),
    (json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": "5"}).encode(), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": -3}).encode(), 400, "max_tokens: must be >= 1"),
    (json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 10**9}).encode(), 400, "above this server's limit"),
    (json.dumps({"model": MODEL, "prompt": "hi", "temperature": True}).encode(), 400, "temperature"),
    (json.dumps({"model": MODEL, "prompt": "hi", "temperature": 7}).encode(), 400, "between 0 and 2"),
    (json.dumps({"model": MODEL, "prompt": "hi", "n": 2}).encode(), 400, "only n=1"),
    (json.dumps({"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}).encode(), 400, "at most 4"),
    (json.dumps({"model": MODEL, "prompt": ""}).encode(), 400, "prompt is empty"),
    (json.dumps({"model": MODEL, "prompt": [10**9]}).encode(), 400, "outside the vocabulary"),
    (json.dumps({"model": MODEL, "prompt": "hi", "logprobs": 3}).encode(), 400, "logprobs"),
    (json.dumps({"model": "gpt-4", "prompt": "hi"}).encode(), 404, "not served here"),
    (b'{"model": "tiny", "prompt": "a \\ud800 b"}', 400, "lone surrogate"),
    (json.dumps({"model": MODEL, "prompt": "hi", "stop": "\ud800"}).encode(), 400, "stop: not valid Unicode"),
    (b"[" * 30000 + b"]" * 30000, 400, "nested too deeply"),
    (b'{"model": "tiny", "prompt": "hi", "n": 1.5}', 400, "n:"),
    (b'{"model": "tiny", "prompt": "' + b"x" * (70 * 1024) + b'"}', 413, "limit of"),
]


@pytest.mark.parametrize("body,status,message", BAD_BODIES, ids=[m for _, _, m in BAD_BODIES])
def test_bad_input_is_a_4xx_error_object_and_the_server_keeps_serving(server, client, body, status, message):
    r = httpx.post(server.url + "/v1/completions", content=body, timeout=10,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    ok = client.completions.create(model=MODEL, prompt="hello", max_tokens=2, temperature=0)
    assert ok.usage.completion_tokens >= 1


@pytest.mark.parametrize("messages,message", [
    ([], "messages"),
    ([{"role": "wizard", "content": "hi"}], "messages.0.role"),
    ([{"role": "user", "content": 5}], "messages.0.content"),
    ("hello", "messages"),
])
def test_bad_chat_messages_are_named(client, messages, message):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert message in e.value.body["message"]


def test_api_key_on_every_route_but_health(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0, timeout=10) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def _wait_idle(url: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = httpx.get(url + "/health", timeout=10).json()
        if stats["active"] == stats["waiting"] == stats["prefilling"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"the server did not become idle in {timeout} s: {stats}")


def test_full_queue_is_503_and_a_disconnect_frees_the_slot(tiny_dca):
    app = create_app(tiny_dca, served_model_name=MODEL, max_batch=1, max_queue=0)
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as http:
        body = {"model": MODEL, "prompt": "a long answer", "max_tokens": 4000, "temperature": 0, "stream": True,
                "ignore_eos": True}  # an end-of-sequence token must not free the slot before the 503
        with http.stream("POST", "/v1/completions", json=body) as stream:
            # keep the line iterator referenced: a discarded one is closed at once, and closing it closes the
            # connection, a disconnect that frees the slot before the busy request comes (flaky under load)
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            busy = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
            stats = httpx.get(s.url + "/health", timeout=10).json()
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "queue_full", stats
            assert busy.headers["retry-after"] == "1"
            assert stats["active"] == 1 and stats["requests_done"] == 0, stats  # the stream still runs
            lines.close()
        # the client closed the stream long before 4000 tokens: its slot is free again
        stats = _wait_idle(s.url)
        assert stats["requests_done"] >= 1
        ok = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_context_limit_is_checked_before_any_compute(tiny_model_dir):
    app = create_app(str(tiny_model_dir), "none", served_model_name=MODEL)
    engine = app.state.engine
    with ServerThread(app) as s, openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=30) as c:
        steps = engine.snapshot_stats()["steps"]
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt=_prompt(80, 5), max_tokens=4)
        assert "context limit is 64 tokens" in e.value.body["message"]
        assert "trained context" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError, match="above this server's context limit of 64"):
            c.completions.create(model=MODEL, prompt=_prompt(20, 5), max_tokens=60)
        assert engine.snapshot_stats()["steps"] == steps and engine.snapshot_stats()["requests_done"] == 0
        assert c.completions.create(model=MODEL, prompt=_prompt(20, 5), max_tokens=4).usage.completion_tokens >= 1
