"""A bot-wide request budget: at most N requests in any window, counted as the server counts them."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

# How often the window is re-checked while every counted request is still in flight.
IN_FLIGHT_POLL_S = 0.02

Entry = list[float]


class RateWindow:
    """At most `limit` requests in any `window_s`.

    The server counts a request when it arrives, which the client cannot see; so a request
    counts from when it leaves until `window_s` after its response, whatever the event loop's
    delays in between. `reserve` keeps the top slots for more important requests. Waiters queue
    in order and are woken by one timer, not by polling each on its own (with a thousand
    answers waiting, polling would cost more CPU than the answers).
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._sleep = sleep
        # One entry per counted request: when it finished, or inf while in flight.
        self._entries: list[Entry] = []
        self._waiters: deque[tuple[asyncio.Future[Entry], int]] = deque()
        self._timer: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def slot(self, reserve: int = 0) -> AsyncIterator[None]:
        """Hold a slot for the duration of one request, waiting for one first."""
        entry = await self._acquire(reserve)
        try:
            yield
        finally:
            self._release(entry)

    @asynccontextmanager
    async def slot_if_free(self, reserve: int = 0) -> AsyncIterator[bool]:
        """Hold a slot only if one is free now (for requests worth skipping, like typing)."""
        entry = None if self._waiters else self._take(reserve)
        try:
            yield entry is not None
        finally:
            if entry is not None:
                self._release(entry)

    async def _acquire(self, reserve: int) -> Entry:
        """A slot now if nobody is waiting, else a place in the queue."""
        if not self._waiters and (entry := self._take(reserve)) is not None:
            return entry
        future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, reserve))
        self._serve()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(future.result())  # granted just as we were cancelled
            raise

    def _release(self, entry: Entry) -> None:
        """The request is done: it counts for one more window, then frees its slot."""
        entry[0] = self._clock()
        self._serve()

    def _serve(self) -> None:
        """Grant slots to waiters in order (skipping those whose reserve does not fit yet)."""
        for item in list(self._waiters):
            future, reserve = item
            if future.done():
                self._waiters.remove(item)
                continue
            entry = self._take(reserve)
            if entry is None:
                continue
            self._waiters.remove(item)
            future.set_result(entry)
        if self._waiters and (self._timer is None or self._timer.done()):
            self._timer = asyncio.get_running_loop().create_task(self._wake_later())

    async def _wake_later(self) -> None:
        """Serve the queue again when the oldest counted request leaves the window."""
        await self._sleep(self._next_free_in())
        self._timer = None
        self._serve()

    def _take(self, reserve: int) -> Entry | None:
        """Count a request now if fewer than `limit - reserve` are in the window."""
        now = self._clock()
        self._entries = [entry for entry in self._entries if entry[0] > now - self._window_s]
        if len(self._entries) >= self._limit - reserve:
            return None
        entry = [math.inf]
        self._entries.append(entry)
        return entry

    def _next_free_in(self) -> float:
        """Seconds until the oldest finished request leaves the window."""
        finished = [entry[0] for entry in self._entries if entry[0] != math.inf]
        if not finished:
            return IN_FLIGHT_POLL_S
        return max(min(finished) + self._window_s - self._clock(), 0.0)
