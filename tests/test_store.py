"""The store behaviour suite, run against every implementation: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from bot.config import Settings
from storage import DayStats, NewMessage, Store, TurnRecord, UsageTotals, UserPolicy
from storage.base import STATUS_FAILED, STATUS_PARTIAL
from storage.factory import open_store
from storage.migrations import MIGRATIONS
from storage.pg_migrations import PG_MIGRATIONS
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore
from storage.url import mask_password

DAY = "2024-05-01"
USER = "telegram:42"
TABLES = {"schema_migrations", "users", "conversations", "messages", "usage", "inbox", "user_policies"}
# What the SQLite store writes, and so what Conversation.updated_at looks like on every backend.
ISO_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")

# Read at import: the autouse clean_environment fixture removes GPTRELAY_* before each test.
POSTGRES_URL = os.environ.get("GPTRELAY_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("GPTRELAY_REQUIRE_POSTGRES") == "1"
POSTGRES_PROBE_TIMEOUT_S = 3.0
_postgres_probe: dict[str, str | None] = {}


@dataclass
class Backend:
    """How to open one store implementation, and to look at its rows behind its back."""

    kind: str
    open: Callable[[], Awaitable[Store]]
    # Raw SQL on a separate connection; `?` placeholders on every backend.
    raw: Callable[[str, tuple[Any, ...]], Awaitable[list[tuple[Any, ...]]]]
    tables: Callable[[], Awaitable[set[str]]]


def _sqlite_backend(tmp_path: Path) -> Backend:
    """SQLite in a file on tmp_path; raw queries use a second, plain sqlite3 connection."""
    path = tmp_path / "data" / "gptrelay.db"

    async def raw(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(path)) as db:
            return db.execute(sql, params).fetchall()

    async def tables() -> set[str]:
        return {row[0] for row in await raw("SELECT name FROM sqlite_master WHERE type = 'table'", ())}

    return Backend("sqlite", lambda: SqliteStore.open(path), raw, tables)


async def _postgres_problem() -> str | None:
    """Why the test server cannot be used (None: it can); asked once per session."""
    if "problem" not in _postgres_probe:
        try:
            db = await asyncpg.connect(POSTGRES_URL, timeout=POSTGRES_PROBE_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            _postgres_probe["problem"] = (
                f"no PostgreSQL at {mask_password(POSTGRES_URL)} ({type(exc).__name__}: {exc}); "
                "set GPTRELAY_TEST_POSTGRES_URL to a server where tests may create schemas"
            )
        else:
            await db.close()
            _postgres_probe["problem"] = None
    return _postgres_probe["problem"]


def _with_search_path(url: str, schema: str) -> str:
    """The URL with its connections' search_path set (asyncpg passes unknown parameters on)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


