"""FloodGate on virtual time: per-chat spacing, the global cap, penalties, concurrent writers, memory."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pytest

from adapters import telegram_pacing
from adapters.telegram_pacing import (
    FORGET_EVERY,
    GLOBAL_PER_S,
    GLOBAL_WINDOW_S,
    GROUP_INTERVAL_S,
    PRIVATE_BURST,
    PRIVATE_INTERVAL_S,
    RESERVED_FOR_FIRST,
    FloodGate,
)

START = 1000.0
ALICE = 5100000001
BOB = 5100000002
GROUP = -1002100000001
# Scheduling rounds a driver allows before deciding the tasks are stuck.
MAX_IDLE_ROUNDS = 50
# Virtual time a driver allows before deciding a writer waits forever (the gate polls in-flight slots).
MAX_VIRTUAL_S = 3600.0
# Global slots in a window for writes that are not an answer's first text.
NON_FIRST_PER_S = GLOBAL_PER_S - RESERVED_FOR_FIRST
# Below the rounding of virtual times, far below any interval.
EPSILON_S = 1e-6


class VirtualTime:
    """A clock and a sleep for FloodGate: time jumps to the next wake-up once every task is asleep."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        """Virtual seconds."""
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Sleep in virtual time."""
        self.sleeps.append(seconds)
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        await woken

    async def run(self, *coroutines: Awaitable[Any]) -> list[Any]:
        """Run coroutines to the end, advancing time whenever all of them sleep."""
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        idle = 0
        while not all(task.done() for task in tasks):
            for _ in range(3):
                await asyncio.sleep(0)  # let every runnable task reach its next sleep
            if self._sleepers:
                at, _, woken = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                assert self.now < START + MAX_VIRTUAL_S, "a writer waits forever"
                woken.set_result(None)
                idle = 0
            else:
                idle += 1
                assert idle < MAX_IDLE_ROUNDS, "tasks neither finish nor sleep"
        return [task.result() for task in tasks]


@pytest.fixture
def time() -> VirtualTime:
    """Virtual time."""
    return VirtualTime()


@pytest.fixture
def gate(time: VirtualTime) -> FloodGate:
    """A FloodGate on virtual time."""
    return FloodGate(clock=time.clock, sleep=time.sleep)


async def writes(gate: FloodGate, time: VirtualTime, chat_id: int, count: int) -> list[float]:
    """`count` writes to one chat, one after the other; when each was let through (from START)."""
    admitted = []
    for _ in range(count):
        await gate.wait(chat_id, group=chat_id < 0)
        admitted.append(round(time.now - START, 6))
    return admitted


async def one_write(gate: FloodGate, time: VirtualTime, chat_id: int) -> float:
    """One write; when it was let through (from START)."""
    await gate.wait(chat_id, group=chat_id < 0)
    return round(time.now - START, 6)


@dataclass(frozen=True)
class Held:
    """One write through `slot`: when it was let through and when its request ended (from START)."""

    admitted: float
    finished: float
    first: bool


async def held_write(
    gate: FloodGate,
    time: VirtualTime,
    chat_id: int,
    *,
    first: bool = False,
    draft: bool = False,
    request_s: float = 0.0,
    after_s: float = 0.0,
) -> Held:
    """Start after `after_s`, then one write whose request takes `request_s` inside its slot."""
    if after_s:
        await time.sleep(after_s)
    async with gate.slot(chat_id, group=chat_id < 0, first=first, draft=draft):
        admitted = time.now
        if request_s:
            await time.sleep(request_s)
    return Held(round(admitted - START, 6), round(time.now - START, 6), first)


def counted_at(held: list[Held], moment: float, first: bool | None = None) -> int:
    """Writes the gate counts at `moment`: from leaving the gate until a window after their response.

    A write that ended exactly a window before `moment` no longer counts (times are rounded floats).
    """
    return sum(
        1
        for w in held
        if w.admitted <= moment < w.finished + GLOBAL_WINDOW_S - EPSILON_S
        and (first is None or w.first == first)
    )


def assert_within_global_limits(held: list[Held]) -> None:
    """Whenever a write left the gate, the counted writes fit their caps (it included)."""
    for write in held:
        assert counted_at(held, write.admitted) <= GLOBAL_PER_S
        assert counted_at(held, write.admitted, first=False) <= NON_FIRST_PER_S


def test_intervals_stay_under_telegrams_limits() -> None:
    assert PRIVATE_INTERVAL_S == 1.05  # about 1 message per second per chat
    assert GROUP_INTERVAL_S == 3.1  # 20 per minute per group
    assert 60 / GROUP_INTERVAL_S < 20
    assert GLOBAL_PER_S / GLOBAL_WINDOW_S <= 28  # about 30 per second overall
    assert 1 <= PRIVATE_BURST <= 3


async def test_private_chat_writes_burst_then_are_spaced(gate: FloodGate, time: VirtualTime) -> None:
    (admitted,) = await time.run(writes(gate, time, ALICE, 6))
    # PRIVATE_BURST back to back (a draft, then the final message), then one per interval.
    assert admitted == [0.0, 0.0, 1.05, 2.1, 3.15, 4.2]


