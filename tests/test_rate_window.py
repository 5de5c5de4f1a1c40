"""RateWindow: the bot-wide request budget shared by the Telegram and Discord gates."""

from __future__ import annotations

import asyncio

from adapters.rate_window import RateWindow


async def test_never_more_than_the_limit_in_any_window() -> None:
    window = RateWindow(3, 0.2)
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def request() -> None:
        async with window.slot():
            started.append(loop.time())
            await asyncio.sleep(0.01)

    await asyncio.gather(*(request() for _ in range(7)))

    started.sort()
    assert len(started) == 7
    for i, at in enumerate(started):
        assert sum(1 for other in started[i:] if other < at + 0.2) <= 3


async def test_in_flight_requests_count_until_a_window_after_they_finish() -> None:
    window = RateWindow(1, 0.1)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()

    async def slow() -> float:
        async with window.slot():
            await release.wait()
            return loop.time()

    first = asyncio.create_task(slow())
    await asyncio.sleep(0.15)  # longer than the window, but the first is still in flight
    async with window.slot_if_free() as free:
        assert not free
    release.set()
    finished = await first
    async with window.slot():
        assert loop.time() >= finished + 0.1 - 0.01


async def test_reserved_slots_are_left_to_others() -> None:
    window = RateWindow(3, 1.0)
    async with window.slot(), window.slot_if_free(reserve=2) as typing:
        assert not typing  # one used, two reserved: nothing left for this request
        async with window.slot_if_free() as important:
            assert important
