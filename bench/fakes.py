"""Benchmark models and sinks: instant or on a fixed schedule, so figures measure gptrelay alone."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

from bot.loop import LoopChoice, run
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

    async def probe(self) -> None:
        """Always ready."""

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


# Tags like "q17" in a benchmark prompt name the request in the first-token log.
TAG_RE = re.compile(r"\bq(\d+)\b")


class PacedStream:
    """Tokens on a fixed schedule from the request's start, as a model server produces them.

    A reader that falls behind (a paced write) gets the tokens that came due meanwhile at once, as
    it would from a real server's buffered HTTP stream.
    """

    def __init__(
        self, tokens: Sequence[str], first_s: float, interval_s: float, on_first: Callable[[], None]
    ) -> None:
        self.usage: Usage | None = None
        self._tokens = tokens
        self._first_s = first_s
        self._interval_s = interval_s
        self._on_first = on_first

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield each token at its time; call on_first at the first."""
        start = time.monotonic()
        for index, token in enumerate(self._tokens):
            delay = start + self._first_s + index * self._interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if index == 0:
                self._on_first()
            yield token
        self.usage = Usage(100, len(self._tokens))


class ScheduledModel:
    """ModelClient streaming `tokens` on a schedule; appends `<tag> <monotonic>` at each first token."""

    def __init__(self, tokens: Sequence[str], first_s: float, interval_s: float, log: Path | None) -> None:
        self._tokens = tokens
        self._first_s = first_s
        self._interval_s = interval_s
        self._log = log.open("a", encoding="utf-8") if log else None

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> PacedStream:
        """Answer on schedule; the tag is the `q<n>` in the user's message."""
        found = TAG_RE.search(turns[-1].content)
        tag = found.group(1) if found else "?"

        def first() -> None:
            if self._log is not None:
                # CLOCK_MONOTONIC is system-wide on Linux: the driver compares it with its own.
                self._log.write(f"{tag} {time.monotonic()!r}\n")
                self._log.flush()

        return PacedStream(self._tokens, self._first_s, self._interval_s, first)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Not used by these benchmarks."""
        await asyncio.sleep(self._first_s)
        return Completion(("".join(self._tokens),), Usage(100, len(self._tokens)))

    async def probe(self) -> None:
        """Always ready."""

    async def aclose(self) -> None:
        """Close the first-token log."""
        if self._log is not None:
            self._log.close()


def run_profiled(main: Coroutine[Any, Any, None], profile: str | None, loop: LoopChoice = "asyncio") -> None:
    """Run a bot subprocess's main coroutine on `loop`, with cProfile stats written to `profile` if given.

    gptrelay's side runs on the loop `gptrelay run` picks ("auto"); the floors on asyncio's own, as a
    bare python-telegram-bot or discord.py bot does.
    """
    if not profile:
        run(main, loop)
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        run(main, loop)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def add_event_loop_argument(parser: argparse.ArgumentParser) -> None:
    """--event-loop: gptrelay's GPTRELAY_EVENT_LOOP in a bench subprocess."""
    parser.add_argument(
        "--event-loop", choices=get_args(LoopChoice), default="auto", help="gptrelay's loop (auto: as `run`)"
    )


def run_side(
    args: argparse.Namespace,
    gptrelay: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
    floor: Callable[[argparse.Namespace], Coroutine[Any, Any, None]],
) -> None:
    """Run a bench subprocess's bot: gptrelay on `--event-loop`, the floor on asyncio's own loop."""
    if args.bot == "serve-bot":
        run_profiled(gptrelay(args), args.profile, args.event_loop)
    else:
        run_profiled(floor(args), args.profile)
