"""Pacing writes inside Discord's per-channel rate limit, so streaming never stalls or 429s."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

from adapters.rate_window import FreeSlot, RateWindow

# Discord allows 5 message writes per 5 s per channel, but discord.py holds back the request
# that empties a bucket until it resets (~5 s): keep to 4 per window on the path to an answer.
WRITES_PER_WINDOW = 4
WINDOW_S = 5.0
# Discord's global limit is 50 requests/s per bot; typing indicators get only what answers leave.
GLOBAL_PER_S = 45
TYPING_RESERVE = 15

# Idle chats are forgotten every this many writes, so memory stays bounded.
FORGET_EVERY = 1024


class ChannelGate:
    """At most WRITES_PER_WINDOW writes in any WINDOW_S per channel; slots are reserved in order."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._waits = 0
        self._slots: dict[int, deque[float]] = {}
        self._global = RateWindow(GLOBAL_PER_S, 1.0, clock, sleep)

    def write(self, channel_id: int) -> Write:
        """Hold the channel's next slot and a share of the bot-wide budget for one write."""
        return Write(self, self._global, channel_id)

    def typing(self) -> FreeSlot:
        """A bot-wide slot for a typing indicator, only if answers leave one free now."""
        return self._global.slot_if_free(reserve=TYPING_RESERVE)

    async def wait(self, channel_id: int) -> None:
        """Wait for the channel's next free slot (reserved before sleeping)."""
        self._waits += 1
        if self._waits % FORGET_EVERY == 0:
            self.forget_idle()
        now = self._clock()
        slots = self._slots.get(channel_id)
        if slots is None:
            slots = self._slots[channel_id] = deque(maxlen=WRITES_PER_WINDOW)
        at = now
        if slots:
            at = max(at, slots[-1])
        if len(slots) == WRITES_PER_WINDOW:
            at = max(at, slots[0] + WINDOW_S)
        slots.append(at)  # maxlen drops the oldest: only the last N matter
        if at > now:
            await self._sleep(at - now)

    def forget_idle(self) -> None:
        """Drop channels with no write in the last window, so memory stays bounded."""
        horizon = self._clock() - WINDOW_S
        for channel_id in [c for c, s in self._slots.items() if not s or s[-1] < horizon]:
            del self._slots[channel_id]


class Write:
    """`async with gate.write(channel_id):` one write, in the channel's slot and the bot-wide budget.

    A class rather than a generator-based context manager: every answer enters one.
    """

    __slots__ = ("_channel_id", "_gate", "_global")

    def __init__(self, gate: ChannelGate, budget: RateWindow, channel_id: int) -> None:
        self._gate = gate
        self._global = budget
        self._channel_id = channel_id

    async def __aenter__(self) -> None:
        """Wait for the channel's slot, then for the bot-wide one."""
        await self._gate.wait(self._channel_id)
        await self._global.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Free the bot-wide slot (one window later)."""
        self._global.release()
