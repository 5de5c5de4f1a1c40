"""OpenAIModel with the real `openai` client against the fake OpenAI-compatible server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import openai
import pytest

from bot.config import ApiMode, Backend, Settings
from bot.errors import ErrorKind, ModelError
from bot.model import (
    COMPLETION_STOP,
    PLACEHOLDER_API_KEY,
    GenerationParams,
    ModelStream,
    OpenAIModel,
    Turn,
    render_prompt,
)
from bot.texts import render
from bot.tokens import estimate_tokens, message_tokens
from tests.conftest import SettingsFactory
from tests.fakes.openai_server import (
    CutStreamReply,
    EmptyStreamReply,
    ErrorReply,
    FakeOpenAI,
    HangReply,
    MalformedChunkReply,
    Reply,
    TextReply,
    count_words,
)

SYSTEM = "Be brief."
QUESTION = "Say hello"
TURNS = (Turn("system", SYSTEM), Turn("user", QUESTION))
PARAMS = GenerationParams(model="gpt-4o-mini", max_tokens=50, temperature=0.2, stop=("END",), n=1)
SECRET = "sk-secret-123"
SHORT_TIMEOUT_S = 0.3

ModelFactory = Callable[[Settings], OpenAIModel]


@pytest.fixture
def model(make_settings: SettingsFactory, make_model: ModelFactory) -> OpenAIModel:
    """The chat-mode model pointed at the fake."""
    return make_model(make_settings())


async def collect(model: OpenAIModel, params: GenerationParams = PARAMS) -> tuple[list[str], object]:
    """Stream one answer; return its deltas and the stream's usage."""
    stream = model.stream(TURNS, params)
    deltas = [delta async for delta in stream]
    return deltas, stream.usage


async def drain(stream: ModelStream, into: list[str]) -> None:
    """Append every delta of a stream to `into`, so a test can look at them after it raised."""
    async for delta in stream:
        into.append(delta)


async def call_model(model: OpenAIModel, call: str) -> None:
    """One request the way the core makes it: streamed, or whole."""
    if call == "stream":
        await collect(model)
    else:
        await model.complete(TURNS, PARAMS)


