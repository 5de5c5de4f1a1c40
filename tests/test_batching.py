"""Group commit: items submitted together share a batch; one bad item fails only its own caller."""

from __future__ import annotations

import asyncio

import pytest

from storage.batching import Batcher


class Doubler:
    """A batch function that doubles numbers, refuses negative ones, and records its batches."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.release.wait()
        if any(n < 0 for n in items):
            raise ValueError(f"negative in {items}")
        return [n * 2 for n in items]


async def test_a_lone_item_runs_at_once_and_gets_its_result() -> None:
    work = Doubler()
    batcher = Batcher(work, max_batch=10)

    assert await batcher.submit(21) == 42
    assert work.batches == [[21]]


async def test_items_arriving_while_a_batch_runs_share_the_next_batch() -> None:
    work = Doubler()
    work.release.clear()
    batcher = Batcher(work, max_batch=10)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first batch is now in the "database"
    later = [asyncio.create_task(batcher.submit(n)) for n in range(2, 6)]
    await asyncio.sleep(0)
    work.release.set()

    assert await first == 2
    assert await asyncio.gather(*later) == [4, 6, 8, 10]
    assert work.batches == [[1], [2, 3, 4, 5]]


async def test_batches_are_capped() -> None:
    work = Doubler()
    batcher = Batcher(work, max_batch=3)

    results = await asyncio.gather(*(batcher.submit(n) for n in range(7)))

    assert results == [n * 2 for n in range(7)]
    assert [len(batch) for batch in work.batches] == [3, 3, 1]


async def test_one_bad_item_fails_only_its_own_caller() -> None:
    work = Doubler()
    batcher = Batcher(work, max_batch=10)

    results = await asyncio.gather(*(batcher.submit(n) for n in (1, -1, 3)), return_exceptions=True)

    assert results[0] == 2
    assert isinstance(results[1], ValueError)
    assert results[2] == 6
    assert work.batches == [[1, -1, 3], [1], [-1], [3]]


async def test_cancelled_flush_leaves_nobody_waiting() -> None:
    work = Doubler()
    work.release.clear()
    batcher = Batcher(work, max_batch=10)
    waiting = [asyncio.create_task(batcher.submit(n)) for n in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert batcher._flusher is not None
    batcher._flusher.cancel()

    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