@pytest.fixture
async def postgres_schema() -> AsyncIterator[str]:
    """A fresh, uniquely named schema on the test server, dropped afterwards."""
    if problem := await _postgres_problem():
        if REQUIRE_POSTGRES:
            pytest.fail(f"GPTRELAY_REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)
    schema = f"gptrelay_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield schema
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


def _postgres_backend(schema: str) -> Backend:
    """PostgreSQL in its own schema; raw queries use a second, plain asyncpg connection."""
    url = _with_search_path(POSTGRES_URL, schema)

    async def raw(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        numbered = iter(range(1, len(params) + 1))
        sql = re.sub(r"\?", lambda _: f"${next(numbered)}", sql) if params else sql
        db = await asyncpg.connect(url)
        try:
            return [tuple(row) for row in await db.fetch(sql, *params)]
        finally:
            await db.close()

    async def tables() -> set[str]:
        rows = await raw("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (schema,))
        return {row[0] for row in rows}

    return Backend("postgres", lambda: PostgresStore.open(url), raw, tables)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """One store implementation on a fresh database (a file on tmp_path, or a new schema)."""
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return _postgres_backend(request.getfixturevalue("postgres_schema"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store on a fresh database."""
    opened = await backend.open()
    yield opened
    await opened.close()


def turn(
    conversation_id: int,
    *contents: str,
    status: str = "ok",
    user_key: str = USER,
    day: str = DAY,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    inbox_id: int | None = None,
) -> TurnRecord:
    """A turn of alternating user/assistant messages (the first is the user's)."""
    messages = tuple(
        NewMessage("user" if i % 2 == 0 else "assistant", text, len(text), status)
        for i, text in enumerate(contents)
    )
    return TurnRecord(
        conversation_id=conversation_id,
        messages=messages,
        user_key=user_key,
        user_name="Ada",
        day=day,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        inbox_ids=() if inbox_id is None else (inbox_id,),
    )


# -- migrations and restarts ---------------------------------------------------------------------


async def test_migrations_applied_and_recorded_on_empty_database(store: Store, backend: Backend) -> None:
    assert await store.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert await backend.tables() >= TABLES


def test_both_schemas_have_the_same_migration_names() -> None:
    assert [name for name, _ in PG_MIGRATIONS] == [name for name, _ in MIGRATIONS]


async def test_reopening_applies_nothing_and_keeps_data(backend: Backend) -> None:
    first = await backend.open()
    conversation = await first.conversation("k")
    await first.record_turn(turn(conversation.id, "hello", "hi there"))
    await first.set_system_prompt(conversation.id, "be brief")
    before = await first.history(conversation.id, 0, 100, 100)
    await first.close()
    applied_at = await backend.raw("SELECT name, applied_at FROM schema_migrations ORDER BY name", ())

    second = await backend.open()
    try:
        assert (
            await backend.raw("SELECT name, applied_at FROM schema_migrations ORDER BY name", ())
            == applied_at
        )
        assert await second.applied_migrations() == [name for name, _ in MIGRATIONS]
        again = await second.conversation("k")
        assert again.id == conversation.id
        assert again.system_prompt == "be brief"
        assert again.next_seq == 2
        assert await second.history(again.id, again.start_seq, again.next_seq, 100) == before
        assert [m.content for m in before] == ["hi there", "hello"]
    finally:
        await second.close()


# -- conversations -------------------------------------------------------------------------------


async def test_conversation_created_once_with_same_id(store: Store, backend: Backend) -> None:
    first = await store.conversation("telegram:chat:1")
    second = await store.conversation("telegram:chat:1")
    other = await store.conversation("telegram:chat:2")
    assert first == second
    assert (first.start_seq, first.next_seq, first.system_prompt, first.model) == (0, 0, None, None)
    assert other.id != first.id
    assert await backend.raw("SELECT COUNT(*) FROM conversations", ()) == [(2,)]


async def test_conversation_created_concurrently_is_one_row(store: Store, backend: Backend) -> None:
    found = await asyncio.gather(*(store.conversation("same") for _ in range(20)))
    assert len({c.id for c in found}) == 1
    assert await backend.raw("SELECT COUNT(*) FROM conversations WHERE key = 'same'", ()) == [(1,)]


async def test_reads_arriving_together_each_get_their_own_conversation(
    store: Store, backend: Backend
) -> None:
    existing = await store.conversation("old")
    await store.set_model(existing.id, "gpt-4o")
    keys = ["new:1", "old", "new:2", "new:1", "old"]

    found = await asyncio.gather(*(store.conversation(key) for key in keys))

    assert [c.key for c in found] == keys
    assert found[1] == found[4] == replace(existing, model="gpt-4o", updated_at=found[1].updated_at)
    assert found[0] == found[3]
    assert len({found[0].id, found[1].id, found[2].id}) == 3
    assert await backend.raw("SELECT COUNT(*) FROM conversations", ()) == [(3,)]


async def test_system_prompt_and_model_set_and_clear(store: Store) -> None:
    conversation = await store.conversation("k")
    await store.set_system_prompt(conversation.id, "You are a pirate.")
    await store.set_model(conversation.id, "gpt-4o")
    changed = await store.conversation("k")
    assert (changed.system_prompt, changed.model) == ("You are a pirate.", "gpt-4o")
    await store.set_system_prompt(conversation.id, None)
    await store.set_model(conversation.id, None)
    cleared = await store.conversation("k")
    assert (cleared.system_prompt, cleared.model) == (None, None)


# -- turns and history ---------------------------------------------------------------------------


async def test_record_turn_assigns_consecutive_seqs(store: Store) -> None:
    conversation = await store.conversation("k")
    await store.record_turn(turn(conversation.id, "q1", "a1"))
    await store.record_turn(turn(conversation.id, "q2", "a2"))
    await store.record_turn(turn(conversation.id, "q3"))
    after = await store.conversation("k")
    assert after.next_seq == 5
    history = await store.history(conversation.id, 0, after.next_seq, 100)
    assert [(m.seq, m.role, m.content) for m in history] == [
        (4, "user", "q3"),
        (3, "assistant", "a2"),
        (2, "user", "q2"),
        (1, "assistant", "a1"),
        (0, "user", "q1"),
    ]
    assert history[0].tokens == len("q3")


async def test_history_pages_with_limit_and_before_seq(store: Store) -> None:
    conversation = await store.conversation("k")
    for i in range(5):
        await store.record_turn(turn(conversation.id, f"q{i}", f"a{i}"))
    newest = await store.history(conversation.id, 0, 10, 3)
    assert [m.seq for m in newest] == [9, 8, 7]
    older = await store.history(conversation.id, 0, newest[-1].seq, 3)
    assert [m.seq for m in older] == [6, 5, 4]
    window = await store.history(conversation.id, 2, 5, 100)
    assert [m.seq for m in window] == [4, 3, 2]
    assert await store.history(conversation.id, 0, 0, 10) == []


async def test_history_is_per_conversation(store: Store) -> None:
    one = await store.conversation("one")
    two = await store.conversation("two")
    await store.record_turn(turn(one.id, "for one", "ok one"))
    await store.record_turn(turn(two.id, "for two", "ok two"))
    assert [m.content for m in await store.history(two.id, 0, 100, 100)] == ["ok two", "for two"]
    # Seqs are per conversation, so both start at 0.
    assert (await store.conversation("two")).next_seq == 2


async def test_failed_and_partial_turns_kept_but_not_in_history(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("k")
    await store.record_turn(turn(conversation.id, "q1", "a1"))
    failed = TurnRecord(
        conversation.id,
        (
            NewMessage("user", "q2", 2, STATUS_FAILED),
            NewMessage("assistant", "half an ans", 4, STATUS_PARTIAL),
        ),
        USER,
        "Ada",
        DAY,
        0,
        0,
    )
    await store.record_turn(failed)
    await store.record_turn(turn(conversation.id, "q3", "a3"))
    history = await store.history(conversation.id, 0, 100, 100)
    assert [(m.seq, m.content) for m in history] == [(5, "a3"), (4, "q3"), (1, "a1"), (0, "q1")]
    rows = await backend.raw(
        "SELECT seq, content, status FROM messages WHERE conversation_id = ? ORDER BY seq", (conversation.id,)
    )
    assert rows[2:4] == [(2, "q2", "failed"), (3, "half an ans", "partial")]
    assert len(rows) == 6


async def test_reset_moves_start_pointer_and_deletes_nothing(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("k")
    await store.record_turn(turn(conversation.id, "old q", "old a"))
    await store.record_turn(turn(conversation.id, "old q2", "old a2"))
    await store.reset(conversation.id)
    after = await store.conversation("k")
    assert (after.start_seq, after.next_seq) == (4, 4)
    assert await store.history(after.id, after.start_seq, after.next_seq, 100) == []
    assert await backend.raw("SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (after.id,)) == [(4,)]

    await store.record_turn(turn(conversation.id, "new q", "new a"))
    fresh = await store.conversation("k")
    history = await store.history(fresh.id, fresh.start_seq, fresh.next_seq, 100)
    assert [(m.seq, m.content) for m in history] == [(5, "new a"), (4, "new q")]


async def test_reset_of_empty_conversation_is_harmless(store: Store) -> None:
    conversation = await store.conversation("k")
    await store.reset(conversation.id)
    await store.record_turn(turn(conversation.id, "q", "a"))
    after = await store.conversation("k")
    assert (after.start_seq, after.next_seq) == (0, 2)
    assert len(await store.history(after.id, after.start_seq, after.next_seq, 10)) == 2


async def test_restart_keeps_context(backend: Backend) -> None:
    first = await backend.open()
    conversation = await first.conversation("telegram:chat:7")
    for i in range(3):
        await first.record_turn(turn(conversation.id, f"question {i}", f"answer {i}"))
    await first.reset(conversation.id)
    await first.record_turn(turn(conversation.id, "after reset", "still here"))
    snapshot = await first.conversation("telegram:chat:7")
    before = await first.history(snapshot.id, snapshot.start_seq, snapshot.next_seq, 100)
    await first.close()

    second = await backend.open()
    try:
        reopened = await second.conversation("telegram:chat:7")
        assert reopened == snapshot
        assert await second.history(reopened.id, reopened.start_seq, reopened.next_seq, 100) == before
        assert [m.content for m in before] == ["still here", "after reset"]
    finally:
        await second.close()


# -- usage ---------------------------------------------------------------------------------------


async def test_usage_aggregates_per_day_and_since_day(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("k")
    await store.record_turn(turn(conversation.id, "a", "b", day="2024-04-30", prompt_tokens=100))
    await store.record_turn(turn(conversation.id, "c", "d", day="2024-05-01", prompt_tokens=10))
    await store.record_turn(turn(conversation.id, "e", "f", day="2024-05-01", prompt_tokens=20))
    await store.record_turn(turn(conversation.id, "g", "h", day="2024-05-02", prompt_tokens=1))
    await store.record_turn(turn(conversation.id, "x", "y", user_key="discord:9", prompt_tokens=1000))

    assert await store.usage(USER, "2024-05-01") == UsageTotals(31, 15, 3)
    assert await store.usage(USER, "2024-05-02") == UsageTotals(1, 5, 1)
    assert (await store.usage(USER, "2000-01-01")).total_tokens == 131 + 20
    assert await store.usage(USER, "2024-05-03") == UsageTotals(0, 0, 0)
    assert await store.usage("nobody", "2000-01-01") == UsageTotals()
    per_day = await backend.raw(
        "SELECT day, prompt_tokens, completion_tokens, requests FROM usage WHERE user_key = ? ORDER BY day",
        (USER,),
    )
    assert per_day == [("2024-04-30", 100, 5, 1), ("2024-05-01", 30, 10, 2), ("2024-05-02", 1, 5, 1)]


# -- inbox ---------------------------------------------------------------------------------------


async def test_inbox_add_detects_redelivery(store: Store) -> None:
    first = await store.inbox_add("telegram", "100", "5", '{"text": "hi"}')
    assert isinstance(first, int)
    assert await store.inbox_add("telegram", "100", "5", '{"text": "hi"}') is None
    other_chat = await store.inbox_add("telegram", "200", "5", "{}")
    other_platform = await store.inbox_add("discord", "100", "5", "{}")
    assert other_chat is not None
    assert other_platform is not None
    assert len({first, other_chat, other_platform}) == 3


async def test_concurrent_inbox_adds_get_ids_in_call_order_and_duplicates_none(store: Store) -> None:
    # Arriving together, they are written together (SQLite batches them): each still gets its own
    # answer, a message twice in one batch is a duplicate the second time, and ids follow the calls.
    calls = [("telegram", "100", str(n % 40), f'{{"n": {n}}}') for n in range(50)]
    ids = await asyncio.gather(*(store.inbox_add(*call, "telegram:chat:100") for call in calls))
    fresh = [i for i in ids[:40] if i is not None]
    assert len(fresh) == 40
    assert fresh == sorted(fresh)
    assert ids[40:] == [None] * 10
    pending = await store.inbox_pending()
    assert [(e.id, e.message_id) for e in pending] == [(i, str(n)) for n, i in enumerate(fresh)]


async def test_inbox_redelivery_after_finish_is_still_a_duplicate(store: Store) -> None:
    inbox_id = await store.inbox_add("telegram", "100", "5", "{}")
    assert inbox_id is not None
    await store.inbox_finish(inbox_id, "answered")
    assert await store.inbox_add("telegram", "100", "5", "{}") is None
    assert await store.inbox_pending() == []


async def test_inbox_pending_oldest_first_and_finish_removes(store: Store) -> None:
    ids = [await store.inbox_add("telegram", "1", str(n), f"payload {n}") for n in (30, 10, 20)]
    assert all(i is not None for i in ids)
    pending = await store.inbox_pending()
    assert [(e.id, e.message_id, e.payload) for e in pending] == [
        (ids[0], "30", "payload 30"),
        (ids[1], "10", "payload 10"),
        (ids[2], "20", "payload 20"),
    ]
    assert (pending[0].platform, pending[0].chat_id) == ("telegram", "1")
    assert ids[1] is not None
    await store.inbox_finish(ids[1], "failed")
    assert [e.message_id for e in await store.inbox_pending()] == ["30", "20"]


async def test_record_turn_closes_its_inbox_entry(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("k")
    inbox_id = await store.inbox_add("telegram", "1", "77", "{}")
    keep = await store.inbox_add("telegram", "1", "78", "{}")
    await store.record_turn(turn(conversation.id, "q", "a", inbox_id=inbox_id))
    assert [e.id for e in await store.inbox_pending()] == [keep]
    assert await backend.raw("SELECT status FROM inbox WHERE id = ?", (inbox_id,)) == [("answered",)]


async def test_record_turn_closes_every_merged_inbox_entry_with_its_status(
    store: Store, backend: Backend
) -> None:
    conversation = await store.conversation("k")
    ids = [await store.inbox_add("telegram", "1", str(n), "{}") for n in range(3)]
    assert None not in ids
    merged = TurnRecord(
        conversation.id,
        (NewMessage("user", "q", 1),),
        USER,
        "Ada",
        DAY,
        1,
        0,
        inbox_ids=tuple(i for i in ids[:2] if i is not None),
        inbox_status="ignored",
    )
    await store.record_turn(merged)
    assert [e.id for e in await store.inbox_pending()] == [ids[2]]
    rows = await backend.raw("SELECT id, status FROM inbox ORDER BY id", ())
    assert rows == [(ids[0], "ignored"), (ids[1], "ignored"), (ids[2], "pending")]


# -- SQLite specifics ------------------------------------------------------------------------------


async def test_journal_mode_is_wal(tmp_path: Path) -> None:
    backend = _sqlite_backend(tmp_path)
    store = await backend.open()
    try:
        assert await backend.raw("PRAGMA journal_mode", ()) == [("wal",)]
    finally:
        await store.close()


# -- concurrency and failures --------------------------------------------------------------------


async def test_concurrent_turns_on_different_conversations(store: Store) -> None:
    conversations = await asyncio.gather(*(store.conversation(f"chat {n}") for n in range(10)))
    await asyncio.gather(
        *(
            store.record_turn(turn(c.id, f"q{r} {c.key}", f"a{r} {c.key}"))
            for r in range(5)
            for c in conversations
        )
    )
    for c in conversations:
        after = await store.conversation(c.key)
        assert after.next_seq == 10
        history = await store.history(c.id, 0, 10, 100)
        assert [m.seq for m in history] == list(range(9, -1, -1))
        assert all(m.content.endswith(c.key) for m in history)
    assert await store.usage(USER, DAY) == UsageTotals(10 * 50, 5 * 50, 50)


async def test_concurrent_turns_on_one_conversation(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("busy")
    await asyncio.gather(*(store.record_turn(turn(conversation.id, f"q{n}", f"a{n}")) for n in range(40)))
    history = await store.history(conversation.id, 0, 1000, 1000)
    assert [m.seq for m in history] == list(range(79, -1, -1))
    # Each turn's two messages are adjacent: no other turn landed between them.
    oldest_first = history[::-1]
    for user, assistant in zip(oldest_first[::2], oldest_first[1::2], strict=True):
        assert (user.role, assistant.role) == ("user", "assistant")
        assert assistant.content == "a" + user.content[1:]
    assert await backend.raw("SELECT COUNT(DISTINCT seq) FROM messages", ()) == [(80,)]


async def test_concurrent_mixed_writes_do_not_nest_transactions(store: Store) -> None:
    conversation = await store.conversation("mixed")
    results = await asyncio.gather(
        *(store.record_turn(turn(conversation.id, f"q{n}", f"a{n}")) for n in range(10)),
        *(store.inbox_add("telegram", "1", str(n), "{}") for n in range(10)),
        *(store.set_model(conversation.id, f"model-{n}") for n in range(10)),
        *(store.conversation(f"new {n}") for n in range(10)),
        store.reset(conversation.id),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    after = await store.conversation("mixed")
    assert after.next_seq == 20
    assert after.model is not None
    assert after.model.startswith("model-")
    assert len(await store.inbox_pending()) == 10


async def test_turn_for_missing_conversation_fails_cleanly(store: Store, backend: Backend) -> None:
    with pytest.raises(LookupError):
        await store.record_turn(turn(9999, "q", "a"))
    assert await backend.raw("SELECT COUNT(*) FROM messages", ()) == [(0,)]
    assert await backend.raw("SELECT COUNT(*) FROM usage", ()) == [(0,)]
    conversation = await store.conversation("k")
    await store.record_turn(turn(conversation.id, "q", "a"))
    assert len(await store.history(conversation.id, 0, 10, 10)) == 2


async def _fail_usage_inserts_for(backend: Backend, user_key: str) -> type[Exception]:
    """Make inserting `user_key`'s usage fail with 'forced failure'; return the error type."""
    if backend.kind == "sqlite":
        await backend.raw(
            f"CREATE TRIGGER fail_usage BEFORE INSERT ON usage WHEN NEW.user_key = '{user_key}' "
            "BEGIN SELECT RAISE(ABORT, 'forced failure'); END",
            (),
        )
        return sqlite3.IntegrityError
    await backend.raw(
        "CREATE FUNCTION fail_usage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.user_key = '{user_key}' THEN RAISE EXCEPTION 'forced failure'; END IF; "
        "RETURN NEW; END $$",
        (),
    )
    await backend.raw(
        "CREATE TRIGGER fail_usage BEFORE INSERT ON usage FOR EACH ROW EXECUTE FUNCTION fail_usage()", ()
    )
    return asyncpg.RaiseError


async def test_failed_turn_rolls_back_everything(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("k")
    await store.record_turn(turn(conversation.id, "q1", "a1"))
    inbox_id = await store.inbox_add("telegram", "1", "2", "{}")
    # Fail after the conversation update and the message inserts, at the usage upsert.
    error = await _fail_usage_inserts_for(backend, "boom")
    with pytest.raises(error, match="forced failure"):
        await store.record_turn(turn(conversation.id, "q2", "a2", user_key="boom", inbox_id=inbox_id))

    after = await store.conversation("k")
    assert after.next_seq == 2
    assert await backend.raw("SELECT COUNT(*) FROM messages", ()) == [(2,)]
    assert [e.id for e in await store.inbox_pending()] == [inbox_id]
    # Still usable, with no gap in the seqs, and no transaction left open.
    await asyncio.gather(
        store.record_turn(turn(conversation.id, "q3", "a3", inbox_id=inbox_id)),
        store.set_model(conversation.id, "m"),
    )
    history = await store.history(conversation.id, 0, 100, 100)
    assert [(m.seq, m.content) for m in history] == [(3, "a3"), (2, "q3"), (1, "a1"), (0, "q1")]
    assert await store.inbox_pending() == []


async def test_failing_turn_does_not_undo_concurrent_writes(store: Store, backend: Backend) -> None:
    conversation = await store.conversation("k")
    results = await asyncio.gather(
        store.record_turn(turn(conversation.id, "ok q", "ok a")),
        store.record_turn(turn(9999, "doomed", "doomed")),
        store.set_system_prompt(conversation.id, "kept"),
        store.inbox_add("telegram", "1", "1", "{}"),
        return_exceptions=True,
    )
    assert isinstance(results[1], LookupError)
    assert [r for i, r in enumerate(results) if i != 1 and isinstance(r, BaseException)] == []
    await store.close()
    reopened = await backend.open()
    try:
        after = await reopened.conversation("k")
        assert after.system_prompt == "kept"
        assert after.next_seq == 2
        assert len(await reopened.inbox_pending()) == 1
    finally:
        await reopened.close()


# -- hostile text --------------------------------------------------------------------------------


INJECTIONS = [
    "'); DROP TABLE messages; --",
    'Robert"); DELETE FROM conversations WHERE ("1"="1',
    "1; UPDATE usage SET requests = 0",
    "emoji 🙂, NUL-free unicode ☃, backslash \\ and 'quotes'",
]


@pytest.mark.parametrize("text", INJECTIONS)
async def test_sql_looking_text_stored_verbatim(store: Store, backend: Backend, text: str) -> None:
    conversation = await store.conversation(text)
    await store.set_system_prompt(conversation.id, text)
    await store.set_model(conversation.id, text)
    await store.record_turn(turn(conversation.id, text, text, user_key=text, day=DAY))
    inbox_id = await store.inbox_add(text, text, text, text)

    again = await store.conversation(text)
    assert (again.id, again.key, again.system_prompt, again.model) == (conversation.id, text, text, text)
    assert [m.content for m in await store.history(again.id, 0, 10, 10)] == [text, text]
    assert (await store.usage(text, DAY)).requests == 1
    assert [(e.id, e.platform, e.chat_id, e.message_id, e.payload) for e in await store.inbox_pending()] == [
        (inbox_id, text, text, text, text)
    ]
    assert await backend.tables() >= TABLES


async def test_move_conversations_rekeys_a_chat_and_keeps_history(store: Store) -> None:
    """A Telegram group that became a supergroup keeps its contexts under the new chat id."""
    moving = [
        "telegram:chat:-41",
        "telegram:chat:-41:user:1",
        "telegram:chat:-41:thread:5:user:2",
    ]
    staying = ["telegram:chat:-410:user:1", "telegram:chat:%2D41:user:1"]
    ids = {key: (await store.conversation(key)).id for key in moving + staying}
    await store.record_turn(turn(ids["telegram:chat:-41:user:1"], "q", "a"))

    moved = await store.move_conversations("telegram:chat:-41", "telegram:chat:-1009")

    assert moved == 3
    for key in moving:
        new = await store.conversation(key.replace("-41", "-1009", 1))
        assert new.id == ids[key]
    for key in staying:
        assert (await store.conversation(key)).id == ids[key]
    kept = await store.conversation("telegram:chat:-1009:user:1")
    assert [m.content for m in await store.history(kept.id, 0, kept.next_seq, 10)] == ["a", "q"]


async def test_move_conversations_leaves_one_whose_new_key_is_taken(store: Store) -> None:
    old = await store.conversation("telegram:chat:-41:user:1")
    moved_alone = await store.conversation("telegram:chat:-41:user:2")
    taken = await store.conversation("telegram:chat:-1009:user:1")

    assert await store.move_conversations("telegram:chat:-41", "telegram:chat:-1009") == 1

    assert (await store.conversation("telegram:chat:-1009:user:2")).id == moved_alone.id
    assert (await store.conversation("telegram:chat:-1009:user:1")).id == taken.id
    assert (await store.conversation("telegram:chat:-41:user:1")).id == old.id


async def test_ping_answers_while_open(store: Store) -> None:
    await store.ping()


# -- conversation management ---------------------------------------------------------------------


async def test_updated_at_is_iso_utc_and_moves_on_writes(store: Store) -> None:
    created = await store.conversation("k")
    assert ISO_UTC_MS.fullmatch(created.updated_at), created.updated_at
    stamp = datetime.fromisoformat(created.updated_at)
    assert stamp.tzinfo is not None
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    await asyncio.sleep(0.002)
    await store.record_turn(turn(created.id, "q", "a"))
    after = await store.conversation("k")
    assert ISO_UTC_MS.fullmatch(after.updated_at), after.updated_at
    assert datetime.fromisoformat(after.updated_at) > stamp


async def test_persona_clears_the_system_prompt(store: Store) -> None:
    conversation = await store.conversation("k")
    await store.set_system_prompt(conversation.id, "be brief")
    await store.set_persona(conversation.id, "pirate")
    picked = await store.conversation("k")
    assert (picked.persona, picked.system_prompt) == ("pirate", None)
    await store.set_persona(conversation.id, None)
    assert (await store.conversation("k")).persona is None


async def test_summary_stored_and_voided_by_reset(store: Store) -> None:
    conversation = await store.conversation("k")
    for i in range(3):
        await store.record_turn(turn(conversation.id, f"q{i}", f"a{i}"))
    await store.set_summary(conversation.id, "they talked", 4)
    summarised = await store.conversation("k")
    assert (summarised.summary, summarised.summary_seq, summarised.live_summary) == (
        "they talked",
        4,
        "they talked",
    )
    await store.reset(conversation.id)
    after = await store.conversation("k")
    assert (after.summary, after.summary_seq, after.live_summary) == (None, 0, None)
    assert (after.start_seq, after.next_seq) == (6, 6)


# -- user policies and statistics ----------------------------------------------------------------


async def test_user_policy_saved_replaced_and_listed_in_key_order(store: Store) -> None:
    assert await store.user_policies() == []
    await store.save_user_policy(UserPolicy("telegram:2", banned=True))
    await store.save_user_policy(UserPolicy("discord:1", daily_tokens=100, monthly_tokens=3_000_000_000))
    await store.save_user_policy(UserPolicy("telegram:2", banned=False, daily_tokens=5))
    assert await store.user_policies() == [
        UserPolicy("discord:1", False, 100, 3_000_000_000),
        UserPolicy("telegram:2", False, 5, None),
    ]


async def test_day_stats_count_users_requests_and_tokens(store: Store) -> None:
    conversation = await store.conversation("k")
    assert await store.day_stats(DAY) == DayStats()
    await store.record_turn(turn(conversation.id, "a", "b", prompt_tokens=10, completion_tokens=5))
    await store.record_turn(turn(conversation.id, "c", "d", prompt_tokens=20, completion_tokens=5))
    await store.record_turn(turn(conversation.id, "e", "f", user_key="discord:9", prompt_tokens=1))
    await store.record_turn(turn(conversation.id, "g", "h", day="2024-05-02"))
    stats = await store.day_stats(DAY)
    assert (stats.users, stats.requests, stats.tokens) == (2, 3, 15 + 25 + 6)


async def test_usage_totals_beyond_32_bits(store: Store) -> None:
    conversation = await store.conversation("k")
    for _ in range(3):
        await store.record_turn(turn(conversation.id, "q", "a", prompt_tokens=2**31 - 1))
    totals = await store.usage(USER, DAY)
    assert totals.prompt_tokens == 3 * (2**31 - 1)
    assert isinstance(totals.prompt_tokens, int)
    assert (await store.day_stats(DAY)).tokens == 3 * (2**31 - 1 + 5)


# -- several workers on one database -------------------------------------------------------------


async def test_two_stores_on_one_database_never_collide_on_seq(backend: Backend) -> None:
    """Two worker processes answering in one conversation interleave whole turns."""
    first = await backend.open()
    second = await backend.open()
    try:
        conversation = await first.conversation("shared")
        assert (await second.conversation("shared")).id == conversation.id
        await asyncio.gather(
            *(
                (first if n % 2 else second).record_turn(turn(conversation.id, f"q{n}", f"a{n}"))
                for n in range(30)
            )
        )
        history = (await second.history(conversation.id, 0, 1000, 1000))[::-1]
        assert [m.seq for m in history] == list(range(60))
        for user, assistant in zip(history[::2], history[1::2], strict=True):
            assert assistant.content == "a" + user.content[1:]
        assert (await first.conversation("shared")).next_seq == 60
    finally:
        await first.close()
        await second.close()


async def test_workers_starting_together_migrate_once(postgres_schema: str) -> None:
    url = _with_search_path(POSTGRES_URL, postgres_schema)
    results = await asyncio.gather(*(PostgresStore.open(url) for _ in range(5)), return_exceptions=True)
    stores = [r for r in results if isinstance(r, PostgresStore)]
    try:
        assert [r for r in results if isinstance(r, BaseException)] == []
        for opened in stores:
            assert await opened.applied_migrations() == [name for name, _ in PG_MIGRATIONS]
        rows = await _postgres_backend(postgres_schema).raw("SELECT COUNT(*) FROM schema_migrations", ())
        assert rows == [(len(PG_MIGRATIONS),)]
    finally:
        for opened in stores:
            await opened.close()


async def test_postgres_password_is_never_logged(
    postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The test server trusts local connections, so it ignores the password it is sent.
    parts = urlsplit(POSTGRES_URL)
    if not parts.username or parts.password:
        pytest.skip("needs a GPTRELAY_TEST_POSTGRES_URL with a user name and no password")
    with_password = POSTGRES_URL.replace(f"//{parts.username}@", f"//{parts.username}:hunter2@", 1)
    caplog.set_level(logging.DEBUG)
    opened = await PostgresStore.open(_with_search_path(with_password, postgres_schema))
    await opened.close()
    assert f"{parts.username}:****@" in caplog.text
    assert "hunter2" not in caplog.text


# -- choosing the store --------------------------------------------------------------------------


async def test_open_store_is_sqlite_without_a_database_url(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, openai_api_key="sk-test")  # type: ignore[call-arg]
    opened = await open_store(settings)
    try:
        assert isinstance(opened, SqliteStore)
        assert settings.db_path.is_file()
    finally:
        await opened.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_open_store_is_postgres_for_a_postgres_url(
    tmp_path: Path, postgres_schema: str, scheme: str
) -> None:
    url = _with_search_path(POSTGRES_URL, postgres_schema).replace("postgresql://", f"{scheme}://", 1)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, data_dir=tmp_path, openai_api_key="sk-test", database_url=url
    )
    opened = await open_store(settings)
    try:
        assert isinstance(opened, PostgresStore)
        assert await opened.applied_migrations() == [name for name, _ in PG_MIGRATIONS]
        assert not settings.db_path.exists()
    finally:
        await opened.close()
