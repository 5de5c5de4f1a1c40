"""Pacing writes inside Telegram's flood limits, so streaming never earns a 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from adapters.rate_window import RateWindow

# Published limits are approximate: about 1 message/s per chat (short bursts tolerated),
# 20 per minute per group, about 30 messages/s overall; edits count. Stay a little under each.
# Drafts (sendMessageDraft) are ephemeral previews, not messages: they are spaced per chat like
# any write, but left out of the bot-wide messages budget (see FloodGate.slot).
PRIVATE_INTERVAL_S = 1.05
# A private chat may take two writes back to back (a draft, then the final message of a short
# answer) before the spacing applies; a group never bursts, or 20 per minute could be exceeded.
PRIVATE_BURST = 2
GROUP_INTERVAL_S = 3.1
GLOBAL_PER_S = 28
GLOBAL_WINDOW_S = 1.0
# Global slots only first messages of answers may take, so a new answer appears promptly
# even while many answers are being edited.
RESERVED_FOR_FIRST = 6

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
        self._global = RateWindow(GLOBAL_PER_S, GLOBAL_WINDOW_S, clock, sleep)

    async def wait(self, chat_id: int, group: bool) -> None:
        """Wait until a write to `chat_id` is allowed, and count it as done now."""
        async with self.slot(chat_id, group):
            pass

    @asynccontextmanager
    async def slot(
        self, chat_id: int, group: bool, first: bool = False, draft: bool = False
    ) -> AsyncIterator[None]:
        """Hold a write's slot for the duration of the request.

        `first`: an answer's first text, which may take the reserved global slots. `draft`: a
        sendMessageDraft preview, spaced per chat only; Telegram's ~30/s bot-wide limit is on
        messages, and counting 50 private chats' previews against it would hold each new answer
        back by seconds.
        """
        await self._chat_slot(chat_id, group)
        if draft:
            yield
            return
        async with self._global.slot(reserve=0 if first else RESERVED_FOR_FIRST):
            yield

    async def _chat_slot(self, chat_id: int, group: bool) -> None:
        """Wait for the chat's next slot (GCRA)."""
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

    def penalize(self, chat_id: int, seconds: float) -> None:
        """Telegram said retry_after: nothing goes to that chat until then, and no burst after."""
        until = self._clock() + seconds + (PRIVATE_BURST - 1) * PRIVATE_INTERVAL_S
        self._tat[chat_id] = max(self._tat.get(chat_id, 0.0), until)

    def forget_idle(self) -> None:
        """Drop chats whose slots are in the past, so memory stays bounded."""
        now = self._clock()
        for chat_id in [c for c, tat in self._tat.items() if tat < now]:
            del self._tat[chat_id]
