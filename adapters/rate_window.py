"""A bot-wide request budget: at most N requests in any window, counted as the server counts them."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

# How often the window is re-checked while every counted request is still in flight.
IN_FLIGHT_POLL_S = 0.02


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
        # Counted requests: those still in flight, and when each finished one did, oldest first.
        # Finish times are appended as they happen, so the deque stays sorted and the window is
        # pruned from the left: a busy bot has hundreds in the window, and a scan per request
        # was its costliest line.
        self._in_flight = 0
        self._finished: deque[float] = deque()
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self._timer: asyncio.Task[None] | None = None

    def slot(self, reserve: int = 0) -> WindowSlot:
        """Hold a slot for the duration of one request, waiting for one first."""
        return WindowSlot(self, reserve)

    def slot_if_free(self, reserve: int = 0) -> FreeSlot:
        """Hold a slot only if one is free now (for requests worth skipping, like typing)."""
        return FreeSlot(self, reserve)

    async def acquire(self, reserve: int = 0) -> None:
        """Count a request: a slot now if nobody is waiting, else a place in the queue."""
        if self.try_acquire(reserve):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, reserve))
        self._serve()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as we were cancelled
            raise

    def try_acquire(self, reserve: int = 0) -> bool:
        """Count a request only if a slot is free now and nobody is queued before it."""
        return not self._waiters and self._take(reserve)

    def release(self) -> None:
        """The request is done: it counts for one more window, then frees its slot."""
        self._in_flight -= 1
        self._finished.append(self._clock())
        if self._waiters:
            self._serve()

    def _serve(self) -> None:
        """Grant slots to waiters in order (skipping those whose reserve does not fit yet)."""
        for item in list(self._waiters):
            future, reserve = item
            if future.done():
                self._waiters.remove(item)
                continue
            if not self._take(reserve):
                continue
            self._waiters.remove(item)
            future.set_result(None)
        if self._waiters and (self._timer is None or self._timer.done()):
            self._timer = asyncio.get_running_loop().create_task(self._wake_later())

    async def _wake_later(self) -> None:
        """Serve the queue again when the oldest counted request leaves the window."""
        await self._sleep(self._next_free_in())
        self._timer = None
        self._serve()

    def _take(self, reserve: int) -> bool:
        """Count a request now if fewer than `limit - reserve` are in the window."""
        horizon = self._clock() - self._window_s
        finished = self._finished
        while finished and finished[0] <= horizon:
            finished.popleft()
        if self._in_flight + len(finished) >= self._limit - reserve:
            return False
        self._in_flight += 1
        return True

    def _next_free_in(self) -> float:
        """Seconds until the oldest finished request leaves the window."""
        if not self._finished:
            return IN_FLIGHT_POLL_S
        return max(self._finished[0] + self._window_s - self._clock(), 0.0)


class WindowSlot:
    """`async with window.slot():` one counted request, waiting for a slot first."""

    __slots__ = ("_reserve", "_window")

    def __init__(self, window: RateWindow, reserve: int) -> None:
        self._window = window
        self._reserve = reserve

    async def __aenter__(self) -> None:
        """Wait for the slot."""
        await self._window.acquire(self._reserve)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Free it (one window later)."""
        self._window.release()


class FreeSlot:
    """`async with window.slot_if_free() as free:` a counted request only if one is free now."""

    __slots__ = ("_held", "_reserve", "_window")

    def __init__(self, window: RateWindow, reserve: int) -> None:
        self._window = window
        self._reserve = reserve
        self._held = False

    async def __aenter__(self) -> bool:
        """Take a slot if one is free; say whether it was."""
        self._held = self._window.try_acquire(self._reserve)
        return self._held

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Free the slot, if one was taken."""
        if self._held:
            self._held = False
            self._window.release()
