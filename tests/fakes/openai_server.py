"""A scriptable fake OpenAI-compatible server on 127.0.0.1 that speaks the real wire protocol.

Usage::

    async with FakeOpenAI() as fake:
        fake.enqueue(TextReply(("Hel", "lo")), ErrorReply.for_status(429, retry_after=1))
        client = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)

Replies are taken from a FIFO queue, one per chat/completions request; with an empty queue the
server echoes: ``"echo: " + <content of the last user message>`` (``/v1/completions``: the last
line of the prompt); ``FakeOpenAI(echo_context=True)`` also says which earlier turns it was sent
(``context_echo_text``). What the real ``openai`` 3.x client raises for the broken replies:

* ``ErrorReply``: the ``APIStatusError`` subclass for the status (``BadRequestError``,
  ``AuthenticationError``, ``NotFoundError``, ``RateLimitError``, ``InternalServerError``...).
* ``HangReply`` longer than the client timeout: ``APITimeoutError``.
* ``EmptyStreamReply``: nothing; the stream simply yields no chunk (the caller must notice).
* ``CutStreamReply``: ``APIConnectionError`` while iterating, after the chunks sent before the cut
  (httpx2 sees an incomplete chunked body: ``RemoteProtocolError``).
* ``MalformedChunkReply``: ``json.JSONDecodeError`` (a ``ValueError``, not an ``openai.APIError``)
  while iterating, after the chunks sent before the bad line.
* ``ResetReply``: ``APIConnectionError`` before any response (the socket is reset with a TCP RST);
  the client retries it like a network failure.

Empty, cut and malformed replies always answer with an SSE stream, even to a request without
``stream: true``; use them with streaming requests. Auth failures (401) are answered before a
scripted reply is taken, so they leave the queue untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.local_server import HOST, LocalServer

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini",)
DEFAULT_MODEL = "gpt-4o-mini"
ECHO_PREFIX = "echo: "
# context_echo_text: "echo: <last> | saw <n> earlier user turns, <m> answers: <first>, <second>".
CONTEXT_MARK = " | saw "
CONTEXT_JOIN = ", "
SSE_DONE = b"data: [DONE]\n\n"
MALFORMED_LINE = b"data: {not json\n\n"
JSON_CONTENT_TYPE = "application/json"
SSE_HEADERS: Mapping[str, str] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
CONTEXT_WINDOW_TOKENS = 128000

# Default (message, type, code) per HTTP status, as the real API words them.
ERROR_DEFAULTS: Mapping[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


@dataclass(frozen=True)
class TextReply:
    """A normal answer: streamed one SSE event per chunk, joined when not streaming.

    For a request with ``n > 1``, choice ``i`` gets the same text plus the suffix ``f" #{i}"`` for
    ``i > 0`` (streamed as one extra delta). ``chunk_delay_s`` is slept before each streamed chunk;
    a non-streaming answer sleeps ``chunk_delay_s * len(chunks)`` before answering.
    """

    chunks: tuple[str, ...] = ("Hello", " world")
    usage: bool = True
    chunk_delay_s: float = 0.0
    finish_reason: str = "stop"

    @property
    def text(self) -> str:
        """The whole answer of choice 0."""
        return "".join(self.chunks)


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error with OpenAI's JSON error body and an optional ``Retry-After`` header."""

    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    retry_after_s: int | None = None

    @classmethod
    def for_status(cls, status: int, *, retry_after: int | None = None) -> ErrorReply:
        """An error with the real API's usual message, type and code for this status."""
        message, error_type, code = ERROR_DEFAULTS.get(status, ("Error.", "server_error", None))
        return cls(status, message, error_type, code, None, retry_after)

    @classmethod
    def context_length_exceeded(cls, tokens: int = CONTEXT_WINDOW_TOKENS + 1) -> ErrorReply:
        """The 400 the real API sends when the prompt does not fit the context window."""
        message = (
            f"This model's maximum context length is {CONTEXT_WINDOW_TOKENS} tokens. However, your "
            f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
        )
        return cls(400, message, "invalid_request_error", "context_length_exceeded", "messages")

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class HangReply:
    """Sleep ``seconds``, then answer ``then`` (default: the echo); trips client timeouts."""

    seconds: float
    then: TextReply | None = None


