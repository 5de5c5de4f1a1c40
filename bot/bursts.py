"""Bursts: messages from one user that arrive together are answered as one prompt.

Telegram splits a long paste into several messages sent within a second; answering each part
on its own would waste the model and confuse the user. A message that looks like such a part
(nearly as long as the platform allows) waits `burst_window_s` for the next one; a message
that arrives while the same user's previous one is still waiting for its turn joins it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from bot.commands import parse_command
from bot.config import Settings
from bot.messages import IncomingMessage, ReplySink

logger = logging.getLogger(__name__)

# A message at least this share of the platform's longest message is probably one part of a
# split paste (Telegram cuts near 4096 characters, at a word boundary).
SPLIT_SHARE = 0.8


@dataclass(slots=True)
class Burst:
    """Messages of one user in one conversation, to be answered together."""

    key: tuple[str, str]
    sink: ReplySink
    messages: list[IncomingMessage]
    inbox_ids: list[int]
    last_at: float
    started: bool = False
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


class Bursts:
    """The open bursts, by conversation and user."""

    def __init__(self, settings: Settings) -> None:
        self._window = settings.burst_window_s
        self._always = settings.burst_wait == "always"
        self._platforms = frozenset(settings.burst_platforms)
        self._open: dict[tuple[str, str], Burst] = {}

    def _eligible(self, message: IncomingMessage, sink: ReplySink) -> bool:
        """Plain text on a platform that bursts; a command or a textless message stands alone.

        So does a message whose sink must carry its own answer (a sink may declare
        `mergeable = False`: a Discord slash command's interaction waits for its response).
        """
        text = message.text.strip()
        return (
            self._window > 0
            and message.platform in self._platforms
            and bool(text)
            and parse_command(text) is None
            and getattr(sink, "mergeable", True)
        )

    def join(
        self, key: str, message: IncomingMessage, sink: ReplySink, inbox_id: int
    ) -> asyncio.Future[Any] | None:
        """Add the message to its user's waiting burst; return that burst's reply, or None."""
        burst = self._open.get((key, message.user_id))
        if burst is None or burst.started or burst.future is None or not self._eligible(message, sink):
            return None
        burst.messages.append(message)
        burst.inbox_ids.append(inbox_id)
        burst.last_at = asyncio.get_running_loop().time()
        logger.info(
            "%s message %s joins a burst of %d", message.platform, message.message_id, len(burst.messages)
        )
        return burst.future

    def open(self, key: str, message: IncomingMessage, sink: ReplySink, inbox_id: int) -> Burst | None:
        """Start a burst with this message, if it may have followers."""
        if not self._eligible(message, sink):
            return None
        burst = Burst((key, message.user_id), sink, [message], [inbox_id], asyncio.get_running_loop().time())
        self._open[burst.key] = burst
        return burst

    async def settle(self, burst: Burst) -> tuple[IncomingMessage, tuple[int, ...]]:
        """Wait while more parts may follow; close the burst and return it as one message."""
        loop = asyncio.get_running_loop()
        while self._may_continue(burst):
            remaining = burst.last_at + self._window - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(remaining)
        burst.started = True
        if self._open.get(burst.key) is burst:
            del self._open[burst.key]
        first = burst.messages[0]
        if len(burst.messages) == 1:
            return first, tuple(burst.inbox_ids)
        text = "\n".join(m.text for m in burst.messages)
        return replace(first, text=text), tuple(burst.inbox_ids)

    def _may_continue(self, burst: Burst) -> bool:
        """Whether to wait for another part after the latest message."""
        if self._always:
            return True
        return len(burst.messages[-1].text) >= SPLIT_SHARE * burst.sink.max_message_len