async def test_group_writes_are_spaced_without_burst(gate: FloodGate, time: VirtualTime) -> None:
    (admitted,) = await time.run(writes(gate, time, GROUP, 4))
    assert admitted == [0.0, 3.1, 6.2, 9.3]


async def test_chats_do_not_wait_for_each_other(gate: FloodGate, time: VirtualTime) -> None:
    first = await time.run(*(writes(gate, time, chat, 3) for chat in (ALICE, BOB, GROUP)))
    assert first == [[0.0, 0.0, 1.05], [0.0, 0.0, 1.05], [0.0, 3.1, 6.2]]


def test_some_global_slots_are_reserved_for_first_texts() -> None:
    assert 0 < RESERVED_FOR_FIRST < GLOBAL_PER_S
    assert NON_FIRST_PER_S >= GLOBAL_PER_S / 2  # edits still get most of the budget


async def test_at_most_non_first_cap_writes_in_any_window(gate: FloodGate, time: VirtualTime) -> None:
    # wait() is a write that is not an answer's first text, counted as finished at once.
    admitted = await time.run(*(one_write(gate, time, ALICE + i) for i in range(100)))
    assert admitted.count(0.0) == NON_FIRST_PER_S
    for start in admitted:
        in_window = [t for t in admitted if start <= t < start + GLOBAL_WINDOW_S]
        assert len(in_window) <= NON_FIRST_PER_S
    assert max(admitted) == 4.0  # 100 writes: 22 + 22 + 22 + 22 + 12, a second apart


async def test_at_most_global_per_s_writes_in_any_window(gate: FloodGate, time: VirtualTime) -> None:
    # First texts may use every slot, the reserved ones included.
    held = await time.run(*(held_write(gate, time, ALICE + i, first=True) for i in range(100)))
    admitted = [w.admitted for w in held]
    assert admitted.count(0.0) == GLOBAL_PER_S
    for start in admitted:
        in_window = [t for t in admitted if start <= t < start + GLOBAL_WINDOW_S]
        assert len(in_window) <= GLOBAL_PER_S
    assert max(admitted) == 3.0  # 100 writes: 28 + 28 + 28 + 16, a second apart


async def test_first_texts_get_the_reserved_slots_while_edits_saturate(
    gate: FloodGate, time: VirtualTime
) -> None:
    edits = [held_write(gate, time, ALICE + i) for i in range(100)]
    # New answers arrive while the edits have used up their share of the window.
    firsts = [held_write(gate, time, BOB + i, first=True, after_s=1.5) for i in range(RESERVED_FOR_FIRST + 1)]
    held = await time.run(*edits, *firsts)
    *prompt, late = held[len(edits) :]
    assert [w.admitted for w in prompt] == [1.5] * RESERVED_FOR_FIRST
    assert late.admitted == 2.0  # every slot taken until the writes of 1.0 leave the window
    assert_within_global_limits(held)
    # The edits never took a reserved slot, and used the rest of the budget.
    assert [w.admitted for w in held[:NON_FIRST_PER_S]] == [0.0] * NON_FIRST_PER_S
    assert held[NON_FIRST_PER_S].admitted == 1.0


async def test_drafts_are_spaced_per_chat_but_take_no_global_slot(gate: FloodGate, time: VirtualTime) -> None:
    # The bot-wide budget is busy with messages; 50 private chats' first previews go at once.
    messages = [held_write(gate, time, ALICE + i, first=True, request_s=0.5) for i in range(GLOBAL_PER_S)]
    drafts = [held_write(gate, time, BOB + i, first=True, draft=True, after_s=0.1) for i in range(50)]
    late_message = held_write(gate, time, BOB + 100, first=True, after_s=0.1)
    # A chat's drafts still keep to its spacing.
    one_chat = [held_write(gate, time, ALICE + 500, draft=True) for _ in range(PRIVATE_BURST + 1)]
    held = await time.run(*messages, *drafts, late_message, *one_chat)
    assert [w.admitted for w in held[GLOBAL_PER_S : GLOBAL_PER_S + 50]] == [0.1] * 50
    assert held[GLOBAL_PER_S + 50].admitted == pytest.approx(0.5 + GLOBAL_WINDOW_S)
    spaced = [w.admitted for w in held[GLOBAL_PER_S + 51 :]]
    assert spaced == pytest.approx([0.0] * PRIVATE_BURST + [PRIVATE_INTERVAL_S])


