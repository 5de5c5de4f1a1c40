"""The HTTP API for real: the adapter on a free port, SQLite on tmp_path, the model client on FakeOpenAI."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from bot.config import Settings
from bot.logsetup import REDACTED, RedactingFormatter, secrets_of
from tests.fakes.openai_server import (
    CutStreamReply,
    EmptyStreamReply,
    ErrorReply,
    FakeOpenAI,
    HangReply,
    RecordedRequest,
    TextReply,
)
from tests.helpers import (
    CLIENT_TIMEOUT_S,
    HOST,
    Relay,
    bot_env,
    free_port,
    roles_and_contents,
    running_bot,
    running_relay,
)

HELLO = "Hello, ChatGPT!"
SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_MODEL = "gpt-4o-mini"
OTHER_MODEL = "gpt-4o"
ALLOWED_MODELS = [OTHER_MODEL, "gpt-4.1-mini"]
RELAY_KEY = "relay-key-0123456789"
UPSTREAM_SECRET = "sk-upstream-secret"
VISIBLE_SECRET = "sk-test-visible-secret"
EXIT_TIMEOUT_S = 15.0
SUBPROCESS_TIMEOUT_S = 30.0
ENV_PREFIXES = ("OPENAI_", "GPTRELAY_", "AZURE_OPENAI_")
CHAT_PATH = "/v1/chat/completions"
README = Path(__file__).resolve().parents[1] / "README.md"
README_CURL = (
    "curl -X POST http://localhost:5000/ask_gpt -H 'Content-Type: application/json' "
    """-d '{"prompt": "Hello, ChatGPT!"}'"""
)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OPENAI_*/GPTRELAY_* variable or .env file of the developer leaks into Settings."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    """A running fake OpenAI-compatible server."""
    async with FakeOpenAI() as server:
        yield server


def make_settings(fake: FakeOpenAI, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a relay on a free loopback port, its store on tmp_path, its model on the fake."""
    values: dict[str, Any] = {
        "openai_base_url": fake.base_url,
        "data_dir": tmp_path / "data",
        "http_port": 0,
        "allowed_models": ALLOWED_MODELS,
        "model_max_retries": 0,
        **overrides,
    }
    return Settings(**values, _env_file=None)  # type: ignore[call-arg]


async def ask(relay: Relay, body: Any, **kwargs: Any) -> tuple[int, Any]:
    """POST /ask_gpt with a JSON body; return the status and the parsed JSON answer."""
    async with relay.session.post("/ask_gpt", json=body, **kwargs) as response:
        return response.status, await response.json()


@pytest.fixture
async def relay(fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Relay]:
    """A relay with default settings (plus two allowed models)."""
    async with running_relay(make_settings(fake, tmp_path)) as running:
        yield running


@pytest.fixture
async def client(relay: Relay) -> AsyncIterator[AsyncOpenAI]:
    """The official openai client talking to the relay."""
    api = relay.openai_client()
    yield api
    await api.close()


def model_requests(fake: FakeOpenAI) -> list[RecordedRequest]:
    """The chat completion requests the relay sent upstream."""
    return [r for r in fake.requests if r.path == CHAT_PATH]


def assert_json_error(status: int, body: Any, expected_status: int, *fragments: str) -> str:
    """The answer is OpenAI's error shape, with the status and a message naming each fragment."""
    assert status == expected_status, body
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    message = body["error"]["message"]
    assert isinstance(message, str)
    assert message
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message
    return message


async def collect_text(stream: AsyncStream[ChatCompletionChunk], received: list[str]) -> None:
    """Append each streamed delta's content to `received` (kept if the stream raises)."""
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)


# ---------------------------------------------------------------- /ask_gpt: answers and context


