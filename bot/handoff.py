"""Deltas from a generation thread to the event loop, waking the loop once per batch, not per token."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

# After a batch is taken, the loop lets tokens gather this long before taking the next. Every
# wake-up of the loop (and every socket write it then makes) takes a core away from llama.cpp's
# threads, which wait for each other at every layer: per-token hand-offs cost the embedded model
# about 4% of its decode speed. 40 ms is below what a reader notices; the first token and the end
# of an answer are never held back.
LINGER_S = 0.04
# The producer waits at most this long for the first delta to be passed on before generating on.
FIRST_HANDOVER_S = 0.05


@dataclass(frozen=True, slots=True)
class Batch:
    """What the producer handed over since the last take."""

    deltas: list[str]
    done: bool = False
    error: BaseException | None = None


class Handoff:
    """One producer thread puts deltas; one coroutine takes them in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop, linger_s: float = LINGER_S) -> None:
        self._loop = loop
        self._linger_s = linger_s
        self._lock = threading.Lock()
        self._deltas: list[str] = []
        self._done = False
        self._error: BaseException | None = None
        # The taker found nothing and waits: the next put must wake it.
        self._idle = True
        self._ready = asyncio.Event()
        self._first_passed_on = threading.Event()
        self.count = 0  # deltas put so far

    def put(self, delta: str) -> None:
        """Hand over one delta (producer thread)."""
        with self._lock:
            self._deltas.append(delta)
            self.count += 1
            wake, self._idle = self._idle, False
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    def wait_first_passed_on(self) -> None:
        """Block until the taker has passed the first delta on (producer thread, bounded).

        llama.cpp's threads fill every core: generating the second token at once would make the
        loop, and the reader it writes to, wait for a core before the first token reaches anyone.
        """
        self._first_passed_on.wait(FIRST_HANDOVER_S)

    def first_passed_on(self) -> None:
        """The first delta has been passed on (taker); the producer may go on."""
        self._first_passed_on.set()

    def finish(self, error: BaseException | None = None) -> None:
        """No more deltas; `error` if the generation failed (producer thread)."""
        with self._lock:
            self._done = True
            self._error = error
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, linger: bool) -> Batch:
        """The next non-empty batch, or the end; `linger` lets tokens gather first."""
        timer = self._loop.call_later(self._linger_s, self._ready.set) if linger else None
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                with self._lock:
                    deltas, self._deltas = self._deltas, []
                    if deltas or self._done:
                        return Batch(deltas, self._done, self._error)
                    self._idle = True
        finally:
            if timer is not None:
                timer.cancel()
