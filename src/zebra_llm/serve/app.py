"""The FastAPI app of ``zebra serve``: OpenAI's completion and chat routes over the batching engine.

``create_app(model, method)`` loads the model with the method applied (the spec language of
``zebra eval``: ``dca``, ``self_extend:group_size=8``, ``none``, ...; Zebra checkpoints keep their own
attention), starts the engine when the app starts, and stops it when the app shuts down. Guide:
docs/serving.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the routes' annotations here

from .engine import Engine, EngineStopped, Event, GenerationRequest, QueueFull, SamplingParams
from .schema import ApiError, ChatBody, CompletionBody, parse_json, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of a server, checked at construction.

    ``max_batch``: requests decoded together; ``max_queue``: requests waiting beyond those (then 503);
    ``prefill_chunk``: prompt tokens prefilled between two decode steps; ``prefix_cache``: prefilled
    prompts kept for reuse; ``max_model_len``: cap on prompt + completion tokens (below the method's own
    limit); ``max_tokens_limit``: the largest ``max_tokens`` a request may ask; ``default_max_tokens``:
    a chat request's ``max_tokens`` when it gives none (completions: 16, as OpenAI's);
    ``max_body_bytes``: larger request bodies get 413; ``api_key``: when set, every route but
    ``/health`` needs ``Authorization: Bearer <key>``.
    """

    served_model_name: str | None = None
    api_key: str | None = None
    max_batch: int = 16
    max_queue: int = 64
    prefill_chunk: int = 512
    prefix_cache: int = 4
    max_model_len: int | None = None
    max_tokens_limit: int = 4096
    default_max_tokens: int = 256
    max_body_bytes: int = 4 * 2**20

    def __post_init__(self):
        for name, low in (("max_batch", 1), ("max_queue", 0), ("prefill_chunk", 1), ("prefix_cache", 0),
                          ("max_tokens_limit", 1), ("default_max_tokens", 1), ("max_body_bytes", 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"max_model_len must be an integer >= 2, got {self.max_model_len!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")


def context_limit(loaded, max_model_len: int | None = None) -> tuple[int | None, str]:
    """The most tokens (prompt + completion) a request may use, and why.

    The method's own limit (``MethodSpec.max_length`` on the unmodified model: none for DCA and plain
    ReRoPE). A server of the model unchanged (``none`` without ``max_length``) stops at the trained
    context, past which plain RoPE's output is not meaningful (an evaluation may go further to show
    that; a server should not). ``max_model_len`` caps either.
    """
    spec = loaded.method
    if spec.name == "none" and getattr(spec.options, "max_length", None) is None:
        limit, reason = loaded.info["trained_context"], "the model's trained context; serve with a context-extension method such as dca to go further"
    else:
        limit, reason = loaded.max_length, loaded.info.get("limit_reason", "")
    if max_model_len is not None and (limit is None or max_model_len < limit):
        limit, reason = max_model_len, "the server's --max-model-len"
    return limit, reason


def _served_name(loaded, source) -> str:
    if isinstance(source, (str, Path)):
        text = str(source).rstrip("/")
        return Path(text).name if ("/" in text and Path(text).expanduser().exists()) else text
    return loaded.source or "model"


def create_app(model="smollm2", method="none", *, config: ServeConfig | None = None, dtype="float32",
               device=None, **settings):
    """The FastAPI app serving ``model`` with ``method`` applied.

    ``model``: a spec as for ``zebra_llm.load_model`` (``smollm2``, a directory, a ``.gguf`` file, a hub
    name), a ``(model, tokenizer)`` pair (the method is applied to it in place), or a ``LoadedModel``
    (used as it is). ``settings``: :class:`ServeConfig` fields, when ``config`` is not given.
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    from ..eval.loaded import LoadedModel, load_with_method

    if config is not None and settings:
        raise ValueError("give ServeConfig fields either in config= or as keyword arguments, not both")
    config = config or ServeConfig(**settings)
    loaded = model if isinstance(model, LoadedModel) else load_with_method(model, method, dtype=dtype, device=device)
    limit, limit_reason = context_limit(loaded, config.max_model_len)
    name = config.served_model_name or _served_name(loaded, model)
    tokenizer_lock = threading.Lock()
    engine = Engine(loaded.model, _LockedTokenizer(loaded.tokenizer, tokenizer_lock), max_batch=config.max_batch,
                    max_queue=config.max_queue, prefill_chunk=config.prefill_chunk, prefix_cache=config.prefix_cache,
                    exact_prefix=loaded.method.prefix_cache_exact)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="zebra serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.loaded, app.state.config = engine, loaded, config
    app.state.model_name, app.state.limit = name, limit

    def error_response(e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return error_response(ApiError(400, f"request: {e.errors()[0].get('msg', 'invalid')}"))

    @app.exception_handler(404)
    async def _not_found(request, e):
        return error_response(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def _not_allowed(request, e):
        return error_response(ApiError(405, f"method {request.method} is not allowed on {request.url.path}"))

    @app.exception_handler(Exception)
    async def _internal(request, e):
        log.exception("unhandled error")
        return error_response(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))

    def authorize(request) -> None:
        if config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                           type="authentication_error", code="invalid_api_key")

    async def read_json(request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise ApiError(413, f"request body: {declared} bytes, above the server's limit of "
                                f"{config.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise ApiError(413, f"request body: above the server's limit of {config.max_body_bytes} bytes")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    def check_model(body) -> None:
        if body.model != name:
            raise ApiError(404, f"model: {body.model!r} is not served here; this server serves {name!r}",
                           param="model", code="model_not_found")

    def resolve_max_tokens(requested: int | None, default: int, prompt_tokens: int, prompt_field: str) -> int:
        if requested is not None:
            if requested < 1:
                raise ApiError(400, f"max_tokens: must be >= 1, got {requested}", param="max_tokens")
            if requested > config.max_tokens_limit:
                raise ApiError(400, f"max_tokens: {requested} is above this server's limit of "
                                    f"{config.max_tokens_limit}", param="max_tokens")
        if limit is not None and prompt_tokens >= limit:
            raise ApiError(400, f"prompt: {prompt_tokens} tokens; this server's context limit is {limit} tokens "
                                f"(method {loaded.method}: {limit_reason})", param=prompt_field,
                           code="context_length_exceeded")
        if requested is None:
            requested = default if limit is None else min(default, limit - prompt_tokens)
        if limit is not None and prompt_tokens + requested > limit:
            raise ApiError(400, f"prompt ({prompt_tokens} tokens) + max_tokens ({requested}) = "
                                f"{prompt_tokens + requested} is above this server's context limit of {limit} "
                                f"tokens (method {loaded.method}: {limit_reason})", param="max_tokens",
                           code="context_length_exceeded")
        return requested

    def sampling(body, max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                              top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed_value,
                              stop=body.stop_sequences(), ignore_eos=body.ignore_eos)

    def encode_completion(body: CompletionBody) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            vocab = len(loaded.tokenizer)
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
            return list(prompt)
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, f"prompt: give one prompt per request (n=1), got a list of {len(prompt)}",
                               param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise ApiError(400, "prompt: the prompt is empty", param="prompt")
        _check_unicode(prompt, "prompt")
        with tokenizer_lock:
            ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = loaded.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + list(ids)

    def encode_chat(body: ChatBody) -> list[int]:
        if not getattr(loaded.tokenizer, "chat_template", None):
            raise ApiError(400, f"messages: model {name!r} has no chat template; use /v1/completions", param="messages")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        for i, m in enumerate(messages):
            _check_unicode(m["content"], f"messages.{i}.content")
        with tokenizer_lock:
            try:
                ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"]
            except Exception as e:  # a template that rejects the conversation (roles out of order, ...)
                raise ApiError(400, f"messages: the chat template refused them: {e}", param="messages") from None
        return list(ids)

    async def submit(prompt_ids: list[int], params: SamplingParams):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        request = GenerationRequest(prompt_ids, params, sink)
        try:
            engine.submit(request)
        except QueueFull as e:
            raise ApiError(503, str(e), type="server_overloaded", code="queue_full", headers={"Retry-After": "1"}) from None
        except EngineStopped as e:
            raise ApiError(503, str(e), type="server_error", code="shutting_down") from None
        return request, events

    async def collect(http_request, request: GenerationRequest, events) -> tuple[str, Event]:
        """Wait for the whole output of a non-streamed request (cancelled if the client goes away)."""
        pieces = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await http_request.is_disconnected():
                        request.cancel()
                        raise ApiError(499, "client closed the request") from None
                    continue
                if event.kind == "text":
                    pieces.append(event.text)
                elif event.kind == "error":
                    raise ApiError(500, event.text, type="server_error")
                else:
                    if event.finish_reason == "cancelled":
                        raise ApiError(503, "the request was cancelled: the server is shutting down",
                                       type="server_error", code="shutting_down")
                    return "".join(pieces), event
        finally:
            request.cancel()  # no-op when it finished; frees the slot otherwise

    def usage(event: Event):
        from openai.types import CompletionUsage

        return CompletionUsage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                               total_tokens=event.prompt_tokens + event.completion_tokens)

    def sse(obj) -> str:
        return f"data: {obj.model_dump_json(exclude_unset=True)}\n\n"

    def chunk_maker(cls, object_name: str, rid: str, now: int, choices):
        """The ``make_chunk`` of :func:`stream` for one response: the envelope every chunk shares (id,
        object, time, model, usage when given) around ``choices(text, finish, first)`` (None: no chunk);
        built unvalidated, as ``finish_reason`` is null until the last chunk, which the choice types refuse."""

        def make_chunk(text, finish, use, first=False, usage_only=False):
            picked = [] if usage_only else choices(text, finish, first)
            if picked is None:
                return None
            fields = dict(id=rid, object=object_name, created=now, model=name, choices=picked)
            if use is not None:
                fields["usage"] = use
            return cls.model_construct(**fields)

        return make_chunk

    def stream(request: GenerationRequest, events, make_chunk, stream_options):
        include_usage = bool(stream_options and stream_options.include_usage)

        async def body():
            finished = False
            try:
                first = make_chunk(None, None, None, first=True)
                if first is not None:
                    yield sse(first)
                while True:
                    event = await events.get()
                    if event.kind == "text":
                        yield sse(make_chunk(event.text, None, None))
                    elif event.kind == "error" or event.finish_reason == "cancelled":
                        message = event.text if event.kind == "error" else "the server shut down before the request finished"
                        yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                        finished = True
                        return
                    else:
                        yield sse(make_chunk("", event.finish_reason, usage(event)))
                        if include_usage:
                            yield sse(make_chunk(None, None, usage(event), usage_only=True))
                        yield "data: [DONE]\n\n"
                        finished = True
                        return
            finally:
                if not finished:
                    request.cancel()  # the client went away mid-stream: free its slot

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health():
        stats = engine.snapshot_stats()
        status = "ok" if stats["accepting"] else "shutting_down"
        return JSONResponse({"status": status, "model": name, "method": str(loaded.method), "context_limit": limit,
                             **stats}, status_code=200 if status == "ok" else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        from openai.types import Model

        authorize(request)
        entry = Model(id=name, created=created, object="model", owned_by="zebra-llm")
        data = entry.model_dump() | {"method": str(loaded.method), "max_model_len": limit,
                                     "trained_context": loaded.info.get("trained_context")}
        return {"object": "list", "data": [data]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        from openai.types import Completion, CompletionChoice

        authorize(request)
        body = validate(CompletionBody, await read_json(request))
        check_model(body)
        ids = await asyncio.to_thread(encode_completion, body)
        params = sampling(body, resolve_max_tokens(body.max_tokens, 16, len(ids), "prompt"))
        gen, events = await submit(ids, params)
        rid = f"cmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if body.stream:
            def choices(text, finish, first):
                if first:
                    return None  # the completions stream has no role-only first chunk
                return [CompletionChoice.model_construct(index=0, text=text, finish_reason=finish, logprobs=None)]

            make_chunk = chunk_maker(Completion, "text_completion", rid, now, choices)
            return stream(gen, events, make_chunk, body.stream_options)
        text, done = await collect(request, gen, events)
        return Completion(id=rid, object="text_completion", created=now, model=name, usage=usage(done),
                          choices=[CompletionChoice(index=0, text=text, finish_reason=done.finish_reason,
                                                    logprobs=None)]).model_dump(exclude_none=True)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
        from openai.types.chat.chat_completion import Choice
        from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice, ChoiceDelta

        authorize(request)
        body = validate(ChatBody, await read_json(request))
        check_model(body)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise ApiError(400, "max_tokens and max_completion_tokens: give one", param="max_completion_tokens")
        ids = await asyncio.to_thread(encode_chat, body)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = sampling(body, resolve_max_tokens(requested, config.default_max_tokens, len(ids), "messages"))
        gen, events = await submit(ids, params)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if body.stream:
            def choices(text, finish, first):
                delta = ChoiceDelta(role="assistant", content="") if first else ChoiceDelta(content=text)
                return [ChunkChoice(index=0, delta=delta, finish_reason=finish, logprobs=None)]

            make_chunk = chunk_maker(ChatCompletionChunk, "chat.completion.chunk", rid, now, choices)
            return stream(gen, events, make_chunk, body.stream_options)
        text, done = await collect(request, gen, events)
        message = ChatCompletionMessage(role="assistant", content=text)
        return ChatCompletion(id=rid, object="chat.completion", created=now, model=name, usage=usage(done),
                              choices=[Choice(index=0, message=message, finish_reason=done.finish_reason,
                                              logprobs=None)]).model_dump(exclude_none=True)

    return app


def _check_unicode(text: str, field: str) -> None:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer can encode: a 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(400, f"{field}: not valid Unicode (a lone surrogate at character {e.start})",
                       param=field.split(".")[0]) from None


class _LockedTokenizer:
    """The tokenizer as the engine thread sees it: ``decode`` under the lock the routes encode with (a
    fast tokenizer's Rust object refuses concurrent use from two threads)."""

    def __init__(self, tokenizer, lock: threading.Lock):
        self._tokenizer, self._lock = tokenizer, lock

    def decode(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer.decode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


__all__ = ["ServeConfig", "context_limit", "create_app"]
