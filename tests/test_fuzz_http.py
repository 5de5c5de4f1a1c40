"""Fuzzing the real HTTP API: bad bodies get a clear JSON 4xx, good ones the documented answer, no 5xx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.config import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.fuzz_strategies import (
    JSON_SCALARS,
    JSON_VALUES,
    UNKNOWN_KEYS,
    VALID_CHARS,
    Body,
    broken_text,
    hostile_text,
    mutate,
    nested_json,
)
from tests.helpers import Relay, running_relay

ASK_PATH = "/ask_gpt"
CHAT_PATH = "/v1/chat/completions"
API_PATHS = (ASK_PATH, CHAT_PATH)
MODELS = ["gpt-4o-mini", "gpt-4o"]
# Small, so that bodies on both sides of the limit are cheap to send.
MAX_BODY_BYTES = 16 * 1024
TRACEBACK = "Traceback (most recent call last)"
UNICODE_ERROR = "body is not valid Unicode: a \\uD800-\\uDFFF escape without its pair"
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ROLES = ("system", "developer", "user", "assistant", "tool")
# Valid values of every request field, near the edges of what is allowed; the tests then break some.
PROMPTS = hostile_text(max_repeat=100).map(lambda text: text if text.strip() else text + "?")
GENERATION_FIELDS = {
    "model": st.sampled_from(MODELS),
    "max_tokens": st.integers(1, 5000),
    "temperature": st.floats(0, 2),
    "stop": st.lists(hostile_text(max_repeat=3), max_size=4) | hostile_text(max_repeat=3),
    "n": st.integers(1, 8),
    "user": st.text(VALID_CHARS, min_size=1, max_size=128),
}
CONTENT_PARTS = st.fixed_dictionaries({"type": st.just("text"), "text": PROMPTS}) | st.fixed_dictionaries(
    {
        "type": st.just("image_url"),
        "image_url": st.fixed_dictionaries({"url": st.just("https://example.org/a.png")}),
    }
)
CHAT_MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES), "content": PROMPTS | st.lists(CONTENT_PARTS, min_size=1, max_size=3)}
)
CHAT_FIELDS = {
    **GENERATION_FIELDS,
    "stream": st.booleans(),
    "max_completion_tokens": st.integers(1, 5000),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}
# What a broken field holds instead: a wrong type, an edge value, text that is not Unicode.
BAD_VALUES = st.one_of(
    JSON_VALUES,
    broken_text(),
    st.sampled_from(
        ["", " ", 0, -1, 9, 2.5, 1e308, float("nan"), float("inf"), [], {}, None, True, "1", [None]]
    ),
)


@st.composite
def broken_requests(
    draw: st.DrawFn, required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> dict[str, Any]:
    """A valid request with 0-3 fields dropped, replaced by bad values or mutated, and maybe unknown ones."""
    body: dict[str, Any] = draw(st.fixed_dictionaries(required, optional=optional))
    broken = draw(st.lists(st.sampled_from(sorted({*required, *optional})), max_size=3, unique=True))
    for key in broken:
        how = draw(st.sampled_from(["drop", "replace", "mutate"]))
        if how == "drop":
            body.pop(key, None)
        elif how == "replace" or key not in body:
            body[key] = draw(BAD_VALUES)
        else:
            body[key] = mutate(draw(st.data()), body[key], odds=3)
    body |= draw(st.dictionaries(UNKNOWN_KEYS, JSON_VALUES, max_size=2))
    event(f"{len(broken)} broken fields")
    return body


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    """The real HTTP adapter on the real runtime, SQLite on tmp_path, the echoing fake model upstream."""
    async with FakeOpenAI(models=MODELS) as fake:
        relay_settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            openai_base_url=fake.base_url,
            openai_api_key="sk-test",
            data_dir=tmp_path / "data",
            http_port=0,
            model=MODELS[0],
            allowed_models=MODELS,
            model_max_retries=0,
            http_max_body_bytes=MAX_BODY_BYTES,
        )
        async with running_relay(relay_settings) as running:
            yield running


async def post(relay: Relay, path: str, body: bytes, content_type: str = "application/json") -> Any:
    """POST a raw body; check the answer is a 200 or a clear JSON 4xx and return (status, parsed body)."""
    headers = {"Content-Type": content_type}
    async with relay.session.post(path, data=body, headers=headers) as response:
        text = await response.text()
        event(f"{path} {response.status}")
        assert response.status < 500, (response.status, text[:1000])
        if TRACEBACK.encode() not in body:  # the echo model may repeat one that was sent
            assert TRACEBACK not in text
        if response.status >= 400:
            assert response.content_type == "application/json", text[:1000]
            error = json.loads(text)["error"]
            assert isinstance(error["message"], str), error
            assert error["message"].strip(), error
            assert error["type"] == "invalid_request_error"
            return response.status, error
        assert response.status == 200, (response.status, text[:1000])
        if response.content_type == "text/event-stream":
            return response.status, check_sse(text)
        assert response.content_type == "application/json", text[:1000]
        answer = json.loads(text)
        (check_ask_answer if path == ASK_PATH else check_chat_answer)(answer)
        return response.status, answer


def check_ask_answer(answer: Any) -> None:
    """{"message": str}, plus "messages" (every choice, the first being "message") when n > 1."""
    assert isinstance(answer["message"], str)
    assert set(answer) <= {"message", "messages"}
    if "messages" in answer:
        assert all(isinstance(m, str) for m in answer["messages"])
        assert answer["messages"][0] == answer["message"]


def check_chat_answer(answer: Any) -> None:
    """A chat.completion object, as the official clients parse it."""
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["id"], str)
    assert isinstance(answer["model"], str)
    assert answer["choices"]
    for index, choice in enumerate(answer["choices"]):
        assert choice["index"] == index
        assert choice["message"]["role"] == "assistant"
        assert isinstance(choice["message"]["content"], str)
        assert isinstance(choice["finish_reason"], str)
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_sse(text: str) -> list[dict[str, Any]]:
    """Server-sent chat.completion.chunk events ending with [DONE]."""
    events = [block for block in text.split("\n\n") if block]
    assert events[-1] == "data: [DONE]"
    chunks = []
    for block in events[:-1]:
        assert block.startswith("data: ")
        chunk = json.loads(block.removeprefix("data: "))
        assert chunk.get("object") == "chat.completion.chunk" or "error" in chunk
        chunks.append(chunk)
    return chunks


def has_lone_surrogate(value: Any) -> bool:
    """Whether a value, once sent as JSON, holds a string that is not valid Unicode (a pair is fine)."""
    try:
        json.dumps(json.loads(encode(value)), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def encode(value: Any) -> bytes:
    """JSON as a client would send it (lone surrogates become \\udXXX escapes, NaN stays NaN)."""
    return json.dumps(value).encode()


# ---------------------------------------------------------------- not even a request


@st.composite
def raw_bodies(draw: st.DrawFn) -> Body:
    """Bytes that are not a JSON object: random, invalid UTF-8, truncated JSON, empty, whitespace."""
    kind = draw(st.sampled_from(["bytes", "latin-1", "truncated", "blank", "bom"]))
    if kind == "bytes":
        return Body(kind, draw(st.binary(max_size=3000)))
    if kind == "latin-1":  # valid JSON but for one byte that is not UTF-8
        return Body(
            kind,
            b'{"prompt": "caf' + draw(st.sampled_from([b"\xe9", b"\xff", b"\xc3", b"\xed\xa0\x80"])) + b'"}',
        )
    if kind == "truncated":
        whole = encode({"prompt": draw(hostile_text(max_repeat=10)), "messages": [{"role": "user"}]})
        return Body(kind, whole[: draw(st.integers(0, len(whole) - 1))])
    if kind == "blank":
        return Body(kind, draw(st.sampled_from([b"", b" ", b"\n\t\r ", b"\x00", b"\xef\xbb\xbf"])))
    return Body(kind, b"\xef\xbb\xbf" + encode({"prompt": "hi"}))  # a UTF-8 byte-order mark first


@FUZZ
@given(
    path=st.sampled_from(API_PATHS),
    body=raw_bodies(),
    content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]),
)
async def test_bodies_that_are_not_json_get_a_clear_400(
    relay: Relay, path: str, body: Body, content_type: str
) -> None:
    status, _ = await post(relay, path, body.data, content_type)
    assert status in (200, 400)


@FUZZ
@given(path=st.sampled_from(API_PATHS), value=JSON_SCALARS | st.lists(JSON_VALUES, max_size=4))
async def test_json_that_is_not_an_object_gets_a_clear_400(relay: Relay, path: str, value: Any) -> None:
    status, error = await post(relay, path, encode(value))
    assert status == 400
    assert "JSON object" in error["message"]


@FUZZ
@given(
    path=st.sampled_from(API_PATHS),
    depth=st.sampled_from([2, 50, 500, 900, 990, 1000, 1100, 5000]) | st.integers(1, 8000),
    where=st.sampled_from(["top", "prompt", "stop", "stream_options", "messages", "content"]),
    brackets=st.sampled_from([("[", "]"), ('{"a":', "}")]),
)
async def test_deeply_nested_json_is_refused_or_ignored(
    relay: Relay, path: str, depth: int, where: str, brackets: tuple[str, str]
) -> None:
    """Nesting past what the parser takes is a 400 (not a RecursionError 500); in a free-form field, fine."""
    nested = nested_json(depth, *brackets).decode()
    message = '{"role": "user", "content": "hi"}'
    bodies = {
        "top": nested,
        "prompt": f'{{"prompt": {nested}}}',
        "stop": f'{{"prompt": "hi", "stop": {nested}, "messages": [{message}]}}',
        "stream_options": f'{{"prompt": "hi", "stream_options": {nested}, "messages": [{message}]}}',
        "messages": f'{{"messages": {nested}}}',
        "content": f'{{"messages": [{{"role": "user", "content": {nested}}}]}}',
    }
    status, _ = await post(relay, path, bodies[where].encode())
    assert status in (200, 400, 413)


# ---------------------------------------------------------------- wrong types, unknown fields


@FUZZ
@given(body=broken_requests({"prompt": PROMPTS}, GENERATION_FIELDS))
async def test_ask_gpt_with_any_field_of_any_type(relay: Relay, body: dict[str, Any]) -> None:
    """Every field of /ask_gpt dropped, of a wrong type, or at an edge; unknown fields refused (typos)."""
    status, answer = await post(relay, ASK_PATH, encode(body))
    if has_lone_surrogate(body):
        assert (status, answer["message"]) == (400, UNICODE_ERROR)
    elif body.keys() - {"prompt", *GENERATION_FIELDS}:
        assert status == 400
        assert "Extra inputs are not permitted" in answer["message"]


@FUZZ
@given(body=broken_requests({"messages": st.lists(CHAT_MESSAGES, min_size=1, max_size=4)}, CHAT_FIELDS))
async def test_chat_completions_with_any_field_of_any_type(relay: Relay, body: dict[str, Any]) -> None:
    """Every field of /v1/chat/completions dropped, of a wrong type, or at an edge; unknown ones ignored."""
    status, answer = await post(relay, CHAT_PATH, encode(body))
    if has_lone_surrogate(body):
        assert (status, answer["message"]) == (400, UNICODE_ERROR)
    if status == 200 and body.get("stream") is True:
        assert answer[0]["choices"][0]["delta"]["role"] == "assistant"


# ---------------------------------------------------------------- valid but hostile


@FUZZ
@given(prompt=PROMPTS, user=st.none() | hostile_text(max_repeat=3))
async def test_any_real_prompt_is_answered(relay: Relay, prompt: str, user: str | None) -> None:
    """Control characters, RTL, emoji, NUL, empty-ish users: a valid request gets its answer."""
    body: dict[str, Any] = {"prompt": prompt}
    if user is not None and 1 <= len(user) <= 128:
        body["user"] = user
    data = encode(body)
    status, answer = await post(relay, ASK_PATH, data)
    if len(data) > MAX_BODY_BYTES:
        assert status == 413
    elif status != 200:
        # Only an over-long prompt may be refused: it does not fit the model's context window.
        assert status == 400
        assert "too long" in answer["message"].lower(), answer


@FUZZ
@given(prompt=broken_text(), user=st.none() | broken_text(), path=st.sampled_from(API_PATHS))
async def test_lone_surrogate_escapes_are_a_clear_400(
    relay: Relay, prompt: str, user: str | None, path: str
) -> None:
    """JSON may spell half a UTF-16 pair (\\ud800): not text, and SQLite cannot store it."""
    body: dict[str, Any] = {"prompt": prompt, "messages": [{"role": "user", "content": prompt}]}
    if path == CHAT_PATH:
        del body["prompt"]
    if user is not None:
        body["user"] = user
    status, answer = await post(relay, path, encode(body))
    if has_lone_surrogate(body):
        assert (status, answer["message"]) == (400, UNICODE_ERROR)
    else:
        assert status in (200, 400)


@FUZZ
@given(
    path=st.sampled_from(API_PATHS),
    size=st.sampled_from([MAX_BODY_BYTES - 100, MAX_BODY_BYTES, MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES])
    | st.integers(1, 3 * MAX_BODY_BYTES),
    filler=st.sampled_from(["a", "é", "👩\u200d💻", "\x00", "\u202e", " "]),
)
async def test_bodies_around_the_size_limit(relay: Relay, path: str, size: int, filler: str) -> None:
    """Past http_max_body_bytes a JSON 413; below it an answer or a clear 400 (context too long)."""
    text = filler * max(1, size // len(filler.encode()))
    body = {"prompt": "x" + text, "messages": [{"role": "user", "content": "x" + text}]}
    if path == ASK_PATH:
        del body["messages"]
    else:
        del body["prompt"]
    data = encode(body)
    status, _ = await post(relay, path, data)
    if len(data) > MAX_BODY_BYTES:
        assert status == 413
    else:
        assert status in (200, 400)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from([*API_PATHS, "/", "/v1", "/v1/models", "/v1/completions", "/healthz", "/ask_gpt/x"])
    | st.text("abcdefghijklmnopqrstuvwxyz0123456789-_./", max_size=30).map(
        lambda p: "/" + p.lstrip("/")
    ),  # "//x" would name a host
)
async def test_any_route_answers_json(relay: Relay, method: str, path: str) -> None:
    """Unknown paths and wrong methods: a JSON 404 or 405, never aiohttp's plain-text page."""
    async with relay.session.request(method, path, data=b"{}") as response:
        text = await response.text()
        assert response.status < 500, (response.status, text[:300])
        if response.status >= 400:
            assert response.content_type == "application/json", text[:300]
            assert json.loads(text)["error"]["message"].strip()
