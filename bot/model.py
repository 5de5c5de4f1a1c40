"""One interface over OpenAI-compatible chat and legacy completion endpoints."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import openai

from bot.config import ApiMode, Backend, Settings
from bot.errors import ErrorKind, ModelError
from bot.tokens import estimate_tokens, message_tokens

logger = logging.getLogger(__name__)
# A readiness probe must answer quickly even when the backend hangs.
PROBE_TIMEOUT_S = 3.0

# Servers without an API key (Ollama, llama.cpp, vLLM) still need a non-empty header value.
PLACEHOLDER_API_KEY = "not-needed"
# Completion-only models continue the transcript; stop them at the user's next line.
COMPLETION_STOP = "\nUser:"


class Turn(NamedTuple):
    """One chat message sent to the model (a tuple: a long context builds many per answer)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What to ask the model for."""

    model: str
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] | None = None
    n: int = 1


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one call cost; `estimated` when the server sent no usage."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole (non-streamed) answer, with every choice."""

    choices: tuple[str, ...]
    usage: Usage
    finish_reason: str | None = None


class ModelStream(Protocol):
    """Text deltas of one answer; `usage` is set once iteration ends."""

    usage: Usage | None

    def __aiter__(self) -> AsyncIterator[str]:
        """Yield text deltas as they arrive."""
        ...


class ModelClient(Protocol):
    """What the core needs from a model backend."""

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> ModelStream:
        """Stream one answer."""
        ...

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Return every choice of one answer at once."""
        ...

    async def probe(self) -> None:
        """Raise ModelError if the backend cannot answer now (readiness checks)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def estimate_usage(turns: Sequence[Turn], completion: str) -> Usage:
    """Usage for servers that report none."""
    prompt = sum(message_tokens(t.content) for t in turns)
    return Usage(prompt, estimate_tokens(completion), estimated=True)


def render_prompt(turns: Sequence[Turn]) -> str:
    """Flatten a conversation into a transcript for completion-only models."""
    labels = {"system": "System", "user": "User", "assistant": "Assistant"}
    lines = [f"{labels.get(t.role, t.role.title())}: {t.content}" for t in turns]
    return "\n".join([*lines, "Assistant:"])


def translate_error(exc: BaseException) -> ModelError:
    """Map any client exception to a ModelError whose kind the user may see."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelError(ErrorKind.AUTH, detail)
    if isinstance(exc, openai.RateLimitError):
        if _error_code(exc) == "insufficient_quota":
            return ModelError(ErrorKind.QUOTA, detail)
        return ModelError(ErrorKind.RATE_LIMIT, detail, _retry_after(exc))
    if isinstance(exc, openai.NotFoundError):
        return ModelError(ErrorKind.BAD_MODEL, detail)
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        text = str(exc).lower()
        if _error_code(exc) == "context_length_exceeded" or "context length" in text:
            return ModelError(ErrorKind.CONTEXT_TOO_LONG, detail)
        if "model" in text and ("not found" in text or "does not exist" in text):
            return ModelError(ErrorKind.BAD_MODEL, detail)
        return ModelError(ErrorKind.BAD_REQUEST, detail)
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return ModelError(ErrorKind.TIMEOUT, detail)
    if isinstance(exc, openai.APIConnectionError | ConnectionError):
        return ModelError(ErrorKind.CONNECTION, detail)
    return ModelError(ErrorKind.SERVER, detail)


def _error_code(exc: openai.APIStatusError) -> str | None:
    """The `code` field of an OpenAI error body, if any."""
    body = exc.body if isinstance(exc.body, dict) else {}
    inner = body.get("error", body)
    return inner.get("code") if isinstance(inner, dict) else None


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds the server asked us to wait, if it said."""
    try:
        return float(exc.response.headers.get("retry-after", ""))
    except ValueError:
        return None


