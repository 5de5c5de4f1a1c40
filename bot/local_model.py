"""The embedded model: a GGUF run in-process by llama-cpp-python, so gptrelay works offline."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.errors import ErrorKind, ModelError
from bot.handoff import Handoff
from bot.model import Completion, GenerationParams, Turn, Usage
from bot.tokens import message_tokens

logger = logging.getLogger(__name__)


class LocalModel:
    """ModelClient over llama-cpp-python; generations run one at a time off the event loop."""

    def __init__(self, path: Path, name: str, n_ctx: int, n_threads: int, repeat_penalty: float) -> None:
        self._path = path
        self._name = name
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._repeat_penalty = repeat_penalty
        # One worker: llama.cpp contexts are not thread-safe, and queueing keeps latency fair.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._llama: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalModel:
        """The embedded model the settings name (validated by Settings.problems())."""
        path = settings.local_model_path
        if path is None:
            raise ModelError(ErrorKind.BAD_MODEL, "no GGUF file configured or bundled")
        return cls(
            path, settings.model, settings.local_n_ctx, settings.local_threads, settings.local_repeat_penalty
        )

    def check_model(self, params: GenerationParams) -> None:
        """Refuse names other than the one loaded file's (allowed lists may name remote models)."""
        if params.model != self._name:
            raise ModelError(
                ErrorKind.BAD_MODEL, f"local backend serves only {self._name!r}, not {params.model!r}"
            )

    def _load(self) -> Any:
        """Load the model on first use (in the worker thread)."""
        if self._llama is None:
            from llama_cpp import Llama

            started = time.perf_counter()
            self._llama = Llama(
                model_path=str(self._path), n_ctx=self._n_ctx, n_threads=self._n_threads, verbose=False
            )
            logger.info("loaded %s in %.2f s", self._path.name, time.perf_counter() - started)
        return self._llama

    def _chunks(self, turns: Sequence[Turn], params: GenerationParams) -> Iterator[dict[str, Any]]:
        """The raw llama.cpp chunk iterator of one streamed answer (worker thread)."""
        result: Iterator[dict[str, Any]] = self._load().create_chat_completion(
            messages=[{"role": t.role, "content": t.content} for t in turns],
            stream=True,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=list(params.stop or ()),
            repeat_penalty=self._repeat_penalty,
        )
        return result

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> _LocalStream:
        """Stream one answer."""
        self.check_model(params)
        return _LocalStream(self, turns, params)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Generate `n` answers one after another and return them together."""
        choices: list[str] = []
        prompt_tokens = completion_tokens = 0
        for _ in range(params.n):
            stream = self.stream(turns, params)
            choices.append("".join([delta async for delta in stream]))
            assert stream.usage is not None
            prompt_tokens = stream.usage.prompt_tokens
            completion_tokens += stream.usage.completion_tokens
        return Completion(tuple(choices), Usage(prompt_tokens, completion_tokens, estimated=True))

    def run_in_worker(self, work: Callable[[], None]) -> asyncio.Future[None]:
        """Queue blocking work on the single generation thread."""
        return asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def probe(self) -> None:
        """Always ready: the model runs in this process."""

    async def aclose(self) -> None:
        """Stop the worker after the current generation."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


class _LocalStream:
    """Relays one generation from the worker thread to the event loop, delta by delta."""

    def __init__(self, model: LocalModel, turns: Sequence[Turn], params: GenerationParams) -> None:
        self._model = model
        self._turns = turns
        self._params = params
        self.usage: Usage | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield deltas (the first at once, later ones in batches); raise ModelError on failure."""
        handoff = Handoff(asyncio.get_running_loop())
        stop = threading.Event()

        def produce() -> None:
            try:
                for chunk in self._model._chunks(self._turns, self._params):
                    if stop.is_set():  # the reader went away: free the worker at once
                        break
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        handoff.put(delta)
                        if handoff.count == 1:
                            handoff.wait_first_passed_on()
            except Exception as exc:
                handoff.finish(exc)
            else:
                handoff.finish()

        worker = self._model.run_in_worker(produce)
        text: list[str] = []
        try:
            batch = await handoff.take(linger=False)
            while True:
                if batch.deltas:
                    delta = "".join(batch.deltas)
                    text.append(delta)
                    yield delta
                    handoff.first_passed_on()
                if batch.error is not None:
                    raise _translate(batch.error)
                if batch.done:
                    break
                batch = await handoff.take(linger=True)
        finally:
            stop.set()
            handoff.first_passed_on()  # a reader that went away must not hold the worker
        await worker
        answer = "".join(text)
        if not answer.strip():
            raise ModelError(ErrorKind.EMPTY, "local model produced no text")
        prompt = sum(message_tokens(t.content) for t in self._turns)
        # llama.cpp streams one token per chunk, so the completion count is exact.
        self.usage = Usage(prompt, handoff.count, estimated=True)


def _translate(exc: BaseException) -> ModelError:
    """Map a llama.cpp failure to a ModelError."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ValueError) and "context window" in str(exc).lower():
        return ModelError(ErrorKind.CONTEXT_TOO_LONG, detail)
    return ModelError(ErrorKind.SERVER, detail)
