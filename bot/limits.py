"""Message rate limits per user and per chat: sliding one-minute windows kept in memory."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 60.0
# Idle keys are forgotten every this many hits, so memory stays bounded by active users.
FORGET_EVERY = 4096


@dataclass(frozen=True, slots=True)
class Verdict:
    """Over the limit: how long until the next message is accepted, and whether to say so."""

    retry_after: float
    notify: bool


class SlidingWindow:
    """At most `limit` hits per key in any WINDOW_S seconds."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        # Until when a key was told it is limited: one notice per limited stretch.
        self._told_until: dict[str, float] = {}
        self._count = 0

    def hit(self, key: str) -> Verdict | None:
        """Count a message; None when accepted, else a verdict (the message is not counted)."""
        now = self._clock()
        self._count += 1
        if self._count % FORGET_EVERY == 0:
            self._forget(now)
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - WINDOW_S:
            hits.popleft()
        if len(hits) < self._limit:
            hits.append(now)
            return None
        retry_after = hits[0] + WINDOW_S - now
        notify = self._told_until.get(key, float("-inf")) <= now
        if notify:
            self._told_until[key] = now + retry_after
        return Verdict(retry_after, notify)

    def _forget(self, now: float) -> None:
        """Drop keys with no hit inside the window."""
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= now - WINDOW_S]:
            del self._hits[key]
            self._told_until.pop(key, None)


class RateLimits:
    """The per-user and per-chat limits of the settings (None: no limit)."""

    def __init__(
        self, per_user: int | None, per_chat: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._user = SlidingWindow(per_user, clock) if per_user else None
        self._chat = SlidingWindow(per_chat, clock) if per_chat else None

    def check(self, user: str, chat: str) -> tuple[str, Verdict] | None:
        """None when the message may go on; else which limit ('user' or 'chat') and its verdict."""
        if self._user is not None and (verdict := self._user.hit(user)) is not None:
            return "user", verdict
        if self._chat is not None and (verdict := self._chat.hit(chat)) is not None:
            return "chat", verdict
        return None
