"""Pacing writes inside Telegram's flood limits, so streaming never earns a 429."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

# Published limits are approximate: about 1 message/s per chat (short bursts tolerated),
# 20 per minute per group, about 30/s overall; edits count. Stay a little under each.
PRIVATE_INTERVAL_S = 1.05
# A private chat may take two writes back to back (a draft, then the final message of a short
# answer) before the spacing applies; a group never bursts, or 20 per minute could be exceeded.
PRIVATE_BURST = 2
GROUP_INTERVAL_S = 3.1
GLOBAL_PER_S = 28
GLOBAL_WINDOW_S = 1.0

# Idle chats are forgotten every this many writes, so memory stays bounded.
FORGET_EVERY = 1024


class FloodGate:
    """Reserves each write a slot: spaced per chat, and a bounded number per second overall.

    Per chat this is GCRA (a token bucket kept as one "theoretical arrival time"), so concurrent
    writers to one chat each reserve a distinct slot before they sleep.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._waits = 0
        self._tat: dict[int, float] = {}
        self._recent: deque[float] = deque()

    async def wait(self, chat_id: int, group: bool) -> None:
        """Wait until a write to `chat_id` is allowed, and count it."""
        self._waits += 1
        if self._waits % FORGET_EVERY == 0:
            self.forget_idle()
        now = self._clock()
        interval = GROUP_INTERVAL_S if group else PRIVATE_INTERVAL_S
        tolerance = 0.0 if group else (PRIVATE_BURST - 1) * PRIVATE_INTERVAL_S
        tat = max(self._tat.get(chat_id, now), now)
        # Reserve before sleeping, so concurrent writers queue behind each other.
        self._tat[chat_id] = tat + interval
        start = tat - tolerance
        if start > now:
            await self._sleep(start - now)
        await self._global_slot()

    async def _global_slot(self) -> None:
        """Wait until fewer than GLOBAL_PER_S writes happened in the last second."""
        while True:
            now = self._clock()
            while self._recent and self._recent[0] <= now - GLOBAL_WINDOW_S:
                self._recent.popleft()
            if len(self._recent) < GLOBAL_PER_S:
                self._recent.append(now)
                return
            await self._sleep(self._recent[0] + GLOBAL_WINDOW_S - now)

    def penalize(self, chat_id: int, seconds: float) -> None:
        """Telegram said retry_after: nothing goes to that chat until then, and no burst after."""
        until = self._clock() + seconds + (PRIVATE_BURST - 1) * PRIVATE_INTERVAL_S
        self._tat[chat_id] = max(self._tat.get(chat_id, 0.0), until)

    def forget_idle(self) -> None:
        """Drop chats whose slots are in the past, so memory stays bounded."""
        now = self._clock()
        for chat_id in [c for c, tat in self._tat.items() if tat < now]:
            del self._tat[chat_id]
