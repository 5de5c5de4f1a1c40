"""Request bodies of the HTTP API, validated strictly, and its JSON error shape."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.core import Overrides
from bot.errors import ErrorKind, ModelError

M = TypeVar("M", bound=BaseModel)

MAX_STOP_SEQUENCES = 4
MAX_N = 8
MAX_USER_ID_CHARS = 128
# A \uXXXX escape of a UTF-16 surrogate: the only way valid UTF-8 JSON can carry half a pair.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

# Upstream failures as HTTP statuses: the caller's fault is 4xx, the model service's 5xx.
STATUS_OF_MODEL_ERROR: dict[ErrorKind, int] = {
    ErrorKind.AUTH: 502,
    ErrorKind.QUOTA: 502,
    ErrorKind.RATE_LIMIT: 429,
    ErrorKind.CONTEXT_TOO_LONG: 400,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.SERVER: 502,
    ErrorKind.CONNECTION: 503,
    ErrorKind.EMPTY: 502,
    ErrorKind.BAD_MODEL: 400,
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.UNAVAILABLE: 503,
}


class ApiError(Exception):
    """A request the API refuses; becomes a JSON error with this status."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class GenerationFields(BaseModel):
    """Optional generation settings a request may override."""

    model_config = ConfigDict(strict=True)

    model: str | None = Field(None, min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    user: str | None = Field(None, min_length=1, max_length=MAX_USER_ID_CHARS)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        """OpenAI accepts at most four stop sequences."""
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    def overrides(self) -> Overrides:
        """The request's overrides for the core."""
        stop = (self.stop,) if isinstance(self.stop, str) else (tuple(self.stop) if self.stop else None)
        return Overrides(self.model, self.max_tokens, self.temperature, stop, self.n)


class AskRequest(GenerationFields):
    """Body of POST /ask_gpt; unknown fields are refused so typos do not pass silently."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        """A prompt of only spaces asks nothing."""
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value


class ContentPart(BaseModel):
    """One part of a multi-part message content; only text parts are used."""

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """One message of an OpenAI chat request."""

    model_config = ConfigDict(strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text, parts joined."""
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(GenerationFields):
    """Body of POST /v1/chat/completions; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    stream_options: dict[str, Any] | None = None

    def overrides(self) -> Overrides:
        """Like the base, with max_completion_tokens as an alias of max_tokens."""
        base = super().overrides()
        if self.max_completion_tokens and not self.max_tokens:
            return Overrides(base.model, self.max_completion_tokens, base.temperature, base.stop, base.n)
        return base


def client_id(request: web.Request) -> str:
    """Who a stateless request is from, for rate limits: the caller's address."""
    return f"ip:{request.remote or 'unknown'}"


def error_response(status: int, message: str, code: str | None = None) -> web.Response:
    """An error in OpenAI's shape, so SDKs surface the message."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


def model_error_response(exc: ModelError) -> web.Response:
    """A sanitised model failure; details are in the log, not the response."""
    response = error_response(STATUS_OF_MODEL_ERROR[exc.kind], exc.user_text, exc.kind.value)
    if exc.kind is ErrorKind.RATE_LIMIT:
        response.headers["Retry-After"] = str(round(exc.retry_after or 1))
    return response


def describe_validation(exc: ValidationError) -> str:
    """All field problems in one readable line."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or an HTTP 4xx saying what is wrong."""
    raw = await request.read()  # raises 413 past client_max_size
    if not raw.strip():
        raise ApiError(400, 'empty body: send a JSON object such as {"prompt": "Hello"}')
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise ApiError(400, "body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    if SURROGATE_ESCAPE.search(raw):
        _check_unicode(body)
    return body


def _check_unicode(body: dict[str, Any]) -> None:
    """Refuse strings with a lone surrogate: no model, log or database can encode them."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # Passed on, such a prompt fails inside the model client and trips the circuit breaker.
        raise ApiError(400, "body is not valid Unicode: a \\uD800-\\uDFFF escape without its pair") from None
    except RecursionError:
        raise ApiError(400, "body is nested too deeply") from None


def parse_body(model: type[M], body: dict[str, Any]) -> M:
    """Validate a body against a request model, or refuse it with every problem listed."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, describe_validation(exc)) from None