async def test_ask_gpt_answers_the_readme_example(relay: Relay, fake: FakeOpenAI) -> None:
    """The documented request gets `{"message": ...}` built from the model's answer."""
    async with relay.session.post(
        "/ask_gpt",
        data=json.dumps({"prompt": HELLO}),
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body == {"message": f"echo: {HELLO}"}
    assert roles_and_contents(fake.last_body) == [("system", SYSTEM_PROMPT), ("user", HELLO)]
    assert fake.last_body["model"] == DEFAULT_MODEL


async def test_ask_gpt_without_user_is_stateless(relay: Relay, fake: FakeOpenAI) -> None:
    """Without `user`, a second call carries no earlier turn."""
    assert await ask(relay, {"prompt": "first"}) == (200, {"message": "echo: first"})
    assert await ask(relay, {"prompt": "second"}) == (200, {"message": "echo: second"})
    assert roles_and_contents(fake.last_body) == [("system", SYSTEM_PROMPT), ("user", "second")]
    assert len(model_requests(fake)) == 2


async def test_ask_gpt_with_user_continues_the_conversation(relay: Relay, fake: FakeOpenAI) -> None:
    """With `user`, the second call's model request holds the first turn."""
    assert await ask(relay, {"prompt": "first", "user": "alice"}) == (200, {"message": "echo: first"})
    assert await ask(relay, {"prompt": "second", "user": "alice"}) == (200, {"message": "echo: second"})
    assert roles_and_contents(fake.last_body) == [
        ("system", SYSTEM_PROMPT),
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
    ]


async def test_ask_gpt_users_have_separate_contexts(relay: Relay, fake: FakeOpenAI) -> None:
    """Alice's turns never reach Bob's model requests, and the other way round."""
    await ask(relay, {"prompt": "alice one", "user": "alice"})
    await ask(relay, {"prompt": "bob one", "user": "bob"})
    assert roles_and_contents(fake.last_body) == [("system", SYSTEM_PROMPT), ("user", "bob one")]
    await ask(relay, {"prompt": "alice two", "user": "alice"})
    contents = [content for _, content in roles_and_contents(fake.last_body)]
    assert contents == [SYSTEM_PROMPT, "alice one", "echo: alice one", "alice two"]


async def test_ask_gpt_reset_starts_a_fresh_conversation(relay: Relay, fake: FakeOpenAI) -> None:
    """`/reset` as the prompt answers without the model; the next request has no earlier turn."""
    await ask(relay, {"prompt": "remember this", "user": "alice"})
    status, body = await ask(relay, {"prompt": "/reset", "user": "alice"})
    assert status == 200
    assert "fresh conversation" in body["message"]
    assert len(model_requests(fake)) == 1
    await ask(relay, {"prompt": "after reset", "user": "alice"})
    assert roles_and_contents(fake.last_body) == [("system", SYSTEM_PROMPT), ("user", "after reset")]


# ---------------------------------------------------------------- /ask_gpt: overrides


async def test_ask_gpt_overrides_reach_the_model(relay: Relay, fake: FakeOpenAI) -> None:
    """model, max_tokens, temperature and a string stop are sent upstream as given."""
    body = {"prompt": "hi", "model": OTHER_MODEL, "max_tokens": 10, "temperature": 0.25, "stop": "END"}
    assert await ask(relay, body) == (200, {"message": "echo: hi"})
    sent = fake.last_body
    assert sent["model"] == OTHER_MODEL
    assert sent["max_tokens"] == 10
    assert sent["temperature"] == 0.25
    assert sent["stop"] == ["END"]


async def test_ask_gpt_stop_list_and_defaults(relay: Relay, fake: FakeOpenAI) -> None:
    """A stop list is passed whole; without overrides the configured defaults are sent."""
    await ask(relay, {"prompt": "hi", "stop": ["A", "B"]})
    assert fake.last_body["stop"] == ["A", "B"]
    await ask(relay, {"prompt": "hi"})
    sent = fake.last_body
    assert "stop" not in sent
    assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["n"]) == (DEFAULT_MODEL, 512, 0.7, 1)


@pytest.mark.parametrize("user", [None, "alice"])
async def test_ask_gpt_n_returns_every_choice(relay: Relay, fake: FakeOpenAI, user: str | None) -> None:
    """n=2 answers `message` (the first choice) and `messages` (all of them)."""
    body: dict[str, Any] = {"prompt": "hi", "n": 2}
    if user:
        body["user"] = user
    status, answer = await ask(relay, body)
    assert status == 200
    assert answer == {"message": "echo: hi", "messages": ["echo: hi", "echo: hi #1"]}
    assert fake.last_body["n"] == 2


# ---------------------------------------------------------------- /ask_gpt: refused input

NESTED_ARRAY = b"[" * 100_000 + b"]" * 100_000
NESTED_IN_OBJECT = b'{"prompt": ' + NESTED_ARRAY + b"}"

