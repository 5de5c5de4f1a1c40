"""Pacing writes inside Telegram's flood limits, so streaming never earns a 429."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

# Published limits are approximate: about 1 message/s per chat, 20 per minute per group,
# about 30/s overall; edits count. Stay a little under each.
PRIVATE_INTERVAL_S = 1.05
GROUP_INTERVAL_S = 3.1
GLOBAL_PER_S = 28
GLOBAL_WINDOW_S = 1.0


class FloodGate:
    """Reserves each write a slot: spaced per chat, and a bounded number per second overall."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._next_at: dict[int, float] = {}
        self._recent: deque[float] = deque()

    async def wait(self, chat_id: int, group: bool) -> None:
        """Wait until a write to `chat_id` is allowed, and count it."""
        now = self._clock()
        # Reserve the chat's slot before sleeping, so concurrent writers queue behind each other.
        at = max(now, self._next_at.get(chat_id, now))
        self._next_at[chat_id] = at + (GROUP_INTERVAL_S if group else PRIVATE_INTERVAL_S)
        if at > now:
            await self._sleep(at - now)
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
        """Telegram said retry_after: nothing goes to that chat until then."""
        self._next_at[chat_id] = max(self._next_at.get(chat_id, 0.0), self._clock() + seconds)

    def forget_idle(self) -> None:
        """Drop chats whose slots are in the past, so memory stays bounded."""
        now = self._clock()
        for chat_id in [c for c, at in self._next_at.items() if at < now]:
            del self._next_at[chat_id]
