"""A typing indicator that starts only if the answer is not visible after a short delay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any


@asynccontextmanager
async def delayed_typing(
    visible: asyncio.Event, keep_typing: Callable[[], Coroutine[Any, Any, None]], delay_s: float
) -> AsyncIterator[None]:
    """Run `keep_typing` from `delay_s` on, unless `visible` is set by then; stop it on exit.

    A timer instead of a waiting task: most answers are visible before the delay, and then
    this costs one timer handle rather than two tasks and a request.
    """
    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] | None = None

    def begin() -> None:
        nonlocal task
        if not visible.is_set():
            task = loop.create_task(keep_typing())

    timer = loop.call_later(delay_s, begin)
    try:
        yield
    finally:
        timer.cancel()
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