BAD_BODIES = [
    pytest.param(b"Hello, ChatGPT!", ("not valid JSON",), id="not-json"),
    pytest.param(b"", ("empty body",), id="empty-body"),
    pytest.param(b"   \n", ("empty body",), id="blank-body"),
    pytest.param(b'["Hello"]', ("JSON object",), id="json-array"),
    pytest.param(b'"Hello"', ("JSON object",), id="json-string"),
    pytest.param(b'{"prompt": "caf\xe9"}', ("UTF-8",), id="invalid-utf8"),
    pytest.param(b"{}", ("prompt", "required"), id="missing-prompt"),
    pytest.param(b'{"prompt": ""}', ("prompt", "empty"), id="empty-prompt"),
    pytest.param(b'{"prompt": " \\n\\t "}', ("prompt", "empty"), id="blank-prompt"),
    pytest.param(b'{"prompt": 123}', ("prompt", "string"), id="prompt-int"),
    pytest.param(b'{"prompt": null}', ("prompt",), id="prompt-null"),
    pytest.param(b'{"prompt": "hi", "max_tokens": "10"}', ("max_tokens", "integer"), id="max-tokens-str"),
    pytest.param(b'{"prompt": "hi", "max_tokens": 0}', ("max_tokens",), id="max-tokens-zero"),
    pytest.param(b'{"prompt": "hi", "temperature": 5}', ("temperature", "2"), id="temperature-5"),
    pytest.param(b'{"prompt": "hi", "n": 0}', ("n:",), id="n-zero"),
    pytest.param(b'{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}', ("stop", "4"), id="stop-5"),
    pytest.param(b'{"promt": "hi"}', ("promt", "prompt"), id="typo-field"),
    pytest.param(b'{"prompt": "hi", "user": ""}', ("user",), id="empty-user"),
    pytest.param(NESTED_ARRAY, ("nested",), id="nested-array"),
    pytest.param(NESTED_IN_OBJECT, ("nested",), id="nested-in-object"),
]


@pytest.mark.parametrize(("raw", "fragments"), BAD_BODIES)
async def test_ask_gpt_refuses_bad_input(
    relay: Relay, fake: FakeOpenAI, raw: bytes, fragments: tuple[str, ...]
) -> None:
    """Each malformed body is a 400 in OpenAI's error shape saying what is wrong; no model call."""
    headers = {"Content-Type": "application/json"}
    async with relay.session.post("/ask_gpt", data=raw, headers=headers) as response:
        text = await response.text()
        assert response.content_type == "application/json"
    assert "Traceback" not in text
    assert_json_error(response.status, json.loads(text), 400, *fragments)
    assert fake.requests == []


async def test_ask_gpt_refuses_a_model_not_allowed(relay: Relay, fake: FakeOpenAI) -> None:
    """A model outside the allowed list is a 400 naming the allowed ones."""
    status, body = await ask(relay, {"prompt": "hi", "model": "gpt-5-secret"})
    assert_json_error(status, body, 400, "gpt-5-secret", DEFAULT_MODEL, *ALLOWED_MODELS)
    status, body = await ask(relay, {"prompt": "hi", "model": "gpt-5-secret", "user": "alice"})
    assert_json_error(status, body, 400, "gpt-5-secret", DEFAULT_MODEL, *ALLOWED_MODELS)
    assert fake.requests == []


async def test_ask_gpt_refuses_a_body_over_the_limit(relay: Relay, fake: FakeOpenAI) -> None:
    """A body over http_max_body_bytes (1 MB by default) is a 413 JSON error."""
    assert relay.runtime.settings.http_max_body_bytes == 1_048_576
    raw = io.BytesIO(json.dumps({"prompt": "x" * 1_048_576}).encode())
    async with relay.session.post(
        "/ask_gpt", data=raw, headers={"Content-Type": "application/json"}
    ) as response:
        body = await response.json()
    assert_json_error(response.status, body, 413, "too large")
    assert fake.requests == []


async def test_ask_gpt_accepts_a_large_body_under_the_limit(relay: Relay, fake: FakeOpenAI) -> None:
    """Just under the limit is still served (the limit is not off by a lot)."""
    prompt = "word " * 150_000  # ~750 kB
    fake.enqueue(TextReply(("ok",)))
    status, body = await ask(relay, {"prompt": prompt, "max_tokens": 10, "model": "gpt-4.1-mini"})
    assert (status, body) == (200, {"message": "ok"})


async def test_get_ask_gpt_is_405_json(relay: Relay) -> None:
    """Only POST is allowed; the refusal is JSON like every other error."""
    async with relay.session.get("/ask_gpt") as response:
        body = await response.json()
    assert_json_error(response.status, body, 405)
    assert response.headers["Allow"] == "POST"


