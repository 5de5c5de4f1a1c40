"""The aiosqlite store: WAL mode, explicit transactions, parameterised SQL only."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from storage.base import (
    Conversation,
    DayStats,
    InboxEntry,
    StoredMessage,
    TurnRecord,
    UsageTotals,
    UserPolicy,
)
from storage.batching import Batcher
from storage.history_cache import HistoryCache
from storage.migrations import MIGRATIONS

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5_000
# Inbox rows per multi-row insert: 6 parameters each, well under SQLite's 32,766.
INBOX_BATCH = 1_000
INBOX_PENDING = "pending"
# Turns per group commit: a bound on one transaction's size under a flood.
TURN_BATCH = 1_000
# Conversation keys per grouped read; each is one element of a JSON array parameter.
READ_BATCH = 1_000

_CONVERSATION_COLUMNS = (
    "id, key, start_seq, next_seq, system_prompt, model, persona, summary, summary_seq, updated_at"
)


# platform, chat_id, message_id, payload, conversation_key
_InboxRow = tuple[str, str, str, str, str]


def _now() -> str:
    """Current UTC time as ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SqliteStore:
    """Store implementation on one aiosqlite connection."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection is shared by every coroutine: a write must never land inside
        # another coroutine's open transaction (its ROLLBACK would undo it).
        self._write_lock = asyncio.Lock()
        self._turns: Batcher[TurnRecord, None] = Batcher(self._write_turns, TURN_BATCH)
        self._inbox: Batcher[_InboxRow, int | None] = Batcher(self._insert_inbox, INBOX_BATCH)
        self._reads: Batcher[str, Conversation] = Batcher(self._read_conversations, READ_BATCH)
        # One process per SQLite file (conversation_turn): every turn is written here, seen by the cache.
        self._tails = HistoryCache()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block as one IMMEDIATE transaction, alone on the connection."""
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT: an open transaction would break every later write.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def _write(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        """Run one autocommitted write statement, returning any RETURNING rows."""
        async with self._write_lock:
            return list(await self._db.execute_fetchall(sql, params))

    @classmethod
    async def open(cls, path: Path | str) -> SqliteStore:
        """Open (creating if needed) the database and apply pending migrations."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode is crash-safe for the database; only the last commits may
            # roll back on power loss, never corrupt.
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            store = cls(db)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def _migrate(self) -> None:
        """Apply, in order, every migration not yet recorded."""
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        for name, statements in MIGRATIONS:
            async with self._transaction() as db:
                # Checked inside the write transaction: another process opening the same new
                # file at the same moment may have applied it since.
                done = await db.execute_fetchall("SELECT 1 FROM schema_migrations WHERE name = ?", (name,))
                if list(done):
                    continue
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, _now())
                )
            logger.info("applied migration %s", name)

    async def ping(self) -> None:
        """Raise if the database cannot be queried now (readiness checks)."""
        await self._db.execute_fetchall("SELECT 1")

    async def applied_migrations(self) -> list[str]:
        """Names of the migrations this database has, in order applied."""
        rows = await self._db.execute_fetchall("SELECT name FROM schema_migrations ORDER BY name")
        return [row[0] for row in rows]

    async def conversation(self, key: str) -> Conversation:
        """Fetch a conversation by key, creating it on first use (reads arriving together share a query)."""
        return await self._reads.submit(key)

    async def _read_conversations(self, keys: list[str]) -> list[Conversation]:
        """One query for every key; the missing ones created in one statement."""
        wanted = json.dumps(sorted(set(keys)))
        rows = await self._db.execute_fetchall(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations "
            "WHERE key IN (SELECT value FROM json_each(?))",
            (wanted,),
        )
        found = {str(row[1]): Conversation(*row) for row in rows}
        if missing := sorted(set(keys) - found.keys()):
            now = _now()
            created = await self._write(
                "INSERT INTO conversations (key, created_at, updated_at) "
                f"VALUES {', '.join('(?, ?, ?)' for _ in missing)} "
                f"ON CONFLICT (key) DO UPDATE SET key = excluded.key RETURNING {_CONVERSATION_COLUMNS}",
                tuple(p for key in missing for p in (key, now, now)),
            )
            found |= {str(row[1]): Conversation(*row) for row in created}
        return [found[key] for key in keys]

    async def set_system_prompt(self, conversation_id: int, text: str | None) -> None:
        """Set (or clear with None) a conversation's system prompt."""
        await self._write(
            "UPDATE conversations SET system_prompt = ?, updated_at = ? WHERE id = ?",
            (text, _now(), conversation_id),
        )

    async def set_model(self, conversation_id: int, model: str | None) -> None:
        """Set (or clear with None) a conversation's model."""
        await self._write(
            "UPDATE conversations SET model = ?, updated_at = ? WHERE id = ?",
            (model, _now(), conversation_id),
        )

    async def set_persona(self, conversation_id: int, persona: str | None) -> None:
        """Pick a persona (clearing any free-text system prompt), or clear it with None."""
        await self._write(
            "UPDATE conversations SET persona = ?, system_prompt = NULL, updated_at = ? WHERE id = ?",
            (persona, _now(), conversation_id),
        )

    async def reset(self, conversation_id: int) -> None:
        """Start fresh: move the start pointer past every stored turn, deleting nothing."""
        await self._write(
            "UPDATE conversations SET start_seq = next_seq, summary = NULL, summary_seq = 0, updated_at = ? "
            "WHERE id = ?",
            (_now(), conversation_id),
        )

    async def set_summary(self, conversation_id: int, summary: str, summary_seq: int) -> None:
        """Store the summary of the turns before summary_seq."""
        await self._write(
            "UPDATE conversations SET summary = ?, summary_seq = ?, updated_at = ? WHERE id = ?",
            (summary, summary_seq, _now(), conversation_id),
        )

    async def move_conversations(self, old_prefix: str, new_prefix: str) -> int:
        """Re-key every conversation under `old_prefix` (a chat that changed id); return how many."""
        # Compared with substr, not LIKE: escaped ids contain '%', a LIKE wildcard.
        rows = await self._write(
            "UPDATE OR IGNORE conversations SET key = ?2 || substr(key, length(?1) + 1), updated_at = ?3 "
            "WHERE key = ?1 OR substr(key, 1, length(?1) + 1) = ?1 || ':' RETURNING id",
            (old_prefix, new_prefix, _now()),
        )
        return len(rows)

    async def history(
        self, conversation_id: int, start_seq: int, before_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Usable turns with start_seq <= seq < before_seq, newest first."""
        cached = self._tails.get(conversation_id, start_seq, before_seq, limit)
        if cached is not None:
            return cached
        rows = await self._db.execute_fetchall(
            "SELECT seq, role, content, tokens FROM messages "
            "WHERE conversation_id = ? AND seq >= ? AND seq < ? AND status = 'ok' "
            "ORDER BY seq DESC LIMIT ?",
            (conversation_id, start_seq, before_seq, limit),
        )
        messages = [StoredMessage(*row) for row in rows]
        self._tails.fill(conversation_id, start_seq, before_seq, limit, messages)
        return messages

    async def record_turn(self, turn: TurnRecord) -> None:
        """Append a turn's messages, count its usage and close its inbox entry, atomically.

        Turns arriving while a commit is under way are written together in the next one
        (group commit): each aiosqlite call is a thread hop, so this keeps the hops per
        message low under load without delaying a lone turn.
        """
        await self._turns.submit(turn)

    async def _write_turns(self, turns: list[TurnRecord]) -> list[None]:
        """Write turns in one transaction; seqs follow each conversation's last message."""
        try:
            next_seqs = await self._insert_turns(turns)
        except sqlite3.IntegrityError as exc:
            if len(turns) == 1 and "FOREIGN KEY" in str(exc):
                raise LookupError(f"no conversation with id {turns[0].conversation_id}") from exc
            raise
        self._tails.append(turns, next_seqs)
        return [None] * len(turns)

    async def _insert_turns(self, turns: list[TurnRecord]) -> dict[int, int]:
        """The turns' statements in one transaction; each conversation's next_seq after them."""
        now = _now()
        async with self._transaction() as db:
            await db.executemany(
                "INSERT INTO messages (conversation_id, seq, role, content, tokens, status, created_at) "
                "VALUES (?1, (SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE conversation_id = ?1), "
                "?2, ?3, ?4, ?5, ?6)",
                [
                    (t.conversation_id, m.role, m.content, m.tokens, m.status, now)
                    for t in turns
                    for m in t.messages
                ],
            )
            # RETURNING inside the transaction: these turns hold the top seqs below each next_seq.
            next_seqs = await db.execute_fetchall(
                "UPDATE conversations SET updated_at = ?, next_seq = (SELECT COALESCE(MAX(seq), -1) + 1 "
                "FROM messages WHERE conversation_id = conversations.id) "
                "WHERE id IN (SELECT value FROM json_each(?)) RETURNING id, next_seq",
                (now, json.dumps(sorted({t.conversation_id for t in turns}))),
            )
            await db.executemany(
                "INSERT INTO usage (user_key, day, prompt_tokens, completion_tokens, requests) "
                "VALUES (?, ?, ?, ?, 1) ON CONFLICT (user_key, day) DO UPDATE SET "
                "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                "completion_tokens = completion_tokens + excluded.completion_tokens, "
                "requests = requests + 1",
                [(t.user_key, t.day, t.prompt_tokens, t.completion_tokens) for t in turns],
            )
            await db.executemany(
                "INSERT INTO users (user_key, display_name, created_at, last_seen_at) "
                "VALUES (?1, ?2, ?3, ?3) ON CONFLICT (user_key) DO UPDATE SET "
                "display_name = excluded.display_name, last_seen_at = excluded.last_seen_at",
                [(t.user_key, t.user_name, now) for t in turns],
            )
            await db.executemany(
                "UPDATE inbox SET status = ?, finished_at = ? WHERE id = ?",
                [(t.inbox_status, now, inbox_id) for t in turns for inbox_id in t.inbox_ids],
            )
        return {int(row[0]): int(row[1]) for row in next_seqs}

    async def usage(self, user_key: str, since_day: str) -> UsageTotals:
        """A user's usage from since_day (YYYY-MM-DD) on."""
        rows = await self._db.execute_fetchall(
            "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
            "COALESCE(SUM(requests), 0) FROM usage WHERE user_key = ? AND day >= ?",
            (user_key, since_day),
        )
        return UsageTotals(*next(iter(rows)))

    async def day_stats(self, day: str) -> DayStats:
        """Users, answered messages and tokens on one day (YYYY-MM-DD)."""
        rows = await self._db.execute_fetchall(
            "SELECT COUNT(*), COALESCE(SUM(requests), 0), "
            "COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage WHERE day = ?",
            (day,),
        )
        return DayStats(*next(iter(rows)))

    async def user_policies(self) -> list[UserPolicy]:
        """Every stored user policy (bans and own limits)."""
        rows = await self._db.execute_fetchall(
            "SELECT user_key, banned, daily_tokens, monthly_tokens FROM user_policies ORDER BY user_key"
        )
        return [UserPolicy(key, bool(banned), daily, monthly) for key, banned, daily, monthly in rows]

    async def save_user_policy(self, policy: UserPolicy) -> None:
        """Create or replace a user's policy."""
        await self._write(
            "INSERT INTO user_policies (user_key, banned, daily_tokens, monthly_tokens, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_key) DO UPDATE SET banned = excluded.banned, "
            "daily_tokens = excluded.daily_tokens, monthly_tokens = excluded.monthly_tokens, "
            "updated_at = excluded.updated_at",
            (policy.user_key, int(policy.banned), policy.daily_tokens, policy.monthly_tokens, _now()),
        )

    async def inbox_add(
        self, platform: str, chat_id: str, message_id: str, payload: str, conversation_key: str = ""
    ) -> int | None:
        """Record a received message; None when it was received before.

        Messages arriving while an insert is under way are inserted together in the next one
        (group commit, as for turns): a burst of messages then costs a few commits, not one each.
        """
        return await self._inbox.submit((platform, chat_id, message_id, payload, conversation_key))

    async def _insert_inbox(self, rows: list[_InboxRow]) -> list[int | None]:
        """One multi-row insert; a row already received (or twice in the batch) gets None."""
        now = _now()
        values = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in rows)
        params = [
            p for platform, chat, msg, payload, key in rows for p in (platform, chat, msg, payload, now, key)
        ]
        inserted = await self._write(
            "INSERT INTO inbox (platform, chat_id, message_id, payload, received_at, conversation_key) "
            f"VALUES {values} ON CONFLICT DO NOTHING RETURNING id, platform, chat_id, message_id",
            tuple(params),
        )
        # RETURNING's row order is not guaranteed: match the rows back by their unique key.
        by_key: dict[tuple[object, ...], int] = {tuple(row[1:]): int(row[0]) for row in inserted}  # type: ignore[call-overload]
        return [by_key.pop((platform, chat, msg), None) for platform, chat, msg, _, _ in rows]

    async def inbox_finish(self, inbox_id: int, status: str) -> None:
        """Mark an inbox entry handled (answered, ignored or failed)."""
        await self._write(
            "UPDATE inbox SET status = ?, finished_at = ? WHERE id = ?", (status, _now(), inbox_id)
        )

    def conversation_turn(self, key: str, inbox_id: int) -> AbstractAsyncContextManager[None]:
        """One process per SQLite file: the core's own queue already keeps each conversation in order."""
        return nullcontext()

    async def inbox_claim(self, platform: str) -> list[InboxEntry]:
        """Every unanswered entry of the platform: a SQLite file has one worker, this one."""
        return [entry for entry in await self.inbox_pending() if entry.platform == platform]

    async def inbox_pending(self) -> list[InboxEntry]:
        """Received messages that were never handled, oldest first."""
        rows = await self._db.execute_fetchall(
            "SELECT id, platform, chat_id, message_id, payload FROM inbox WHERE status = ? ORDER BY id",
            (INBOX_PENDING,),
        )
        return [InboxEntry(*row) for row in rows]

    async def close(self) -> None:
        """Finish pending reads, inbox inserts and turns, then release the database."""
        await self._reads.drain()
        await self._inbox.drain()
        await self._turns.drain()
        await self._db.close()
