"""Request bodies of the OpenAI routes, validated strictly, and OpenAI-style error objects.

Responses are built from the ``openai`` package's own types (``Completion``, ``ChatCompletion``,
``ChatCompletionChunk``, ``CompletionUsage``, ``Model``) in ``app.py``; the request side is modelled
here, because the package's request types are ``TypedDict`` parameter lists, not validators. Types are
strict (``"5"`` is not an integer, ``true`` is not a number): a wrong type is a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Accepted, meaningful OpenAI parameters this server does not implement: refused by name when set, so a
# client never gets an answer that silently ignored them. (Unknown names are ignored, as OpenAI's own
# SDKs add new optional fields over time.)
UNSUPPORTED = {
    "logprobs": "log probabilities are not returned by this server",
    "top_logprobs": "log probabilities are not returned by this server",
    "echo": "echo is not supported",
    "suffix": "suffix (insertion) is not supported",
    "best_of": "best_of is not supported; send several requests",
    "logit_bias": "logit_bias is not supported",
    "tools": "tool calling is not supported",
    "functions": "function calling is not supported",
    "response_format": "response_format is not supported",
}
MAX_STOP_SEQUENCES = 4  # OpenAI's own limit


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool = False  # an extra parameter, as vLLM's: keep generating past end-of-sequence

    def stop_sequences(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP_SEQUENCES:
            raise ApiError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(stop)}", param="stop")
        if any(s == "" for s in stop):
            raise ApiError(400, "stop: a stop sequence must not be empty", param="stop")
        for s in stop:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "stop: not valid Unicode (a lone surrogate)", param="stop") from None
        return tuple(stop)

    def check_common(self) -> None:
        """Checks of values (types were checked by pydantic) shared by both routes."""
        if self.n not in (None, 1):
            raise ApiError(400, f"n: only n=1 is supported, got {self.n}", param="n")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ApiError(400, f"temperature: must be between 0 and 2, got {self.temperature}", param="temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ApiError(400, f"top_p: must be in (0, 1], got {self.top_p}", param="top_p")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ApiError(400, f"{name}: not supported by this server (only 0)", param=name)
        for name, why in UNSUPPORTED.items():
            value = (self.model_extra or {}).get(name)
            if value not in (None, False, 0, [], {}):
                raise ApiError(400, f"{name}: {why}", param=name)
        self.stop_sequences()

    @property
    def seed_value(self) -> int | None:
        return None if self.seed is None else self.seed & (2**63 - 1)


class CompletionBody(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a string, a list of one string, or a list of token ids."""

    prompt: str | list[str] | list[int]


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatBody(_Sampling):
    """``POST /v1/chat/completions``: the messages go through the tokenizer's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None  # the newer name of max_tokens


def parse_json(raw: bytes) -> dict:
    """A request body as a JSON object; bytes that are not UTF-8 or not JSON are a 400."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text.strip():
        raise ApiError(400, "request body: empty; send a JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"request body: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "request body: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body: expected a JSON object, got {type(data).__name__}")
    return data


def validate(body_type: type[BaseModel], data: dict):
    """``body_type`` from ``data``, a validation error as a 400 naming the first bad field."""
    try:
        body = body_type.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"] if not _is_type_tag(p)]
        where = ".".join(loc) or "request body"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required"
        raise ApiError(400, f"{where}: {msg}", param=loc[0] if loc else None) from None
    body.check_common()
    return body


def _is_type_tag(part) -> bool:
    # pydantic names the union member it tried ("str", "list[int]", "function-after[...]") in the location
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool"))


__all__ = ["ApiError", "ChatBody", "CompletionBody", "Message", "parse_json", "validate"]
