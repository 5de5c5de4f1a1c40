"""ConversationQueue: strict order per key, concurrency across keys, bounded, and clean shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from bot.ordering import ConversationQueue

WAIT_S = 1.0


def recorder(
    log: list[str], name: str, delay_s: float = 0.0, result: object = None
) -> Callable[[], Awaitable[object]]:
    """A job that logs its start and end around an optional sleep."""

    async def job() -> object:
        log.append(f"start {name}")
        await asyncio.sleep(delay_s)
        log.append(f"end {name}")
        return result if result is not None else name

    return job


def waiting_on(gate: asyncio.Event, started: asyncio.Event | None = None) -> Callable[[], Awaitable[str]]:
    """A job that runs until the gate opens."""

    async def job() -> str:
        if started is not None:
            started.set()
        await gate.wait()
        return "opened"

    return job


# -- order within a key --------------------------------------------------------------------------


async def test_same_key_runs_in_reservation_order_even_when_filled_out_of_order() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    a1 = queue.reserve("A")
    a2 = queue.reserve("A")
    a3 = queue.reserve("A")
    second = a2.fill(recorder(log, "A2"))
    third = a3.fill(recorder(log, "A3"))
    await asyncio.sleep(0.01)
    assert log == []  # A1 holds the line until it is filled
    first = a1.fill(recorder(log, "A1"))
    assert await asyncio.wait_for(asyncio.gather(first, second, third), WAIT_S) == ["A1", "A2", "A3"]
    assert log == ["start A1", "end A1", "start A2", "end A2", "start A3", "end A3"]


async def test_same_key_order_holds_for_jobs_of_different_durations() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    slow, quick, instant = queue.reserve("A"), queue.reserve("A"), queue.reserve("A")
    futures = [
        instant.fill(recorder(log, "instant")),
        quick.fill(recorder(log, "quick", 0.01)),
        slow.fill(recorder(log, "slow", 0.05)),
    ]
    await asyncio.wait_for(asyncio.gather(*futures), WAIT_S)
    assert log == ["start slow", "end slow", "start quick", "end quick", "start instant", "end instant"]


# -- across keys ---------------------------------------------------------------------------------


async def test_different_keys_run_concurrently() -> None:
    queue: ConversationQueue[str] = ConversationQueue(max_concurrent=4)
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def job_a() -> str:
        a_started.set()
        await b_started.wait()  # only finishes if B runs while A is still running
        return "a"

    async def job_b() -> str:
        b_started.set()
        await a_started.wait()
        return "b"

    a = queue.reserve("A").fill(job_a)
    b = queue.reserve("B").fill(job_b)
    assert await asyncio.wait_for(asyncio.gather(a, b), WAIT_S) == ["a", "b"]


async def test_unfilled_slot_blocks_only_its_own_key() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    held = queue.reserve("A")
    later_a = queue.reserve("A").fill(recorder(log, "A2"))
    b = queue.reserve("B").fill(recorder(log, "B1"))
    await asyncio.wait_for(b, WAIT_S)
    assert log == ["start B1", "end B1"]
    assert not later_a.done()
    held.fill(recorder(log, "A1"))
    await asyncio.wait_for(later_a, WAIT_S)
    assert log[2:] == ["start A1", "end A1", "start A2", "end A2"]


async def test_max_concurrent_is_respected() -> None:
    queue: ConversationQueue[str] = ConversationQueue(max_concurrent=2)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def job() -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return "done"

    futures = [queue.reserve(f"chat {n}").fill(job) for n in range(6)]
    await asyncio.sleep(0.02)
    assert (running, peak) == (2, 2)
    assert queue.active == 6
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*futures), WAIT_S) == ["done"] * 6
    assert peak == 2


# -- skipping and failures -----------------------------------------------------------------------


async def test_skip_releases_the_place() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    a1, a2, a3 = queue.reserve("A"), queue.reserve("A"), queue.reserve("A")
    third = a3.fill(recorder(log, "A3"))
    a2.skip()
    first = a1.fill(recorder(log, "A1"))
    assert await asyncio.wait_for(asyncio.gather(first, third), WAIT_S) == ["A1", "A3"]
    assert log == ["start A1", "end A1", "start A3", "end A3"]
    assert a2.result.cancelled()


async def test_skip_of_first_slot_lets_the_rest_run() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    first, second = queue.reserve("A"), queue.reserve("A")
    result = second.fill(recorder(log, "A2"))
    first.skip()
    assert await asyncio.wait_for(result, WAIT_S) == "A2"
    await queue.join(WAIT_S)
    assert queue.active == 0


async def test_raising_job_sets_exception_and_line_continues(caplog: pytest.LogCaptureFixture) -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []

    async def broken() -> object:
        raise RuntimeError("model exploded")

    failing = queue.reserve("A").fill(broken)
    after = queue.reserve("A").fill(recorder(log, "A2"))
    assert await asyncio.wait_for(after, WAIT_S) == "A2"
    assert failing.done()
    with pytest.raises(RuntimeError, match="model exploded"):
        failing.result()
    assert "job failed" in caplog.text


async def test_caller_giving_up_on_a_result_does_not_stall_the_line() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    gate = asyncio.Event()
    started = asyncio.Event()
    abandoned = queue.reserve("A").fill(waiting_on(gate, started))
    later = queue.reserve("A").fill(recorder(log, "A2"))
    await asyncio.wait_for(started.wait(), WAIT_S)
    # An awaiting caller that is cancelled (client gone, handler timeout) cancels the future.
    abandoned.cancel()
    gate.set()
    assert await asyncio.wait_for(later, WAIT_S) == "A2"
    assert await queue.join(WAIT_S)


# -- lifecycle -----------------------------------------------------------------------------------


async def test_key_forgotten_after_its_line_empties() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=4)
    log: list[str] = []
    assert queue.active == 0
    a = queue.reserve("A").fill(recorder(log, "A1"))
    b = queue.reserve("B")
    assert queue.active == 2
    await asyncio.wait_for(a, WAIT_S)
    assert await queue.join(0.05) is False  # B's slot is still unfilled
    assert queue.active == 1
    b.fill(recorder(log, "B1"))
    assert await queue.join(WAIT_S) is True
    assert queue.active == 0
    # A key used again after it was forgotten gets a new line that works.
    assert await asyncio.wait_for(queue.reserve("A").fill(recorder(log, "A again")), WAIT_S) == "A again"


async def test_join_without_work_is_true_at_once() -> None:
    queue: ConversationQueue[object] = ConversationQueue(max_concurrent=1)
    assert await queue.join(0) is True


async def test_join_times_out_then_succeeds() -> None:
    queue: ConversationQueue[str] = ConversationQueue(max_concurrent=4)
    gate = asyncio.Event()
    result = queue.reserve("A").fill(waiting_on(gate))
    assert await queue.join(0.05) is False
    assert not result.done()
    gate.set()
    assert await queue.join(WAIT_S) is True
    assert result.result() == "opened"


async def test_cancel_stops_running_and_waiting_jobs() -> None:
    queue: ConversationQueue[str] = ConversationQueue(max_concurrent=1)
    started = asyncio.Event()
    stopped: list[str] = []

    async def forever() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append("forever")
        return "unreachable"

    running = queue.reserve("A").fill(forever)
    queued_same_key = queue.reserve("A").fill(waiting_on(asyncio.Event()))
    queued_other_key = queue.reserve("B").fill(waiting_on(asyncio.Event()))  # waits for the semaphore
    unfilled = queue.reserve("C")
    await asyncio.wait_for(started.wait(), WAIT_S)

    await asyncio.wait_for(queue.cancel(), WAIT_S)
    assert stopped == ["forever"]
    assert queue.active == 0
    assert await queue.join(0) is True
    # Nobody awaiting a result is left hanging.
    for future in (running, queued_same_key, queued_other_key, unfilled.result):
        assert future.cancelled()
