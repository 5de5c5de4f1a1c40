"""ChannelGate: at most WRITES_PER_WINDOW writes in any WINDOW_S per channel, on a fake clock."""

from __future__ import annotations

import asyncio
import random

from adapters.discord_pacing import FORGET_EVERY, WINDOW_S, WRITES_PER_WINDOW, ChannelGate

# Slots are computed in floating point: allow for rounding when comparing window edges.
EPSILON = 1e-9


class FakeTime:
    """A clock the test moves by hand; sleeping moves it (like a real sleep) and is recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


def assert_paced(times: list[float]) -> None:
    """No window of WINDOW_S holds more than WRITES_PER_WINDOW of `times`."""
    ordered = sorted(times)
    for first, last in zip(ordered, ordered[WRITES_PER_WINDOW:], strict=False):
        assert last - first >= WINDOW_S - EPSILON, ordered


async def reserve(gate: ChannelGate, time: FakeTime, channel_id: int) -> float:
    """Wait at the gate; return the moment the write may happen (now plus the sleep, if any)."""
    before = len(time.sleeps)
    now = time.now
    await gate.wait(channel_id)
    return now + (time.sleeps[before] if len(time.sleeps) > before else 0.0)


def gate_on(time: FakeTime) -> ChannelGate:
    return ChannelGate(clock=time.clock, sleep=time.sleep)


async def test_a_burst_is_spread_over_windows() -> None:
    time = FakeTime()
    gate = gate_on(time)
    slots = [await reserve(gate, time, 1) for _ in range(13)]
    assert slots[:WRITES_PER_WINDOW] == [time.now] * WRITES_PER_WINDOW
    assert slots[WRITES_PER_WINDOW] == time.now + WINDOW_S
    assert slots[2 * WRITES_PER_WINDOW] == time.now + 2 * WINDOW_S
    assert slots[12] == time.now + 3 * WINDOW_S
    assert_paced(slots)


async def test_random_arrivals_never_exceed_the_window() -> None:
    rng = random.Random(20260501)
    for _ in range(50):
        time = FakeTime()
        gate = gate_on(time)
        slots: list[float] = []
        for index in range(40):
            time.now += rng.choice((0.0, 0.0, 0.1, 0.4, 1.3, 2.5, 6.0))
            slot = await reserve(gate, time, 7)
            # In order, and no later than needed: the arrival, the previous slot, or a full window's end.
            earliest = max([time.now, *slots[-1:]])
            if index >= WRITES_PER_WINDOW:
                earliest = max(earliest, slots[index - WRITES_PER_WINDOW] + WINDOW_S)
            assert slot == earliest
            slots.append(slot)
        assert_paced(slots)


async def test_slow_writes_are_not_delayed() -> None:
    time = FakeTime()
    gate = gate_on(time)
    for _ in range(20):
        await gate.wait(1)
        time.now += WINDOW_S / WRITES_PER_WINDOW
    assert time.sleeps == []


async def test_channels_are_independent() -> None:
    time = FakeTime()
    gate = gate_on(time)
    for _ in range(WRITES_PER_WINDOW):
        await gate.wait(1)
    assert time.sleeps == []
    # Channel 1 is full; channel 2 is not slowed by it.
    for _ in range(WRITES_PER_WINDOW):
        assert await reserve(gate, time, 2) == time.now
    assert time.sleeps == []
    assert await reserve(gate, time, 1) == time.now + WINDOW_S


async def test_concurrent_waiters_get_increasing_slots() -> None:
    time = FakeTime()
    gate = gate_on(time)
    order: list[int] = []

    async def writer(index: int) -> None:
        await gate.wait(5)
        order.append(index)

    await asyncio.gather(*(writer(i) for i in range(10)))
    # Each waiter reserved its slot before sleeping: the sleeps grow with arrival order.
    assert time.sleeps == sorted(time.sleeps)
    assert time.sleeps == [WINDOW_S] * WRITES_PER_WINDOW + [2 * WINDOW_S] * 2
    assert_paced([time.now] * WRITES_PER_WINDOW + [time.now + s for s in time.sleeps])
    assert sorted(order) == list(range(10))


async def test_forget_idle_drops_only_quiet_channels() -> None:
    time = FakeTime()
    gate = gate_on(time)
    for channel_id in range(100):
        await gate.wait(channel_id)
    time.now += WINDOW_S / 2
    for _ in range(WRITES_PER_WINDOW):
        await gate.wait(1000)
    time.now += WINDOW_S / 2 + 0.1
    gate.forget_idle()
    assert set(gate._slots) == {1000}
    # Forgetting kept what still matters: channel 1000's window is full.
    assert await reserve(gate, time, 1000) > time.now


async def test_memory_is_bounded_by_the_periodic_forget() -> None:
    time = FakeTime()
    gate = gate_on(time)
    for channel_id in range(5 * FORGET_EVERY):
        await gate.wait(channel_id)
        time.now += 0.01
    # Writes 0.01 s apart: at most one window's worth of channels plus one forget period stay known.
    assert len(gate._slots) <= FORGET_EVERY + int(WINDOW_S / 0.01) + 1
    assert time.sleeps == []
