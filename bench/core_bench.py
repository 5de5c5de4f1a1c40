"""Core + SQLite throughput, CPU per message, added latency and context assembly time."""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.fakes import CountingSink, InstantModel
from bot.config import Settings
from bot.context import build_context
from bot.core import BotCore
from bot.messages import ChatKind, IncomingMessage
from bot.tokens import message_tokens
from storage import NewMessage, TurnRecord
from storage.sqlite import SqliteStore

CONVERSATIONS = 200
MESSAGES_PER_CONVERSATION = 25
LATENCY_SAMPLES = 1_000
HISTORY_TURNS = 10_000
ASSEMBLY_SAMPLES = 50
# Realistic turn sizes: a question of ~25 words, an answer of ~120.
USER_TEXT = "Could you explain how this part of the system works, and what I should watch out for? " * 1
ASSISTANT_TEXT = "Here is a detailed answer that goes through the steps one by one. " * 8


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table."""

    name: str
    value: float
    unit: str
    target: str = ""


def _message(conversation: int, number: int) -> IncomingMessage:
    """A private-chat message of the benchmark's synthetic users."""
    return IncomingMessage(
        platform="bench",
        chat_id=str(conversation),
        chat_kind=ChatKind.PRIVATE,
        user_id=str(conversation),
        user_name=f"user{conversation}",
        message_id=str(number),
        text=USER_TEXT,
        addressed=True,
    )


def _settings(data_dir: Path) -> Settings:
    """Settings for an offline run; the model name gets the default 8k window."""
    return Settings(
        openai_base_url="http://127.0.0.1:9/v1", model="bench-model", data_dir=data_dir, _env_file=None
    )  # type: ignore[call-arg]


async def _throughput(core: BotCore) -> tuple[float, float, int]:
    """Messages per second and CPU µs per message, many conversations at once."""
    sink = CountingSink()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # Submitted concurrently, as a busy adapter does; submit keeps each conversation's order.
    messages = [
        _message(conversation, number)
        for number in range(MESSAGES_PER_CONVERSATION)
        for conversation in range(CONVERSATIONS)
    ]
    futures = await asyncio.gather(*(core.submit(message, sink) for message in messages))
    assert all(future is not None for future in futures)
    await asyncio.gather(*futures)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    count = len(futures)
    return count / wall, cpu / count * 1e6, count


async def _latency(core: BotCore) -> list[float]:
    """Milliseconds from submit to answered, one message at a time."""
    sink = CountingSink()
    samples = []
    for number in range(LATENCY_SAMPLES):
        start = time.perf_counter()
        future = await core.submit(_message(10_000_000, 1_000_000 + number), sink)
        assert future is not None
        await future
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


async def _store_floor(store: SqliteStore) -> float:
    """Baseline: the store calls one answer makes, with no core around them (messages/s)."""

    async def one_conversation(conversation: int) -> None:
        for number in range(MESSAGES_PER_CONVERSATION):
            inbox = await store.inbox_add("floor", str(conversation), str(number), "{}")
            found = await store.conversation(f"floor:{conversation}")
            await store.history(found.id, found.start_seq, found.next_seq, 64)
            await store.record_turn(_turn(found.id, inbox))

    start = time.perf_counter()
    await asyncio.gather(*(one_conversation(c) for c in range(CONVERSATIONS)))
    return CONVERSATIONS * MESSAGES_PER_CONVERSATION / (time.perf_counter() - start)


def _turn(conversation_id: int, inbox_id: int | None) -> TurnRecord:
    """A user + assistant turn of realistic size."""
    return TurnRecord(
        conversation_id=conversation_id,
        messages=(
            NewMessage("user", USER_TEXT, message_tokens(USER_TEXT)),
            NewMessage("assistant", ASSISTANT_TEXT, message_tokens(ASSISTANT_TEXT)),
        ),
        user_key="bench:floor",
        user_name="floor",
        day="2026-01-01",
        prompt_tokens=100,
        completion_tokens=8,
        inbox_ids=(inbox_id,),
    )


async def _assembly(store: SqliteStore, settings: Settings) -> dict[int, list[float]]:
    """Milliseconds to assemble context over HISTORY_TURNS stored turns, per window size."""
    conversation = await store.conversation("history")
    for _ in range(HISTORY_TURNS // 2):
        await store.record_turn(_turn(conversation.id, None))
    conversation = await store.conversation("history")
    results: dict[int, list[float]] = {}
    for window in (8_192, 128_000):
        samples = []
        for _ in range(ASSEMBLY_SAMPLES):
            start = time.perf_counter()
            await build_context(store, conversation, settings.system_prompt, USER_TEXT, window - 512)
            samples.append((time.perf_counter() - start) * 1e3)
        results[window] = samples
    return results


def _percentile(samples: list[float], pct: float) -> float:
    """The pct-th percentile of samples."""
    return statistics.quantiles(samples, n=100, method="inclusive")[int(pct) - 1]


async def _with_core(data_dir: Path, body: Callable[[BotCore, SqliteStore], Awaitable[None]]) -> None:
    """Run `body` with a fresh store and core on an instant model."""
    settings = _settings(data_dir)
    store = await SqliteStore.open(settings.db_path)
    core = BotCore(settings, store, InstantModel())
    await core.start()
    try:
        await body(core, store)
    finally:
        await core.close(5)
        await store.close()


async def run() -> list[Row]:
    """Run every measurement and return the table rows."""
    rows: list[Row] = []

    async def measure(core: BotCore, store: SqliteStore) -> None:
        rate, cpu_us, count = await _throughput(core)
        rows.append(
            Row(f"core + SQLite, {count} msgs in {CONVERSATIONS} conversations", rate, "msg/s", ">= 2,000")
        )
        rows.append(Row("CPU per message (core + SQLite)", cpu_us, "µs"))
        rows.append(
            Row("baseline: the same store calls without the core", await _store_floor(store), "msg/s")
        )
        latency = await _latency(core)
        rows.append(Row("added latency p50", _percentile(latency, 50), "ms"))
        rows.append(Row("added latency p99", _percentile(latency, 99), "ms"))
        for window, samples in (await _assembly(store, core.settings)).items():
            rows.append(
                Row(
                    f"context assembly, {HISTORY_TURNS:,} turns, {window:,}-token window, p50",
                    _percentile(samples, 50),
                    "ms",
                    "< 5" if window == 8_192 else "",
                )
            )

    with tempfile.TemporaryDirectory() as tmp:
        await _with_core(Path(tmp), measure)
    rows.append(Row("peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB", "< 100"))
    return rows


def render(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| measurement | value | target |", "|---|---:|---|"]
    lines += [f"| {r.name} | {r.value:,.1f} {r.unit} | {r.target} |" for r in rows]
    return "\n".join(lines)


def as_json(rows: list[Row]) -> str:
    """The rows as JSON, for machines."""
    return json.dumps([{"name": r.name, "value": r.value, "unit": r.unit} for r in rows], indent=2)