async def test_unknown_path_is_404_json(relay: Relay) -> None:
    """An unknown path is a JSON 404, not aiohttp's text page."""
    async with relay.session.post("/ask_gtp", json={"prompt": "hi"}) as response:
        body = await response.json()
    assert_json_error(response.status, body, 404)


# ---------------------------------------------------------------- /ask_gpt: model failures


@pytest.mark.parametrize("user", [None, "alice"])
async def test_ask_gpt_upstream_auth_failure_is_sanitised_502(
    relay: Relay, fake: FakeOpenAI, user: str | None
) -> None:
    """A 401 from the model service is a 502 whose text does not repeat the upstream message."""
    upstream = f"Incorrect API key provided: {UPSTREAM_SECRET}."
    fake.enqueue(ErrorReply(401, upstream, "invalid_request_error", "invalid_api_key"))
    body: dict[str, Any] = {"prompt": "hi"} if user is None else {"prompt": "hi", "user": user}
    async with relay.session.post("/ask_gpt", json=body) as response:
        text = await response.text()
    assert UPSTREAM_SECRET not in text
    assert "Incorrect API key" not in text
    assert_json_error(response.status, json.loads(text), 502, "credentials")


@pytest.mark.parametrize("user", [None, "alice"])
async def test_ask_gpt_upstream_rate_limit_is_429_with_retry_after(
    relay: Relay, fake: FakeOpenAI, user: str | None
) -> None:
    """A 429 upstream is a 429 here, with the upstream's Retry-After passed on."""
    fake.enqueue(ErrorReply.for_status(429, retry_after=3))
    body: dict[str, Any] = {"prompt": "hi"} if user is None else {"prompt": "hi", "user": user}
    async with relay.session.post("/ask_gpt", json=body) as response:
        answer = await response.json()
        retry_after = response.headers.get("Retry-After")
    assert_json_error(response.status, answer, 429, "try again")
    assert retry_after == "3"


async def test_ask_gpt_upstream_timeout_is_504(fake: FakeOpenAI, tmp_path: Path) -> None:
    """A model that does not answer within request_timeout_s is a 504, promptly."""
    settings = make_settings(fake, tmp_path, request_timeout_s=0.3)
    fake.enqueue(HangReply(5.0))
    async with running_relay(settings) as relay:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body = await ask(relay, {"prompt": "hi"})
        elapsed = loop.time() - started
    assert_json_error(status, body, 504, "too long")
    assert elapsed < 3.0


# A cut stream surfaces from the client as APIConnectionError after some text; bot.model classifies
# that as ErrorKind.SERVER (the server was reached), which http_schemas maps to 502.
@pytest.mark.parametrize(
    ("reply", "expected_status", "code"),
    [(EmptyStreamReply(), 502, "empty"), (CutStreamReply(("partial",)), 502, "server")],
    ids=["empty-stream", "cut-stream"],
)
async def test_ask_gpt_broken_stream_with_user_is_5xx(
    relay: Relay,
    fake: FakeOpenAI,
    reply: EmptyStreamReply | CutStreamReply,
    expected_status: int,
    code: str,
) -> None:
    """A streamed answer that is empty or cut off is a gateway error, and the broken turn is not context."""
    fake.enqueue(reply)
    status, body = await ask(relay, {"prompt": "broken", "user": "alice"})
    assert_json_error(status, body, expected_status)
    assert body["error"]["code"] == code
    assert "partial" not in body["error"]["message"]
    assert fake.last_body["stream"] is True
    assert await ask(relay, {"prompt": "again", "user": "alice"}) == (200, {"message": "echo: again"})
    assert roles_and_contents(fake.last_body) == [("system", SYSTEM_PROMPT), ("user", "again")]


# ---------------------------------------------------------------- OpenAI-compatible routes


async def test_models_lists_the_allowed_models(client: AsyncOpenAI) -> None:
    """GET /v1/models lists the default model first, then the allowed ones."""
    page = await client.models.list()
    assert [m.id for m in page.data] == [DEFAULT_MODEL, *ALLOWED_MODELS]


async def test_chat_completion(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """A whole completion carries the content, the model and the upstream usage."""
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi there"}]
    )
    assert completion.object == "chat.completion"
    assert completion.model == DEFAULT_MODEL
    assert completion.choices[0].message.content == "echo: hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    assert completion.usage.total_tokens == 5
    # Stateless: only the caller's messages, no stored context or system prompt added.
    assert roles_and_contents(fake.last_body) == [("user", "hi there")]


