"""An instant model and a counting sink, so the benchmark measures gptrelay alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from bot.model import Completion, GenerationParams, Turn, Usage

ANSWER_CHUNKS = ("Sure", ", here is", " a short", " answer.")


class InstantStream:
    """A stream that yields a fixed answer without waiting."""

    def __init__(self) -> None:
        self.usage: Usage | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield the fixed chunks, then report usage."""
        for chunk in ANSWER_CHUNKS:
            yield chunk
        self.usage = Usage(100, 8)


class InstantModel:
    """ModelClient that answers at once; counts requests and context sizes."""

    def __init__(self) -> None:
        self.requests = 0
        self.turns_seen = 0

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> InstantStream:
        """Answer immediately."""
        self.requests += 1
        self.turns_seen += len(turns)
        return InstantStream()

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Answer immediately, whole."""
        self.requests += 1
        return Completion(("".join(ANSWER_CHUNKS),), Usage(100, 8))

    async def aclose(self) -> None:
        """Nothing to release."""


class CountingSink:
    """Reply sink that only counts writes; paced like a Telegram group (1 write/s)."""

    max_message_len = 4096
    can_stream = True
    edit_interval_s = 1.0

    def __init__(self) -> None:
        self.sends = 0
        self.edits = 0

    async def send(self, text: str) -> str:
        """Count a send."""
        self.sends += 1
        return str(self.sends)

    async def edit(self, message_id: str, text: str) -> None:
        """Count an edit."""
        self.edits += 1

    @asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        """No indicator."""
        yield