class OpenAIModel:
    """ModelClient over the official `openai` client, for every compatible backend."""

    def __init__(self, client: openai.AsyncOpenAI, mode: ApiMode, backend: Backend) -> None:
        self._client = client
        self._mode = mode
        self._backend = backend

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIModel:
        """Build the client once; creating one per message costs ~17 ms of CPU."""
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        common: dict[str, Any] = {
            "timeout": settings.request_timeout_s,
            "max_retries": settings.model_max_retries,
        }
        client: openai.AsyncOpenAI
        if settings.backend is Backend.AZURE:
            client = openai.AsyncAzureOpenAI(
                api_key=key,
                azure_endpoint=settings.azure_endpoint,
                api_version=settings.azure_api_version,
                **common,
            )
        else:
            client = openai.AsyncOpenAI(
                api_key=key or PLACEHOLDER_API_KEY, base_url=settings.openai_base_url, **common
            )
        return cls(client, settings.api_mode, settings.backend)

    def _request(self, turns: Sequence[Turn], params: GenerationParams) -> dict[str, Any]:
        """Keyword arguments shared by streamed and whole requests."""
        args: dict[str, Any] = {
            "model": params.model,
            "temperature": params.temperature,
            "n": params.n,
        }
        # Hosted OpenAI's newer models reject max_tokens; other servers mostly know only it.
        limit = "max_completion_tokens" if self._backend is Backend.OPENAI else "max_tokens"
        stop = list(params.stop or ())
        if self._mode is ApiMode.COMPLETION:
            args["prompt"] = render_prompt(turns)
            args["max_tokens"] = params.max_tokens
            # Within the four the API takes, or the cut below would drop the one that matters.
            stop = [*stop[:3], COMPLETION_STOP]
        else:
            args["messages"] = [{"role": t.role, "content": t.content} for t in turns]
            args[limit] = params.max_tokens
        if stop:
            args["stop"] = stop[:4]  # OpenAI accepts at most four stop sequences
        return args

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> ModelStream:
        """Stream one answer."""
        return _OpenAIStream(self, turns, params)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Return every choice of one answer at once."""
        args = self._request(turns, params)
        try:
            if self._mode is ApiMode.COMPLETION:
                result: Any = await self._client.completions.create(**args)
                choices = tuple(c.text or "" for c in result.choices)
            else:
                result = await self._client.chat.completions.create(**args)
                choices = tuple(c.message.content or "" for c in result.choices)
        except Exception as exc:
            raise translate_error(exc) from exc
        if not any(c.strip() for c in choices):
            raise ModelError(ErrorKind.EMPTY, f"no text in {len(choices)} choices")
        usage = (
            Usage(result.usage.prompt_tokens, result.usage.completion_tokens)
            if result.usage
            else estimate_usage(turns, "".join(choices))
        )
        return Completion(choices, usage, result.choices[0].finish_reason)

    async def open_stream(self, turns: Sequence[Turn], params: GenerationParams) -> Any:
        """Start a streamed request in the configured mode."""
        args = self._request(turns, params)
        args["stream"] = True
        args["stream_options"] = {"include_usage": True}
        if self._mode is ApiMode.COMPLETION:
            return await self._client.completions.create(**args)
        return await self._client.chat.completions.create(**args)

    async def probe(self) -> None:
        """List the server's models: cheap, and every OpenAI-compatible server has it."""
        try:
            await self._client.models.list(timeout=PROBE_TIMEOUT_S)
        except Exception as exc:
            raise translate_error(exc) from exc

    @property
    def chat_mode(self) -> bool:
        """Whether chunks carry `delta.content` (chat) or `text` (legacy completions)."""
        return self._mode is ApiMode.CHAT

    async def aclose(self) -> None:
        """Release connections."""
        await self._client.close()


class _OpenAIStream:
    """Iterates one streamed answer, translating errors and collecting usage."""

    def __init__(self, model: OpenAIModel, turns: Sequence[Turn], params: GenerationParams) -> None:
        self._model = model
        self._turns = turns
        self._params = params
        self.usage: Usage | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield text deltas; raise ModelError on any failure, including an empty answer."""
        text: list[str] = []
        server_usage = None
        try:
            response = await self._model.open_stream(self._turns, self._params)
            async with response:
                async for chunk in response:
                    if chunk.usage:
                        server_usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.index != 0:
                            continue
                        delta = choice.delta.content if self._model.chat_mode else choice.text
                        if delta:
                            text.append(delta)
                            yield delta
        except Exception as exc:
            error = translate_error(exc)
            if text and error.kind is ErrorKind.CONNECTION:
                # The server was reached and then dropped the stream: its failure, not the network's.
                error = ModelError(ErrorKind.SERVER, f"stream cut after {len(text)} deltas: {error}")
            raise error from exc
        answer = "".join(text)
        if not answer.strip():
            raise ModelError(ErrorKind.EMPTY, "stream ended without text")
        self.usage = (
            Usage(server_usage.prompt_tokens, server_usage.completion_tokens)
            if server_usage
            else estimate_usage(self._turns, answer)
        )