async def test_chat_completion_passes_settings(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """Model, max_completion_tokens, temperature and stop reach the model; roles are kept."""
    completion = await client.chat.completions.create(
        model=OTHER_MODEL,
        messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_completion_tokens=7,
        temperature=0,
        stop=["x"],
    )
    assert completion.model == OTHER_MODEL
    sent = fake.last_body
    assert (sent["model"], sent["max_tokens"], sent["temperature"], sent["stop"]) == (
        OTHER_MODEL,
        7,
        0,
        ["x"],
    )
    assert roles_and_contents(sent) == [("system", "be brief"), ("user", "hi")]


async def test_chat_completion_n_2(client: AsyncOpenAI) -> None:
    """n=2 returns both choices with their indexes."""
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], n=2
    )
    assert [(c.index, c.message.content) for c in completion.choices] == [(0, "echo: hi"), (1, "echo: hi #1")]


async def test_chat_completion_stream(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """Streamed deltas join to the model's answer."""
    fake.enqueue(TextReply(("Hel", "lo", " world")))
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []
    await collect_text(stream, received)
    assert received == ["Hel", "lo", " world"]
    assert fake.last_body["stream"] is True


async def test_chat_completion_stream_with_usage(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """With include_usage, the last chunk has no choices and carries the usage."""
    fake.enqueue(TextReply(("a", "b")))
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "one two"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ab"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 1)
    assert all(c.usage is None for c in chunks[:-1])


async def test_chat_completion_multipart_content(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """Text parts of a multi-part message are joined; other parts are left out."""
    completion = await client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hello, "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "parts"},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "echo: Hello, parts"
    assert roles_and_contents(fake.last_body) == [("user", "Hello, parts")]


async def test_chat_completion_model_not_allowed(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """A model outside the allowed list is the client's BadRequestError, naming the allowed ones."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-5-secret", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 400
    assert DEFAULT_MODEL in caught.value.message
    assert OTHER_MODEL in caught.value.message
    assert fake.requests == []


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_completion_upstream_rate_limit(
    client: AsyncOpenAI, fake: FakeOpenAI, stream: bool
) -> None:
    """A 429 upstream is the client's RateLimitError, streamed or not."""
    fake.enqueue(ErrorReply.for_status(429, retry_after=2))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=stream
        )
    assert caught.value.response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (ErrorReply.for_status(500), openai.InternalServerError),
        (ErrorReply(401, f"bad key {UPSTREAM_SECRET}", "invalid_request_error"), openai.InternalServerError),
        (EmptyStreamReply(), openai.InternalServerError),
    ],
    ids=["upstream-500", "upstream-401", "empty-stream"],
)
async def test_chat_completion_stream_failing_before_first_token(
    client: AsyncOpenAI, fake: FakeOpenAI, reply: ErrorReply | EmptyStreamReply, expected: type[Exception]
) -> None:
    """A stream that fails before any text is an HTTP error status, not a hung or empty 200 stream."""
    fake.enqueue(reply)
    async with asyncio.timeout(CLIENT_TIMEOUT_S):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
    assert isinstance(caught.value, expected)
    assert caught.value.status_code == 502
    assert UPSTREAM_SECRET not in caught.value.message


async def test_chat_completion_stream_cut_midway(client: AsyncOpenAI, fake: FakeOpenAI) -> None:
    """A stream cut after some text delivers that text, then an error the client raises."""
    fake.enqueue(CutStreamReply(("partial",)))
    stream = await client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[str] = []
    async with asyncio.timeout(CLIENT_TIMEOUT_S):
        with pytest.raises(openai.APIError):
            await collect_text(stream, received)
    assert received == ["partial"]


class _EventOnLog(logging.Handler):
    """Sets an event when a record containing `text` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        """Watch for the text."""
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def disconnect_seen() -> Iterator[asyncio.Event]:
    """An event set when the HTTP adapter logs a client disconnect."""
    watcher = _EventOnLog("client disconnected")
    logger = logging.getLogger("adapters.http")
    logger.addHandler(watcher)
    yield watcher.seen
    logger.removeHandler(watcher)


async def test_client_leaving_a_stream_is_not_an_error(
    relay: Relay, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, disconnect_seen: asyncio.Event
) -> None:
    """A client that stops reading mid-stream is logged as a disconnect, without a traceback."""
    caplog.set_level(logging.INFO, logger="adapters")
    fake.enqueue(TextReply(("tick",) * 100, chunk_delay_s=0.02))
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with relay.session.post(CHAT_PATH, json=body) as response:
        assert response.status == 200
        assert b"tick" in await response.content.readuntil(b"tick")
        response.close()
    async with asyncio.timeout(CLIENT_TIMEOUT_S):
        await disconnect_seen.wait()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await ask(relay, {"prompt": "still there?"}) == (200, {"message": "echo: still there?"})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": DEFAULT_MODEL}, id="no-messages"),
        pytest.param({"model": DEFAULT_MODEL, "messages": []}, id="empty-messages"),
        pytest.param(
            {"model": DEFAULT_MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, id="bad-role"
        ),
        pytest.param(
            {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 99}, id="n-99"
        ),
    ],
)
async def test_chat_completion_refuses_bad_bodies(
    relay: Relay, fake: FakeOpenAI, body: dict[str, Any]
) -> None:
    """Invalid chat requests are 400s in OpenAI's error shape."""
    async with relay.session.post(CHAT_PATH, json=body) as response:
        answer = await response.json()
    assert_json_error(response.status, answer, 400)
    assert fake.requests == []


# ---------------------------------------------------------------- auth and health


@pytest.fixture
async def keyed_relay(fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Relay]:
    """A relay that demands RELAY_KEY as a bearer token."""
    async with running_relay(make_settings(fake, tmp_path, api_key=RELAY_KEY)) as running:
        yield running


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong-key-0123456789"}, id="wrong-key"),
        pytest.param({"Authorization": RELAY_KEY}, id="no-scheme"),
        pytest.param({"Authorization": f"Basic {RELAY_KEY}"}, id="wrong-scheme"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/ask_gpt"), ("POST", CHAT_PATH), ("GET", "/v1/models")]
)
async def test_api_key_is_required(
    keyed_relay: Relay, fake: FakeOpenAI, headers: dict[str, str], method: str, path: str
) -> None:
    """With api_key set, a request without the right bearer token is a 401 JSON error."""
    body = {"prompt": "hi", "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with keyed_relay.session.request(method, path, json=body, headers=headers) as response:
        answer = await response.json()
    message = assert_json_error(response.status, answer, 401, "Bearer")
    assert RELAY_KEY not in message
    assert fake.requests == []


async def test_api_key_accepted(keyed_relay: Relay) -> None:
    """The right bearer token is served, by plain HTTP and by the openai client."""
    headers = {"Authorization": f"Bearer {RELAY_KEY}"}
    assert await ask(keyed_relay, {"prompt": "hi"}, headers=headers) == (200, {"message": "echo: hi"})
    api = keyed_relay.openai_client(api_key=RELAY_KEY)
    try:
        completion = await api.chat.completions.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "yo"}]
        )
        assert completion.choices[0].message.content == "echo: yo"
    finally:
        await api.close()