@dataclass(frozen=True)
class EmptyStreamReply:
    """A 200 ``text/event-stream`` holding only ``data: [DONE]`` (llama.cpp on context overflow)."""


@dataclass(frozen=True)
class CutStreamReply:
    """Stream the role chunk and ``chunks``, then drop the connection without ``[DONE]``."""

    chunks: tuple[str, ...] = ("partial",)


@dataclass(frozen=True)
class MalformedChunkReply:
    """Stream the role chunk and ``chunks``, then a ``data: {not json`` line, then ``[DONE]``."""

    chunks: tuple[str, ...] = ("before",)


@dataclass(frozen=True)
class ResetReply:
    """Reset the connection (TCP RST) without sending any response: "connection reset by peer"."""


Reply = (
    TextReply | ErrorReply | HangReply | EmptyStreamReply | CutStreamReply | MalformedChunkReply | ResetReply
)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    # time.monotonic() when the request arrived, to check the client's retry delays.
    at: float = field(default_factory=time.monotonic)

    @property
    def api_key(self) -> str | None:
        """The key from ``Authorization: Bearer <key>`` (or Azure's ``api-key``), else ``None``."""
        scheme, _, key = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and key:
            return key
        return self.headers.get("api-key") or None


@dataclass
class _Call:
    """What one completion request asked for, in the form the reply writers need."""

    legacy: bool
    model: str
    n: int
    stream: bool
    include_usage: bool
    prompt_words: int
    completion_id: str
    created: int = field(default_factory=lambda: int(time.time()))


def count_words(text: str) -> int:
    """A rough token count: whitespace-separated words."""
    return len(text.split())


def echo_text(body: Mapping[str, Any], legacy: bool) -> str:
    """The default answer: the last user message (or last prompt line) after ``ECHO_PREFIX``."""
    if legacy:
        prompt = body.get("prompt", "")
        text = "\n".join(prompt) if isinstance(prompt, list) else str(prompt)
        lines = text.splitlines()
        return ECHO_PREFIX + (lines[-1] if lines else "")
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            return ECHO_PREFIX + message_text(message.get("content"))
    return ECHO_PREFIX


def context_echo_text(body: Mapping[str, Any]) -> str:
    """The echo plus what the model saw: the last user turn, then the earlier ones.

    The earlier user turns are listed in the order they were sent, joined with ``CONTEXT_JOIN``.
    """
    messages = body.get("messages", [])
    users = [message_text(m.get("content")) for m in messages if m.get("role") == "user"]
    answers = sum(m.get("role") == "assistant" for m in messages)
    *earlier, last = users or [""]
    return (
        f"{ECHO_PREFIX}{last}{CONTEXT_MARK}{len(earlier)} earlier user turns, {answers} answers: "
        + CONTEXT_JOIN.join(earlier)
    )


def message_text(content: Any) -> str:
    """The text of a message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def prompt_text(body: Mapping[str, Any], legacy: bool) -> str:
    """All the prompt text of a request, for the rough usage count."""
    if legacy:
        prompt = body.get("prompt", "")
        return " ".join(prompt) if isinstance(prompt, list) else str(prompt)
    return " ".join(message_text(m.get("content")) for m in body.get("messages", []))


def choice_texts(reply: TextReply, n: int) -> list[str]:
    """The full text of each of the ``n`` choices."""
    return [reply.text + (f" #{i}" if i else "") for i in range(n)]


def usage_dict(call: _Call, texts: list[str]) -> dict[str, int]:
    """The ``usage`` object with word-count tokens."""
    completion = sum(count_words(t) for t in texts)
    return {
        "prompt_tokens": call.prompt_words,
        "completion_tokens": completion,
        "total_tokens": call.prompt_words + completion,
    }


def json_response(
    payload: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` exactly, as the real API sends."""
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )


def error_response(error: ErrorReply) -> web.Response:
    """The HTTP response for an ``ErrorReply``."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    return json_response(error.body(), status=error.status, headers=headers)


def reset_connection(request: web.Request) -> web.Response:
    """Abort the request's connection with a TCP RST (SO_LINGER 0); the response is never sent."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=499)  # for aiohttp only: nobody is left to read it


