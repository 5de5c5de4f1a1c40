"""The SQLite store's in-memory conversation tails answer exactly what the database would."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path

from storage import NewMessage, TurnRecord
from storage.base import STATUS_FAILED, STATUS_OK, StoredMessage
from storage.history_cache import HistoryCache
from storage.sqlite import SqliteStore

DAY = "2026-12-08"


def _turn(conversation_id: int, n: int, status: str = STATUS_OK) -> TurnRecord:
    """A question and its answer (the answer failed when status says so)."""
    messages = (NewMessage("user", f"q{n}", 2), NewMessage("assistant", f"a{n}", 2, status))
    return TurnRecord(conversation_id, messages, "u", "User", DAY, 2, 2)


def _from_database(
    path: Path, conversation_id: int, start: int, before: int, limit: int
) -> list[StoredMessage]:
    """The history query on a connection of its own: what the store must answer."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT seq, role, content, tokens FROM messages WHERE conversation_id = ? AND seq >= ? "
            "AND seq < ? AND status = 'ok' ORDER BY seq DESC LIMIT ?",
            (conversation_id, start, before, limit),
        ).fetchall()
    return [StoredMessage(*row) for row in rows]


async def test_random_turns_resets_and_reads_match_the_database(tmp_path: Path) -> None:
    path = tmp_path / "gptrelay.db"
    store = await SqliteStore.open(path)
    rng = random.Random(7)
    try:
        keys = [f"k{n}" for n in range(3)]
        for n in range(300):
            conversation = await store.conversation(rng.choice(keys))
            action = rng.random()
            if action < 0.05:
                await store.reset(conversation.id)
            elif action < 0.5:
                await store.record_turn(_turn(conversation.id, n, rng.choice([STATUS_OK, STATUS_FAILED])))
            else:
                limit = rng.choice([1, 3, 64, 1000])
                before = conversation.next_seq - rng.choice([0, 0, 0, 5])
                start = conversation.start_seq
                got = await store.history(conversation.id, start, before, limit)
                assert got == _from_database(path, conversation.id, start, before, limit), (n, start, before)
    finally:
        await store.close()


async def test_turns_written_by_another_store_are_read_from_the_database(tmp_path: Path) -> None:
    path = tmp_path / "gptrelay.db"
    first, second = await SqliteStore.open(path), await SqliteStore.open(path)
    try:
        conversation = await first.conversation("shared")
        await first.record_turn(_turn(conversation.id, 0))
        fresh = await first.conversation("shared")
        assert len(await first.history(fresh.id, 0, fresh.next_seq, 64)) == 2  # now held in memory
        await second.record_turn(_turn(conversation.id, 1))
        fresh = await first.conversation("shared")
        got = await first.history(fresh.id, 0, fresh.next_seq, 64)
        assert [m.content for m in got] == ["a1", "q1", "a0", "q0"]
    finally:
        await first.close()
        await second.close()


def test_a_tail_trimmed_to_its_cap_defers_older_reads_to_the_database() -> None:
    cache = HistoryCache(max_messages=4)
    rows = [StoredMessage(seq, "user", f"m{seq}", 1) for seq in range(9, -1, -1)]  # newest first
    cache.fill(1, 0, 10, 64, rows)
    assert cache.get(1, 0, 10, 4) == rows[:4]
    assert cache.get(1, 0, 10, 5) is None  # seqs 0-5 are no longer held
    assert cache.get(1, 7, 10, 64) == rows[:3]  # everything from seq 7 on is held
    assert cache.get(1, 0, 11, 4) is None  # a turn the cache did not see
    assert cache.get(1, 0, 9, 3) == rows[1:4]  # a later page, still inside the tail


def test_a_tail_that_missed_another_writers_turn_is_dropped_on_the_next_commit() -> None:
    cache = HistoryCache()
    cache.fill(1, 0, 2, 64, [StoredMessage(1, "assistant", "a0", 2), StoredMessage(0, "user", "q0", 2)])
    cache.append([_turn(1, 2)], {1: 6})  # seqs 4 and 5: someone else wrote 2 and 3
    assert cache.get(1, 0, 2, 64) is None


def test_least_recently_used_tails_go_first_past_the_character_cap() -> None:
    cache = HistoryCache(max_chars=10)
    for conversation_id in (1, 2, 3):
        cache.fill(conversation_id, 0, 1, 64, [StoredMessage(0, "user", "x" * 4, 1)])
        cache.get(1, 0, 1, 64)  # keeps conversation 1 recently used
    assert cache.get(1, 0, 1, 64) is not None
    assert cache.get(2, 0, 1, 64) is None
    assert cache.get(3, 0, 1, 64) is not None


def test_committed_turns_extend_the_tail_with_the_seqs_the_database_gives() -> None:
    cache = HistoryCache()
    cache.fill(1, 0, 2, 64, [StoredMessage(1, "assistant", "a0", 2), StoredMessage(0, "user", "q0", 2)])
    cache.append([_turn(1, 1, STATUS_FAILED), _turn(1, 2)], {1: 6})
    assert cache.get(1, 0, 7, 64) is None  # a turn the cache did not see
    assert [m.seq for m in cache.get(1, 0, 4, 64) or []] == [2, 1, 0]  # the failed answer took seq 3
    assert [(m.seq, m.content) for m in cache.get(1, 0, 6, 64) or []] == [
        (5, "a2"),
        (4, "q2"),
        (2, "q1"),
        (1, "a0"),
        (0, "q0"),
    ]