async def test_openai_client_with_wrong_key(keyed_relay: Relay) -> None:
    """The openai client with a wrong key gets its AuthenticationError."""
    api = keyed_relay.openai_client(api_key="sk-wrong-0123456789")
    try:
        with pytest.raises(openai.AuthenticationError):
            await api.models.list()
    finally:
        await api.close()


async def test_healthz_needs_no_key(keyed_relay: Relay) -> None:
    """/healthz answers without a key even when one is required."""
    async with keyed_relay.session.get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_healthz(relay: Relay) -> None:
    """GET /healthz reports ok."""
    async with relay.session.get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


# ---------------------------------------------------------------- configuration and the command line


def test_public_bind_without_key_is_a_problem(tmp_path: Path) -> None:
    """Binding 0.0.0.0 without api_key is reported; with a key, or on loopback, it is not."""
    base = {"openai_base_url": "http://127.0.0.1:9/v1", "data_dir": tmp_path, "_env_file": None}
    public = Settings(**base, http_host="0.0.0.0")  # type: ignore[arg-type]
    assert any("GPTRELAY_API_KEY" in p and "0.0.0.0" in p for p in public.problems())
    keyed = Settings(**base, http_host="0.0.0.0", api_key=RELAY_KEY)  # type: ignore[arg-type]
    assert keyed.problems() == []
    local = Settings(**base)  # type: ignore[arg-type]
    assert local.problems() == []


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot ARGS` with only PATH, HOME and `env` in its environment."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )


def test_check_masks_the_api_key(tmp_path: Path) -> None:
    """`gptrelay check` prints the settings with the key masked and exits 0."""
    result = run_cli(["check"], tmp_path, OPENAI_API_KEY=VISIBLE_SECRET)
    assert result.returncode == 0, result.stderr
    assert VISIBLE_SECRET not in result.stdout
    assert VISIBLE_SECRET not in result.stderr
    assert "**********" in result.stdout
    assert "openai" in result.stdout  # the backend
    assert "problem" not in result.stdout


def test_run_without_a_usable_model_exits_2(tmp_path: Path) -> None:
    """`gptrelay run` with no remote model and a missing local GGUF stops with exit 2 and says what to set."""
    result = run_cli(["run"], tmp_path, GPTRELAY_LOCAL_MODEL=str(tmp_path / "missing.gguf"))
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- logging


@pytest.fixture
def log_output() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger whose handler formats with the redacting formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    settings = Settings(openai_api_key=UPSTREAM_SECRET, api_key=RELAY_KEY, _env_file=None)  # type: ignore[call-arg]
    handler.setFormatter(RedactingFormatter(secrets_of(settings)))
    logger = logging.getLogger("tests.test_http.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_log_lines_never_show_secrets(log_output: tuple[logging.Logger, io.StringIO]) -> None:
    """Secrets are redacted from messages, arguments and tracebacks alike."""
    logger, stream = log_output
    logger.info("using key %s and %s", UPSTREAM_SECRET, RELAY_KEY)
    try:
        raise RuntimeError(f"upstream refused key {UPSTREAM_SECRET}")
    except RuntimeError:
        logger.exception("model call failed")
    output = stream.getvalue()
    assert UPSTREAM_SECRET not in output
    assert RELAY_KEY not in output
    assert output.count(REDACTED) == 3
    assert "RuntimeError: upstream refused key " + REDACTED in output
    assert "Traceback" in output


# ---------------------------------------------------------------- the real process


def readme_curl(port: int) -> str:
    """The README's curl example, character for character, with the port changed."""
    lines = README.read_text(encoding="utf-8").splitlines()
    line = next(line for line in lines if line.startswith("curl ") and "/ask_gpt" in line)
    assert line == README_CURL
    return line.replace("localhost:5000", f"localhost:{port}")


async def terminate(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr within EXIT_TIMEOUT_S."""
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(EXIT_TIMEOUT_S):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


async def test_bot_process_end_to_end(fake: FakeOpenAI, tmp_path: Path) -> None:
    """`gptrelay run` answers the README's curl, exits 0 on SIGTERM, and keeps context over a restart."""
    port = free_port()
    env = bot_env(fake.base_url, tmp_path, GPTRELAY_HTTP_PORT=str(port))
    ask_url = f"http://{HOST}:{port}/ask_gpt"
    async with running_bot(env, tmp_path, port) as process:
        shell = await asyncio.create_subprocess_shell(
            readme_curl(port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path
        )
        async with asyncio.timeout(SUBPROCESS_TIMEOUT_S):
            out, _ = await shell.communicate()
        assert shell.returncode == 0
        answer = json.loads(out)
        assert isinstance(answer["message"], str)
        assert answer["message"].strip()
        assert answer == {"message": f"echo: {HELLO}"}

        async with (
            aiohttp.ClientSession() as session,
            session.post(ask_url, json={"prompt": "remember me", "user": "carol"}) as response,
        ):
            assert response.status == 200
            assert await response.json() == {"message": "echo: remember me"}
        code, stderr = await terminate(process)
        assert code == 0, stderr
        assert "Traceback" not in stderr
    assert (tmp_path / "data" / "gptrelay.sqlite3").is_file()

    async with running_bot(env, tmp_path, port) as process:
        async with (
            aiohttp.ClientSession() as session,
            session.post(ask_url, json={"prompt": "again", "user": "carol"}) as response,
        ):
            assert response.status == 200
            assert await response.json() == {"message": "echo: again"}
        code, stderr = await terminate(process)
        assert code == 0, stderr
    assert roles_and_contents(fake.last_body) == [
        ("system", SYSTEM_PROMPT),
        ("user", "remember me"),
        ("assistant", "echo: remember me"),
        ("user", "again"),
    ]