def sse_event(payload: Mapping[str, Any]) -> bytes:
    """One ``data: {json}`` server-sent event."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk_payload(
    call: _Call, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
) -> dict[str, Any]:
    """A streamed ``chat.completion.chunk`` or legacy ``text_completion`` object."""
    payload: dict[str, Any] = {
        "id": call.completion_id,
        "object": "text_completion" if call.legacy else "chat.completion.chunk",
        "created": call.created,
        "model": call.model,
        "choices": choices,
    }
    if usage is not None:
        payload["usage"] = usage
    return payload


def delta_choice(
    call: _Call, index: int, text: str | None, finish_reason: str | None = None
) -> dict[str, Any]:
    """One streamed choice; ``text=None`` is the role chunk (chat) or the empty final chunk."""
    if call.legacy:
        return {
            "text": text or "",
            "index": index,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
    if text is None:
        delta = {} if finish_reason else {"role": "assistant", "content": ""}
    else:
        delta = {"content": text}
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def opening_events(call: _Call) -> Iterator[bytes]:
    """The role chunk of each choice (chat only; the legacy API has none)."""
    if not call.legacy:
        for i in range(call.n):
            yield sse_event(chunk_payload(call, [delta_choice(call, i, None)]))


def content_events(call: _Call, chunk: str) -> bytes:
    """One content chunk for every choice."""
    return b"".join(sse_event(chunk_payload(call, [delta_choice(call, i, chunk)])) for i in range(call.n))


def closing_events(call: _Call, reply: TextReply) -> Iterator[bytes]:
    """Choice suffixes, finish chunks, the optional usage chunk and ``[DONE]``."""
    for i in range(1, call.n):
        yield sse_event(chunk_payload(call, [delta_choice(call, i, f" #{i}")]))
    for i in range(call.n):
        yield sse_event(chunk_payload(call, [delta_choice(call, i, None, reply.finish_reason)]))
    if call.include_usage and reply.usage:
        yield sse_event(chunk_payload(call, [], usage_dict(call, choice_texts(reply, call.n))))
    yield SSE_DONE


def completion_payload(call: _Call, reply: TextReply) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` or ``text_completion`` object."""
    texts = choice_texts(reply, call.n)
    if call.legacy:
        choices = [
            {"text": t, "index": i, "finish_reason": reply.finish_reason, "logprobs": None}
            for i, t in enumerate(texts)
        ]
    else:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
            for i, t in enumerate(texts)
        ]
    payload: dict[str, Any] = {
        "id": call.completion_id,
        "object": "text_completion" if call.legacy else "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": choices,
    }
    if reply.usage:
        payload["usage"] = usage_dict(call, texts)
    return payload


