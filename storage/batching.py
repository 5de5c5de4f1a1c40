"""Group commit: calls that arrive while one batch is in the database go together in the next."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs `run_batch` over the items submitted so far; each caller gets its own result.

    Each aiosqlite call is a hop to the database thread and back: a lone call goes at once, and
    under load the hops per call fall to a few per batch instead of one or more each.
    """

    def __init__(self, run_batch: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result (or its batch's exception)."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        """Run batches until nothing is pending."""
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                if len(batch) == 1:
                    await self._run_alone(*batch[0])
                    continue
                try:
                    results = await self._run_batch([item for item, _ in batch])
                except Exception:
                    # One bad item must not fail the others: each goes again on its own.
                    for item, done in batch:
                        await self._run_alone(item, done)
                    continue
                for result, (_, done) in zip(results, batch, strict=True):
                    if not done.done():
                        done.set_result(result)
        except BaseException:
            # Cancelled mid-batch (loop shutdown): nobody may be left waiting forever.
            for _, done in [*batch, *self._pending]:
                if not done.done():
                    done.cancel()
            self._pending = []
            raise

    async def _run_alone(self, item: T, done: asyncio.Future[R]) -> None:
        """Run a batch of one item, handing its result or exception to its caller."""
        try:
            [result] = await self._run_batch([item])
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
        else:
            if not done.done():
                done.set_result(result)

    async def drain(self) -> None:
        """Wait until every submitted item has been handled."""
        if self._flusher is not None:
            await self._flusher
