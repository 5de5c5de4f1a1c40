"""A bot-wide request budget: at most N requests in any window, counted as the server counts them."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

# How often a waiter re-checks the window while every counted request is still in flight.
IN_FLIGHT_POLL_S = 0.02


class RateWindow:
    """At most `limit` requests in any `window_s`.

    The server counts a request when it arrives, which the client cannot see; so a request
    counts from when it leaves until `window_s` after its response, whatever the event loop's
    delays in between. `reserve` keeps the top slots for more important requests.
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
        self._entries: list[list[float]] = []

    @asynccontextmanager
    async def slot(self, reserve: int = 0) -> AsyncIterator[None]:
        """Hold a slot for the duration of one request, waiting for one first."""
        while (entry := self._take(reserve)) is None:
            await self._sleep(self._next_free_in())
        try:
            yield
        finally:
            entry[0] = self._clock()

    @asynccontextmanager
    async def slot_if_free(self, reserve: int = 0) -> AsyncIterator[bool]:
        """Hold a slot only if one is free now (for requests worth skipping, like typing)."""
        entry = self._take(reserve)
        try:
            yield entry is not None
        finally:
            if entry is not None:
                entry[0] = self._clock()

    def _take(self, reserve: int) -> list[float] | None:
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
        return max(min(finished) + self._window_s - self._clock(), IN_FLIGHT_POLL_S)