class FakeOpenAI(LocalServer):
    """A fake OpenAI API on ``127.0.0.1``: ``async with FakeOpenAI() as fake: fake.base_url``."""

    def __init__(
        self, *, models: list[str] | None = None, api_key: str | None = None, echo_context: bool = False
    ) -> None:
        """Serve ``models`` at ``GET /v1/models``; with ``api_key`` set, another key gets 401.

        With ``echo_context``, the chat echo also lists the earlier turns (``context_echo_text``).
        """
        super().__init__()
        self.models: list[str] = list(models) if models is not None else list(DEFAULT_MODELS)
        self.api_key = api_key
        self.echo_context = echo_context
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._ids = itertools.count(1)

    def build_app(self) -> web.Application:
        """The OpenAI routes, Azure's deployment route, and 404s in OpenAI's shape."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        # Azure OpenAI: the deployment is in the path and the version in the query.
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat_completions)
        app.router.add_route("*", "/{tail:.*}", self._unknown_route)
        return app

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give the client."""
        return f"http://{HOST}:{self.port}/v1"

    def enqueue(self, *replies: Reply) -> None:
        """Script the next replies, first in first out."""
        self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """How many scripted replies are still queued."""
        return len(self._replies)

    @property
    def request_count(self) -> int:
        """How many requests were received (all paths)."""
        return len(self.requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request."""
        if not self.requests:
            raise AssertionError("FakeOpenAI received no request")
        return self.requests[-1]

    @property
    def last_body(self) -> dict[str, Any]:
        """The JSON body of the most recent request."""
        return self.last_request.body

    async def _record(self, request: web.Request) -> RecordedRequest | web.Response:
        """Record the request; answer an auth or JSON problem right away."""
        body: dict[str, Any] = {}
        raw = await request.read()
        problem: ErrorReply | None = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                problem = ErrorReply(
                    400,
                    "We could not parse the JSON body of your request.",
                    "invalid_request_error",
                )
            else:
                body = parsed if isinstance(parsed, dict) else {"_": parsed}
        recorded = RecordedRequest(request.method, request.path, body, dict(request.headers))
        self.requests.append(recorded)
        auth_problem = self._auth_problem(recorded)
        if auth_problem is not None:
            return error_response(auth_problem)
        return error_response(problem) if problem is not None else recorded

    def _auth_problem(self, recorded: RecordedRequest) -> ErrorReply | None:
        """The 401 for a missing key, or for a wrong one when ``api_key`` is set."""
        key = recorded.api_key
        if key is None:
            return ErrorReply(401, MISSING_KEY_MESSAGE, "invalid_request_error")
        if self.api_key is not None and key != self.api_key:
            message = f"Incorrect API key provided: {key[:4]}***."
            return ErrorReply(401, message, "invalid_request_error", "invalid_api_key")
        return None

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        return await self._complete(request, legacy=False)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        return await self._complete(request, legacy=True)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``."""
        recorded = await self._record(request)
        if isinstance(recorded, web.Response):
            return recorded
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return json_response({"object": "list", "data": data})

    async def _unknown_route(self, request: web.Request) -> web.StreamResponse:
        """Any other path: the real API's 404 for an invalid URL."""
        recorded = await self._record(request)
        if isinstance(recorded, web.Response):
            return recorded
        message = f"Invalid URL ({request.method} {request.path})"
        return error_response(ErrorReply(404, message, "invalid_request_error"))

    async def _complete(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        """Answer one completion request with the next scripted reply, or the echo."""
        recorded = await self._record(request)
        if isinstance(recorded, web.Response):
            return recorded
        body = recorded.body
        echo = TextReply((self._echo(body, legacy),))
        reply: Reply = self._replies.popleft() if self._replies else echo
        if isinstance(reply, HangReply):
            await asyncio.sleep(reply.seconds)
            reply = reply.then or echo
        if isinstance(reply, ErrorReply):
            return error_response(reply)
        if isinstance(reply, ResetReply):
            return reset_connection(request)
        stream_options = body.get("stream_options") or {}
        call = _Call(
            legacy=legacy,
            model=str(body.get("model", DEFAULT_MODEL)),
            n=max(1, int(body.get("n") or 1)),
            stream=bool(body.get("stream")),
            include_usage=bool(stream_options.get("include_usage")),
            prompt_words=count_words(prompt_text(body, legacy)),
            completion_id=f"{'cmpl' if legacy else 'chatcmpl'}-fake{next(self._ids)}",
        )
        if isinstance(reply, TextReply) and not call.stream:
            await asyncio.sleep(reply.chunk_delay_s * len(reply.chunks))
            return json_response(completion_payload(call, reply))
        # Every other reply kind is a stream, whatever the request asked for.
        return await self._stream(request, call, reply)

    def _echo(self, body: Mapping[str, Any], legacy: bool) -> str:
        """The unscripted answer: the echo, with the earlier turns when ``echo_context`` is set."""
        if self.echo_context and not legacy:
            return context_echo_text(body)
        return echo_text(body, legacy)

    async def _stream(self, request: web.Request, call: _Call, reply: Reply) -> web.StreamResponse:
        """Write a streamed reply (normal, empty, cut or malformed)."""
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        if isinstance(reply, EmptyStreamReply):
            await response.write(SSE_DONE)
        elif isinstance(reply, TextReply):
            for event in opening_events(call):
                await response.write(event)
            for chunk in reply.chunks:
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
                await response.write(content_events(call, chunk))
            for event in closing_events(call, reply):
                await response.write(event)
        elif isinstance(reply, CutStreamReply | MalformedChunkReply):
            events = list(opening_events(call)) + [content_events(call, chunk) for chunk in reply.chunks]
            await response.write(b"".join(events))
            if isinstance(reply, CutStreamReply):
                # Closing the socket mid chunked body: the client sees an incomplete message.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write(MALFORMED_LINE + SSE_DONE)
        await response.write_eof()
        return response
