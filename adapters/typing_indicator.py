"""A typing indicator that starts only if the answer is not visible after a short delay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import suppress
from types import TracebackType
from typing import Any


class DelayedTyping:
    """Runs `keep_typing` from `delay_s` on, unless `visible` is set by then; stops it on exit.

    A timer instead of a waiting task: most answers are visible before the delay, and then
    this costs one timer handle rather than two tasks and a request. A class rather than a
    generator-based context manager, for the same reason: every answer enters one.
    """

    __slots__ = ("_delay_s", "_keep_typing", "_task", "_timer", "_visible")

    def __init__(
        self, visible: asyncio.Event, keep_typing: Callable[[], Coroutine[Any, Any, None]], delay_s: float
    ) -> None:
        self._visible = visible
        self._keep_typing = keep_typing
        self._delay_s = delay_s
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        """Start the timer."""
        self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._begin)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Cancel the timer, and stop the indicator if it started."""
        if self._timer is not None:
            self._timer.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def _begin(self) -> None:
        """The delay passed: start typing unless the answer is visible already."""
        if not self._visible.is_set():
            self._task = asyncio.get_running_loop().create_task(self._keep_typing())


def delayed_typing(
    visible: asyncio.Event, keep_typing: Callable[[], Coroutine[Any, Any, None]], delay_s: float
) -> DelayedTyping:
    """Run `keep_typing` from `delay_s` on, unless `visible` is set by then; stop it on exit."""
    return DelayedTyping(visible, keep_typing, delay_s)
