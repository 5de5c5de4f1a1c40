"""Per-conversation ordering: one message at a time per key, many keys at once, bounded."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[], Awaitable[T]]


class Slot(Generic[T]):
    """A reserved place in a conversation's line; filled with a job or skipped."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._job: asyncio.Future[Job[T] | None] = loop.create_future()
        self.result: asyncio.Future[T] = loop.create_future()

    def fill(self, job: Job[T]) -> asyncio.Future[T]:
        """Give the slot its work; the returned future resolves with the job's result."""
        self._job.set_result(job)
        return self.result

    def skip(self) -> None:
        """Give the place up (a duplicate, or a failure before the job existed)."""
        if not self._job.done():
            self._job.set_result(None)
        self.result.cancel()

    async def job(self) -> Job[T] | None:
        """Wait until the slot is filled or skipped."""
        return await self._job


class ConversationQueue(Generic[T]):
    """Runs jobs of one key strictly in reservation order; different keys run concurrently."""

    def __init__(self, max_concurrent: int) -> None:
        self._lines: dict[str, deque[Slot[T]]] = {}
        self._limit = asyncio.Semaphore(max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0

    @property
    def active(self) -> int:
        """Conversations with work queued or running."""
        return len(self._lines)

    @property
    def running(self) -> int:
        """Jobs running now (one per conversation at most)."""
        return self._running

    @property
    def waiting(self) -> int:
        """Places reserved and not running yet (O(conversations): for metrics scrapes only)."""
        return sum(len(line) for line in self._lines.values()) - self._running

    def reserve(self, key: str) -> Slot[T]:
        """Take the next place in a key's line, synchronously, so arrival order is kept."""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = deque()
            task = asyncio.create_task(self._run_line(key, line), name=f"conversation {key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        slot: Slot[T] = Slot()
        line.append(slot)
        return slot

    async def _run_line(self, key: str, line: deque[Slot[T]]) -> None:
        """Work through a key's line until it is empty, then forget the key."""
        try:
            while line:
                slot = line[0]
                job = await slot.job()
                if job is not None:
                    async with self._limit:
                        self._running += 1
                        try:
                            await self._run(slot, job)
                        finally:
                            self._running -= 1
                line.popleft()
        finally:
            # No await between the emptiness check and here, so no slot can be stranded.
            self._lines.pop(key, None)
            # Left only when the line was cancelled: tell whoever awaits those results.
            for slot in line:
                slot.result.cancel()

    @staticmethod
    async def _run(slot: Slot[T], job: Job[T]) -> None:
        """Run one job, handing its outcome to whoever awaits the slot."""
        try:
            value = await job()
        except Exception as exc:
            logger.exception("job failed")
            if not slot.result.done():
                slot.result.set_exception(exc)
                slot.result.exception()  # retrieved here: a caller may not be awaiting
            return
        # Done already when the caller gave up (a cancelled await cancels the future).
        if not slot.result.done():
            slot.result.set_result(value)

    async def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every line to finish; True if all did."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def cancel(self) -> None:
        """Stop every line now."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
