"""The fake OpenAI server, driven by the real ``openai`` client."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from tests.fakes.openai_server import (
    CutStreamReply,
    EmptyStreamReply,
    ErrorReply,
    FakeOpenAI,
    HangReply,
    MalformedChunkReply,
    TextReply,
)

API_KEY = "sk-test"
MODEL = "gpt-4o-mini"
CLIENT_TIMEOUT_S = 5.0
SHORT_TIMEOUT_S = 0.2
USER_HI: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    """A running fake server."""
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    """The real client pointed at the fake, without retries."""
    api = AsyncOpenAI(base_url=fake.base_url, api_key=API_KEY, max_retries=0, timeout=CLIENT_TIMEOUT_S)
    yield api
    await api.close()


async def raw_sse_events(fake: FakeOpenAI, body: dict[str, Any]) -> tuple[str, list[str]]:
    """POST a chat completion with plain aiohttp; return Content-Type and the ``data:`` payloads."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{fake.base_url}/chat/completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        text = await response.text()
        content_type = response.headers["Content-Type"]
    assert text.endswith("\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events)
    return content_type, [event.removeprefix("data: ") for event in events]


async def collect_contents(stream: AsyncStream[ChatCompletionChunk], received: list[str]) -> None:
    """Append each chunk's content to ``received`` (kept when the stream raises)."""
    async for chunk in stream:
        received.append(chunk.choices[0].delta.content or "")


async def test_stream_with_usage(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """Streamed chunks arrive one by one, then the finish chunk and the usage chunk."""
    fake.enqueue(TextReply(("Hel", "lo", " there")))
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER_HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert contents == ["Hel", "lo", " there"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 1
    assert chunks[-1].usage.completion_tokens == 2
    assert chunks[-1].usage.total_tokens == 3
    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert fake.last_request.path == "/v1/chat/completions"


async def test_stream_wire_format(fake: FakeOpenAI) -> None:
    """The raw SSE matches OpenAI's: role delta, content, empty finish delta, usage, ``[DONE]``."""
    fake.enqueue(TextReply(("a",)))
    body = {
        "model": MODEL,
        "messages": USER_HI,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    content_type, events = await raw_sse_events(fake, body)
    assert content_type == "text/event-stream"
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert {p["object"] for p in parsed} == {"chat.completion.chunk"}
    assert parsed[0]["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "finish_reason": None,
        "logprobs": None,
    }
    assert parsed[1]["choices"][0]["delta"] == {"content": "a"}
    assert parsed[2]["choices"][0]["delta"] == {}
    assert parsed[2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[3]["choices"] == []
    assert set(parsed[3]["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


async def test_stream_without_include_usage_has_no_usage_chunk(fake: FakeOpenAI) -> None:
    """Without ``stream_options.include_usage`` the stream ends with the finish chunk."""
    _, events = await raw_sse_events(fake, {"model": MODEL, "messages": USER_HI, "stream": True})
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in last


async def test_default_reply_echoes_last_user_message(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """With an empty queue the fake echoes the last user message and records the key."""
    messages: list[Any] = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    completion = await client.chat.completions.create(model=MODEL, messages=messages)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "echo: second"
    assert fake.last_request.api_key == API_KEY
    assert fake.last_request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert fake.request_count == 1


async def test_replies_are_fifo_then_echo(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """Scripted replies are used in order, then the echo takes over."""
    fake.enqueue(TextReply(("one",)), TextReply(("two",)))
    answers = [
        (await client.chat.completions.create(model=MODEL, messages=USER_HI)).choices[0].message.content
        for _ in range(3)
    ]
    assert answers == ["one", "two", "echo: hi"]
    assert fake.pending == 0


async def test_non_stream_n_choices(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """``n=2`` gives two choices, the second with the `` #1`` suffix, and usage."""
    fake.enqueue(TextReply(("Hi", " you")))
    completion = await client.chat.completions.create(model=MODEL, messages=USER_HI, n=2)
    assert [c.message.content for c in completion.choices] == ["Hi you", "Hi you #1"]
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[1].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


async def test_stream_n_choices(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """Streaming with ``n=2`` interleaves both choices by index."""
    fake.enqueue(TextReply(("x", "y")))
    stream = await client.chat.completions.create(model=MODEL, messages=USER_HI, n=2, stream=True)
    texts = ["", ""]
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == ["xy", "xy #1"]


async def test_usage_off_and_finish_reason(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """``usage=False`` drops usage; ``finish_reason`` is passed through."""
    fake.enqueue(TextReply(("cut",), usage=False, finish_reason="length"))
    completion = await client.chat.completions.create(model=MODEL, messages=USER_HI)
    assert completion.usage is None
    assert completion.choices[0].finish_reason == "length"


async def test_chunk_delay(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """``chunk_delay_s`` is slept before each streamed chunk."""
    fake.enqueue(TextReply(("a", "b", "c"), chunk_delay_s=0.05))
    started = time.monotonic()
    stream = await client.chat.completions.create(model=MODEL, messages=USER_HI, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "abc"
    assert time.monotonic() - started >= 0.15


async def test_legacy_completions(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """``/v1/completions`` echoes the last prompt line as a ``text_completion``."""
    completion = await client.completions.create(model=MODEL, prompt="line one\nline two")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "echo: line two"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4
    assert fake.last_request.path == "/v1/completions"


async def test_legacy_completions_stream(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """Streamed legacy completions carry ``text`` chunks and an optional usage chunk."""
    fake.enqueue(TextReply(("foo", "bar")))
    stream = await client.completions.create(
        model=MODEL, prompt="p", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "foobar"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 2


@pytest.mark.parametrize(
    ("reply", "error_class"),
    [
        (ErrorReply.for_status(400), openai.BadRequestError),
        (ErrorReply.for_status(401), openai.AuthenticationError),
        (ErrorReply.for_status(404), openai.NotFoundError),
        (ErrorReply.for_status(429), openai.RateLimitError),
        (ErrorReply.for_status(500), openai.InternalServerError),
        (ErrorReply.for_status(503), openai.InternalServerError),
    ],
)
async def test_error_status_maps_to_exception(
    fake: FakeOpenAI,
    client: AsyncOpenAI,
    reply: ErrorReply,
    error_class: type[openai.APIStatusError],
) -> None:
    """Each scripted HTTP error raises the matching ``openai`` exception with the body's fields."""
    fake.enqueue(reply)
    with pytest.raises(error_class) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER_HI)
    assert caught.value.status_code == reply.status
    assert caught.value.type == reply.type
    assert caught.value.code == reply.code
    assert reply.message in caught.value.message


async def test_error_in_stream_request(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A scripted error is raised by ``create`` itself when streaming."""
    fake.enqueue(ErrorReply.for_status(503))
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model=MODEL, messages=USER_HI, stream=True)


async def test_rate_limit_retry_after(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A 429 can carry ``Retry-After``."""
    fake.enqueue(ErrorReply.for_status(429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER_HI)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


async def test_context_length_exceeded(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """The context-overflow helper is a 400 with code ``context_length_exceeded``."""
    fake.enqueue(ErrorReply.context_length_exceeded())
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER_HI)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert "maximum context length" in caught.value.message


async def test_wrong_api_key(client: AsyncOpenAI) -> None:
    """With ``api_key`` set, another key gets 401 and the scripted reply stays queued."""
    async with FakeOpenAI(api_key="sk-right") as strict:
        strict.enqueue(TextReply(("secret",)))
        wrong = client.with_options(base_url=strict.base_url)
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model=MODEL, messages=USER_HI)
        assert caught.value.code == "invalid_api_key"
        assert strict.pending == 1
        assert strict.last_request.api_key == API_KEY
        right = client.with_options(base_url=strict.base_url, api_key="sk-right")
        completion = await right.chat.completions.create(model=MODEL, messages=USER_HI)
        assert completion.choices[0].message.content == "secret"


async def test_missing_api_key_is_401(fake: FakeOpenAI) -> None:
    """A request without ``Authorization`` gets 401 with OpenAI's error body."""
    url = f"{fake.base_url}/chat/completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"model": MODEL}) as response,
    ):
        assert response.status == 401
        assert response.headers["Content-Type"] == "application/json"
        body = await response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert fake.last_request.api_key is None


async def test_hang_times_out(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A hang longer than the client timeout raises ``APITimeoutError`` at the timeout."""
    fake.enqueue(HangReply(2.0))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=SHORT_TIMEOUT_S).chat.completions.create(
            model=MODEL, messages=USER_HI
        )
    assert time.monotonic() - started < 1.0


async def test_short_hang_then_answers(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A hang shorter than the timeout delays the ``then`` reply."""
    fake.enqueue(HangReply(0.1, TextReply(("late",))))
    started = time.monotonic()
    completion = await client.chat.completions.create(model=MODEL, messages=USER_HI)
    assert completion.choices[0].message.content == "late"
    assert time.monotonic() - started >= 0.1


async def test_empty_stream_yields_nothing(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """An empty stream (only ``[DONE]``) ends without a chunk and without an error."""
    fake.enqueue(EmptyStreamReply())
    stream = await client.chat.completions.create(model=MODEL, messages=USER_HI, stream=True)
    assert [chunk async for chunk in stream] == []


async def test_cut_stream_raises_connection_error(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A stream cut before ``[DONE]`` raises ``APIConnectionError`` after the chunks sent."""
    fake.enqueue(CutStreamReply(("par", "tial")))
    stream = await client.chat.completions.create(model=MODEL, messages=USER_HI, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError) as caught:
        await collect_contents(stream, received)
    assert type(caught.value) is openai.APIConnectionError
    assert "".join(received) == "partial"
    # The next request on a fresh connection works.
    completion = await client.chat.completions.create(model=MODEL, messages=USER_HI)
    assert completion.choices[0].message.content == "echo: hi"


async def test_malformed_chunk_raises_json_error(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A ``data: {not json`` line raises ``json.JSONDecodeError`` (not an ``openai`` error)."""
    fake.enqueue(MalformedChunkReply(("ok",)))
    stream = await client.chat.completions.create(model=MODEL, messages=USER_HI, stream=True)
    received: list[str] = []
    with pytest.raises(json.JSONDecodeError):
        await collect_contents(stream, received)
    assert "".join(received) == "ok"


async def test_models_listing(client: AsyncOpenAI) -> None:
    """``GET /v1/models`` lists the configured models."""
    async with FakeOpenAI(models=["m-one", "m-two"]) as custom:
        page = await client.with_options(base_url=custom.base_url).models.list()
        assert [m.id for m in page.data] == ["m-one", "m-two"]
        assert {m.owned_by for m in page.data} == {"fake"}
        assert custom.last_request.method == "GET"


async def test_default_models(client: AsyncOpenAI) -> None:
    """The default model list is ``gpt-4o-mini``."""
    page = await client.models.list()
    assert [m.id for m in page.data] == [MODEL]


async def test_unknown_path_is_not_found(client: AsyncOpenAI) -> None:
    """An endpoint the fake does not serve answers 404 like the real API."""
    with pytest.raises(openai.NotFoundError) as caught:
        await client.embeddings.create(model=MODEL, input="x")
    assert "Invalid URL" in caught.value.message
