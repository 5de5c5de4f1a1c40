"""Deltas from a producer thread to the loop: the first at once, later ones batched, the end at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from bot.handoff import Handoff

LONG_LINGER_S = 5.0
PROMPT_S = 1.0  # far below LONG_LINGER_S: "at once" with room for a slow CI machine


def in_thread(work: Callable[[], None]) -> threading.Thread:
    """Run `work` on a producer thread of its own."""
    thread = threading.Thread(target=work)
    thread.start()
    return thread


async def test_the_first_delta_is_taken_at_once() -> None:
    handoff = Handoff(asyncio.get_running_loop(), linger_s=LONG_LINGER_S)
    started = time.monotonic()
    in_thread(lambda: handoff.put("Hello")).join()

    batch = await handoff.take(linger=False)

    assert batch.deltas == ["Hello"]
    assert not batch.done
    assert time.monotonic() - started < PROMPT_S


async def test_deltas_during_the_linger_come_as_one_batch() -> None:
    handoff = Handoff(asyncio.get_running_loop(), linger_s=0.2)
    handoff.put("first")
    assert (await handoff.take(linger=False)).deltas == ["first"]

    def produce() -> None:
        for n in range(10):
            handoff.put(f" {n}")
            time.sleep(0.002)

    producer = in_thread(produce)
    batch = await handoff.take(linger=True)
    producer.join()

    assert batch.deltas == [f" {n}" for n in range(10)]
    assert handoff.count == 11


async def test_the_end_is_not_held_back_by_the_linger() -> None:
    handoff = Handoff(asyncio.get_running_loop(), linger_s=LONG_LINGER_S)
    handoff.put("a")
    await handoff.take(linger=False)
    started = time.monotonic()

    def produce() -> None:
        handoff.put("b")
        handoff.finish()

    in_thread(produce)
    batch = await handoff.take(linger=True)

    assert batch.deltas == ["b"]
    assert batch.done
    assert batch.error is None
    assert time.monotonic() - started < PROMPT_S


async def test_a_pause_after_the_linger_waits_for_the_next_delta() -> None:
    handoff = Handoff(asyncio.get_running_loop(), linger_s=0.01)
    handoff.put("a")
    await handoff.take(linger=False)
    taken = asyncio.create_task(handoff.take(linger=True))

    await asyncio.sleep(0.1)  # the linger ran out with nothing to take: still waiting
    assert not taken.done()
    in_thread(lambda: handoff.put("b")).join()

    batch = await asyncio.wait_for(taken, PROMPT_S)
    assert batch.deltas == ["b"]


async def test_an_error_arrives_with_the_deltas_before_it() -> None:
    handoff = Handoff(asyncio.get_running_loop(), linger_s=LONG_LINGER_S)
    failure = RuntimeError("llama.cpp failed")

    def produce() -> None:
        handoff.put("partial")
        handoff.finish(failure)

    in_thread(produce).join()
    batch = await handoff.take(linger=False)

    assert batch.deltas == ["partial"]
    assert batch.done
    assert batch.error is failure