async def test_stream_yields_deltas_and_server_usage(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(TextReply(("Hello", " there", " friend")))

    deltas, usage = await collect(model)

    assert deltas == ["Hello", " there", " friend"]
    assert usage is not None
    assert usage.prompt_tokens == count_words(f"{SYSTEM} {QUESTION}")
    assert usage.completion_tokens == 3
    assert usage.estimated is False


async def test_stream_without_server_usage_is_estimated(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(TextReply(("Hello", " there"), usage=False))

    _, usage = await collect(model)

    assert usage is not None
    assert usage.estimated is True
    assert usage.prompt_tokens == message_tokens(SYSTEM) + message_tokens(QUESTION)
    assert usage.completion_tokens == estimate_tokens("Hello there")


async def test_stream_request_carries_generation_params(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    await collect(model)

    request = fake_openai.last_request
    assert request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 50
    assert "max_completion_tokens" not in body
    assert body["temperature"] == 0.2
    assert body["stop"] == ["END"]
    assert body["n"] == 1
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": QUESTION},
    ]


async def test_request_sends_configured_key(make_settings: SettingsFactory, make_model: ModelFactory) -> None:
    async with FakeOpenAI(api_key="sk-right") as fake:
        good = make_model(make_settings(openai_base_url=fake.base_url, openai_api_key="sk-right"))
        bad = make_model(make_settings(openai_base_url=fake.base_url, openai_api_key="sk-wrong"))

        deltas = [d async for d in good.stream(TURNS, PARAMS)]
        with pytest.raises(ModelError) as info:
            await bad.complete(TURNS, PARAMS)

    assert "".join(deltas) == f"echo: {QUESTION}"
    assert info.value.kind is ErrorKind.AUTH


async def test_server_without_key_gets_placeholder(
    make_settings: SettingsFactory, make_model: ModelFactory, fake_openai: FakeOpenAI
) -> None:
    model = make_model(make_settings(openai_api_key=None))

    await model.complete(TURNS, PARAMS)

    assert fake_openai.last_request.api_key == PLACEHOLDER_API_KEY


async def test_completion_mode_sends_transcript_prompt(
    make_settings: SettingsFactory, make_model: ModelFactory, fake_openai: FakeOpenAI
) -> None:
    model = make_model(make_settings(api_mode="completion"))
    fake_openai.enqueue(TextReply(("Hel", "lo")))

    deltas, usage = await collect(model)

    assert deltas == ["Hel", "lo"]
    assert usage is not None
    request = fake_openai.last_request
    assert request.path == "/v1/completions"
    assert request.body["prompt"] == f"System: {SYSTEM}\nUser: {QUESTION}\nAssistant:"
    assert request.body["prompt"].endswith("Assistant:")
    assert request.body["stop"] == ["END", COMPLETION_STOP]
    assert request.body["max_tokens"] == 50
    assert "messages" not in request.body


async def test_completion_mode_complete_returns_text(
    make_settings: SettingsFactory, make_model: ModelFactory, fake_openai: FakeOpenAI
) -> None:
    model = make_model(make_settings(api_mode="completion"))
    fake_openai.enqueue(TextReply(("Hi", " there")))

    completion = await model.complete(TURNS, PARAMS)

    assert completion.choices == ("Hi there",)
    assert fake_openai.last_request.path == "/v1/completions"
    assert fake_openai.last_body["prompt"] == render_prompt(TURNS)


async def test_completion_mode_keeps_its_stop_with_four_configured(
    make_settings: SettingsFactory, make_model: ModelFactory, fake_openai: FakeOpenAI
) -> None:
    model = make_model(make_settings(api_mode="completion"))
    params = GenerationParams("gpt-4o-mini", 50, 0.2, stop=("a", "b", "c", "d"))

    await collect(model, params)

    stop = fake_openai.last_body["stop"]
    assert len(stop) <= 4  # the API's limit
    assert COMPLETION_STOP in stop  # without it the model writes the user's next line too


async def test_complete_with_n_returns_every_choice(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(TextReply(("Hi",)))
    params = GenerationParams("gpt-4o-mini", 50, 0.2, n=2)

    completion = await model.complete(TURNS, params)

    assert completion.choices == ("Hi", "Hi #1")
    assert completion.finish_reason == "stop"
    assert completion.usage.completion_tokens == 3
    assert completion.usage.estimated is False
    assert fake_openai.last_body["n"] == 2
    assert "stream" not in fake_openai.last_body


async def test_complete_without_server_usage_is_estimated(
    model: OpenAIModel, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(TextReply(("Hi",), usage=False))

    completion = await model.complete(TURNS, PARAMS)

    assert completion.usage.estimated is True
    assert completion.usage.completion_tokens == estimate_tokens("Hi")


def test_backend_is_hosted_openai_only_without_base_url(tmp_path: object) -> None:
    hosted = Settings(openai_api_key="sk-x", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    compatible = Settings(
        openai_api_key="sk-x",
        openai_base_url="http://127.0.0.1:1/v1",
        data_dir=tmp_path,
        _env_file=None,  # type: ignore[call-arg]
    )

    assert hosted.backend is Backend.OPENAI
    assert compatible.backend is Backend.COMPATIBLE


@pytest.fixture
async def hosted_model(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIModel]:
    """The hosted-OpenAI flavour; built directly, since Settings with a base URL means a compatible server."""
    client = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-test", max_retries=0, timeout=5)
    model = OpenAIModel(client, ApiMode.CHAT, Backend.OPENAI)
    yield model
    await model.aclose()


async def test_hosted_openai_sends_max_completion_tokens(
    hosted_model: OpenAIModel, fake_openai: FakeOpenAI
) -> None:
    await collect(hosted_model)

    assert fake_openai.last_body["max_completion_tokens"] == 50
    assert "max_tokens" not in fake_openai.last_body


async def test_azure_endpoint_uses_deployment_path_and_api_key_header(
    make_settings: SettingsFactory, make_model: ModelFactory, fake_openai: FakeOpenAI
) -> None:
    endpoint = fake_openai.base_url.removesuffix("/v1")
    settings = make_settings(
        openai_base_url=None, azure_endpoint=endpoint, openai_api_key="azure-key-123", model="my-deployment"
    )
    assert settings.backend is Backend.AZURE

    deltas = [delta async for delta in make_model(settings).stream(TURNS, PARAMS)]

    request = fake_openai.last_request
    assert "".join(deltas).startswith("echo:")
    assert request.path == f"/openai/deployments/{PARAMS.model}/chat/completions"
    assert request.headers.get("api-key") == "azure-key-123"


ERROR_CASES: list[tuple[str, Reply, ErrorKind]] = [
    (
        "401",
        ErrorReply(401, f"Incorrect API key provided: {SECRET}.", "invalid_request_error", "invalid_api_key"),
        ErrorKind.AUTH,
    ),
    ("403", ErrorReply.for_status(403), ErrorKind.AUTH),
    ("429", ErrorReply.for_status(429, retry_after=7), ErrorKind.RATE_LIMIT),
    (
        "429-quota",
        ErrorReply(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"),
        ErrorKind.QUOTA,
    ),
    ("400-context", ErrorReply.context_length_exceeded(), ErrorKind.CONTEXT_TOO_LONG),
    ("400-other", ErrorReply.for_status(400), ErrorKind.BAD_REQUEST),
    ("404", ErrorReply.for_status(404), ErrorKind.BAD_MODEL),
    ("500", ErrorReply.for_status(500), ErrorKind.SERVER),
    ("503", ErrorReply.for_status(503), ErrorKind.SERVER),
]


@pytest.mark.parametrize("call", ["stream", "complete"])
@pytest.mark.parametrize(
    ("reply", "kind"), [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES]
)
async def test_http_errors_map_to_kinds(
    model: OpenAIModel, fake_openai: FakeOpenAI, call: str, reply: ErrorReply, kind: ErrorKind
) -> None:
    fake_openai.enqueue(reply)

    with pytest.raises(ModelError) as info:
        await call_model(model, call)

    error = info.value
    assert error.kind is kind
    assert error.user_text == render(f"model_error.{kind.value}")
    assert reply.message not in error.user_text
    assert str(reply.status) in str(error)  # details stay available for the logs


async def test_rate_limit_carries_retry_after(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(ErrorReply.for_status(429, retry_after=7), ErrorReply.for_status(429))

    with pytest.raises(ModelError) as with_header:
        await collect(model)
    with pytest.raises(ModelError) as without_header:
        await collect(model)

    assert with_header.value.retry_after == 7.0
    assert without_header.value.retry_after is None


async def test_user_text_hides_server_secret(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(ErrorReply(401, f"Incorrect API key provided: {SECRET}.", "invalid_request_error"))

    with pytest.raises(ModelError) as info:
        await collect(model)

    assert info.value.kind is ErrorKind.AUTH
    assert SECRET not in info.value.user_text
    assert SECRET in str(info.value)


async def test_hang_beyond_timeout_is_timeout(
    make_settings: SettingsFactory, make_model: ModelFactory, fake_openai: FakeOpenAI
) -> None:
    model = make_model(make_settings(request_timeout_s=SHORT_TIMEOUT_S, model_max_retries=0))
    fake_openai.enqueue(HangReply(2.0))

    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        await collect(model)

    assert info.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 1.5


async def test_empty_stream_is_empty(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(EmptyStreamReply())
    stream = model.stream(TURNS, PARAMS)
    deltas: list[str] = []

    with pytest.raises(ModelError) as info:
        await drain(stream, deltas)

    assert info.value.kind is ErrorKind.EMPTY
    assert deltas == []
    assert stream.usage is None


async def test_whitespace_only_stream_is_empty(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(TextReply((" ", "\n")))

    with pytest.raises(ModelError) as info:
        await collect(model)

    assert info.value.kind is ErrorKind.EMPTY


async def test_cut_stream_fails_after_partial_deltas(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(CutStreamReply(("par", "tial")))
    stream = model.stream(TURNS, PARAMS)
    deltas: list[str] = []

    with pytest.raises(ModelError) as info:
        await drain(stream, deltas)

    assert deltas == ["par", "tial"]
    assert info.value.kind is ErrorKind.SERVER  # reached, then dropped: not "cannot be reached"
    assert stream.usage is None


async def test_malformed_chunk_is_server_error(model: OpenAIModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(MalformedChunkReply(("before",)))
    deltas: list[str] = []

    with pytest.raises(ModelError) as info:
        await drain(model.stream(TURNS, PARAMS), deltas)

    assert deltas == ["before"]
    assert info.value.kind is ErrorKind.SERVER
    assert info.value.user_text == render("model_error.server")


async def test_unreachable_server_is_connection(
    make_settings: SettingsFactory, make_model: ModelFactory
) -> None:
    async with FakeOpenAI() as gone:
        url = gone.base_url
    model = make_model(make_settings(openai_base_url=url))

    with pytest.raises(ModelError) as info:
        await model.complete(TURNS, PARAMS)

    assert info.value.kind is ErrorKind.CONNECTION