@pytest.mark.parametrize("request_s", [0.3, 2.5])
async def test_a_write_counts_until_a_window_after_its_response(
    gate: FloodGate, time: VirtualTime, request_s: float
) -> None:
    # Every non-first slot held by requests that take `request_s`; the next edit waits for the first
    # of them to end, then a whole window more (Telegram counts a write when it arrives).
    slow = [held_write(gate, time, ALICE + i, request_s=request_s) for i in range(NON_FIRST_PER_S)]
    late_edit = held_write(gate, time, BOB, after_s=0.1)
    firsts = [
        held_write(gate, time, BOB + 1 + i, first=True, after_s=0.1) for i in range(RESERVED_FOR_FIRST + 1)
    ]
    held = await time.run(*slow, late_edit, *firsts)
    assert {w.finished for w in held[:NON_FIRST_PER_S]} == {request_s}
    assert held[NON_FIRST_PER_S].admitted == pytest.approx(request_s + GLOBAL_WINDOW_S)
    # First texts take the reserved slots meanwhile, and no more.
    *prompt, late_first = held[NON_FIRST_PER_S + 1 :]
    assert [w.admitted for w in prompt] == [0.1] * RESERVED_FOR_FIRST
    assert late_first.admitted == pytest.approx(0.1 + GLOBAL_WINDOW_S)  # when those of 0.1 leave the window
    assert_within_global_limits(held)


async def test_a_failed_write_counts_too(gate: FloodGate, time: VirtualTime) -> None:
    async def failing(chat_id: int) -> None:
        async with gate.slot(chat_id, group=False):
            await time.sleep(0.5)
            raise ConnectionError("reset")  # the request may well have reached Telegram

    async def attempt(chat_id: int) -> None:
        with suppress(ConnectionError):
            await failing(chat_id)

    await time.run(*(attempt(ALICE + i) for i in range(NON_FIRST_PER_S)))
    assert await time.run(one_write(gate, time, BOB)) == [1.5]


async def test_global_limits_hold_for_mixed_writes(gate: FloodGate, time: VirtualTime) -> None:
    workload = [
        held_write(
            gate,
            time,
            ALICE + i,
            first=i % 4 == 0,
            request_s=(0.0, 0.05, 0.4, 1.3)[i % 7 % 4],
            after_s=(i % 11) * 0.17,
        )
        for i in range(300)
    ]
    held = await time.run(*workload)
    assert_within_global_limits(held)


async def test_penalize_holds_back_that_chat_only(gate: FloodGate, time: VirtualTime) -> None:
    await time.run(writes(gate, time, ALICE, 1))
    gate.penalize(ALICE, 5.0)  # Telegram said retry_after=5
    penalized, other = await time.run(writes(gate, time, ALICE, 3), writes(gate, time, BOB, 1))
    assert penalized == [5.0, 6.05, 7.1]  # no burst right after a penalty
    assert other == [0.0]


async def test_penalize_in_a_group_waits_at_least_retry_after(gate: FloodGate, time: VirtualTime) -> None:
    await time.run(writes(gate, time, GROUP, 1))
    gate.penalize(GROUP, 5.0)
    (after,) = await time.run(writes(gate, time, GROUP, 2))
    assert after[0] >= 5.0
    assert after[1] - after[0] == pytest.approx(GROUP_INTERVAL_S)


async def test_penalize_never_brings_a_slot_forward(gate: FloodGate, time: VirtualTime) -> None:
    await time.run(writes(gate, time, GROUP, 3))  # the next slot is at 9.3
    gate.penalize(GROUP, 1.0)
    assert await time.run(writes(gate, time, GROUP, 1)) == [[9.3]]


async def test_concurrent_writers_to_one_chat_get_distinct_increasing_slots(
    gate: FloodGate, time: VirtualTime
) -> None:
    order: list[int] = []

    async def writer(index: int) -> float:
        admitted = await one_write(gate, time, GROUP)
        order.append(index)
        return admitted

    admitted = await time.run(*(writer(i) for i in range(5)))
    assert admitted == [0.0, 3.1, 6.2, 9.3, 12.4]  # first come, first served
    assert order == [0, 1, 2, 3, 4]
    private = await time.run(*(one_write(gate, time, ALICE) for _ in range(4)))
    assert private == [12.4, 12.4, 13.45, 14.5]


async def test_forget_idle_drops_only_chats_without_a_future_slot(gate: FloodGate, time: VirtualTime) -> None:
    await time.run(*(writes(gate, time, chat, 1) for chat in (ALICE, BOB, GROUP)))
    gate.penalize(BOB, 100.0)
    time.now += 10
    gate.forget_idle()
    assert set(gate._tat) == {BOB}  # the internal table is what forget_idle bounds
    # The penalty still holds; the others start afresh.
    assert await time.run(writes(gate, time, ALICE, 1), writes(gate, time, BOB, 1)) == [[10.0], [100.0]]


async def test_memory_stays_bounded_over_many_chats(gate: FloodGate, time: VirtualTime) -> None:
    sizes = []

    async def many_chats() -> None:
        for chat in range(1, 3 * FORGET_EVERY + 1):
            await gate.wait(chat, group=False)
            sizes.append(len(gate._tat))

    await time.run(many_chats())
    # What survives a sweep is the chats written in the last interval: at most two global windows.
    assert max(sizes) <= FORGET_EVERY + 2 * GLOBAL_PER_S
    assert sizes[-1] <= 2 * GLOBAL_PER_S  # just swept


async def test_the_module_intervals_are_read_at_each_write(
    gate: FloodGate, time: VirtualTime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram_pacing, "GROUP_INTERVAL_S", 0.5)
    assert await time.run(writes(gate, time, GROUP, 3)) == [[0.0, 0.5, 1.0]]
