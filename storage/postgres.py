"""The asyncpg store: a connection pool, one transaction per write, parameterised SQL only."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from storage.base import (
    Conversation,
    DayStats,
    InboxEntry,
    StoredMessage,
    TurnRecord,
    UsageTotals,
    UserPolicy,
)
from storage.pg_migrations import PG_MIGRATIONS
from storage.url import mask_password

logger = logging.getLogger(__name__)

# Several workers: how long a message waits for another worker's earlier message of the same
# conversation, how long a conversation lock lives if its holder dies, and when another
# worker's unanswered messages count as orphaned (its worker is gone) and may be taken over.
TURN_WAIT_S = 30.0
TURN_LEASE_S = 180.0
TURN_POLL_MIN_S = 0.005
TURN_POLL_MAX_S = 0.1
ORPHAN_AFTER_S = 600.0
_ACQUIRE_TURN = (
    "UPDATE conversations SET lock_owner = $2, lock_until = now() + make_interval(secs => $3) "
    "WHERE key = $1 AND (lock_owner IS NULL OR lock_until < now()) "
    "AND (NOT $6 OR NOT EXISTS (SELECT 1 FROM inbox WHERE conversation_key = $1 "
    "AND status = 'pending' AND id < $4 AND worker <> $5)) RETURNING id"
)

# A conversation's inbox inserts take this advisory lock (with the key's hash) until they commit,
# so its ids are handed out in commit order: a worker that sees one entry sees every earlier one.
INBOX_ADD_LOCK_CLASS = 0x67707472  # "gptr"
_INBOX_ADD = (
    "WITH turn AS (SELECT pg_advisory_xact_lock($8, hashtext($6))) "
    "INSERT INTO inbox (platform, chat_id, message_id, payload, received_at, conversation_key, worker) "
    "SELECT $1, $2, $3, $4, $5, $6, $7 FROM turn ON CONFLICT DO NOTHING RETURNING id"
)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 20
# A statement that runs longer than this is failed rather than left to hang a message.
COMMAND_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# close() waits this long for in-flight queries before cutting connections.
CLOSE_TIMEOUT_S = 10.0
INBOX_PENDING = "pending"
# pg_advisory_xact_lock key serialising migrations across workers: "gptrelay" in ASCII.
MIGRATION_LOCK_ID = 0x67707472656C6179

_CONVERSATION_COLUMNS = (
    "id, key, start_seq, next_seq, system_prompt, model, persona, summary, summary_seq, updated_at"
)


def _now() -> datetime:
    """Current UTC time; stored as timestamptz."""
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    """A timestamptz as the ISO 8601 text the SQLite store keeps (UTC, milliseconds)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _conversation(row: asyncpg.Record) -> Conversation:
    """A conversations row as the record the core uses."""
    return Conversation(
        id=row["id"],
        key=row["key"],
        start_seq=row["start_seq"],
        next_seq=row["next_seq"],
        system_prompt=row["system_prompt"],
        model=row["model"],
        persona=row["persona"],
        summary=row["summary"],
        summary_seq=row["summary_seq"],
        updated_at=_iso(row["updated_at"]),
    )


@dataclass
class _Turnstile:
    """The lock serialising one conversation's inbox inserts, and how many calls hold or want it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class PostgresStore:
    """Store implementation on an asyncpg pool; several processes may share one database."""

    def __init__(self, pool: asyncpg.Pool, worker: str) -> None:
        self._pool = pool
        self._worker = worker
        self._adding: dict[str, _Turnstile] = {}

    @classmethod
    async def open(cls, url: str, worker: str = "") -> PostgresStore:
        """Connect to the database at `url` and apply pending migrations.

        Query parameters the driver does not know (e.g. `?search_path=bots`) become server settings.
        """
        logger.info("opening PostgreSQL store at %s", mask_password(url))
        pool = await asyncpg.create_pool(
            url,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            command_timeout=COMMAND_TIMEOUT_S,
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            store = cls(pool, worker or socket.gethostname())
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        """Apply, in order, every migration not yet recorded; one worker at a time."""
        async with self._pool.acquire() as db, db.transaction():
            # Held until commit: a second worker starting now waits, then finds nothing to do.
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
            )
            applied = {row["name"] for row in await db.fetch("SELECT name FROM schema_migrations")}
            for name, statements in PG_MIGRATIONS:
                if name in applied:
                    continue
                # A savepoint per migration would add nothing: PostgreSQL DDL is transactional,
                # so the pending migrations are applied all together or not at all.
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)", name, _now()
                )
                logger.info("applied migration %s", name)

    async def ping(self) -> None:
        """Raise if the database cannot be queried now (readiness checks)."""
        await self._pool.fetchval("SELECT 1")

    async def applied_migrations(self) -> list[str]:
        """Names of the migrations this database has, in order applied."""
        rows = await self._pool.fetch("SELECT name FROM schema_migrations ORDER BY name")
        return [row["name"] for row in rows]

    async def conversation(self, key: str) -> Conversation:
        """Fetch a conversation by key, creating it on first use."""
        row = await self._pool.fetchrow(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE key = $1", key
        )
        if row is None:
            # DO UPDATE (a no-op) rather than DO NOTHING: it returns the row a racing insert made.
            now = _now()
            row = await self._pool.fetchrow(
                "INSERT INTO conversations (key, created_at, updated_at) VALUES ($1, $2, $2) "
                f"ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key RETURNING {_CONVERSATION_COLUMNS}",
                key,
                now,
            )
        assert row is not None  # RETURNING always yields the inserted or conflicting row
        return _conversation(row)

    async def set_system_prompt(self, conversation_id: int, text: str | None) -> None:
        """Set (or clear with None) a conversation's system prompt."""
        await self._pool.execute(
            "UPDATE conversations SET system_prompt = $1, updated_at = $2 WHERE id = $3",
            text,
            _now(),
            conversation_id,
        )

    async def set_model(self, conversation_id: int, model: str | None) -> None:
        """Set (or clear with None) a conversation's model."""
        await self._pool.execute(
            "UPDATE conversations SET model = $1, updated_at = $2 WHERE id = $3",
            model,
            _now(),
            conversation_id,
        )

    async def set_persona(self, conversation_id: int, persona: str | None) -> None:
        """Pick a persona (clearing any free-text system prompt), or clear it with None."""
        await self._pool.execute(
            "UPDATE conversations SET persona = $1, system_prompt = NULL, updated_at = $2 WHERE id = $3",
            persona,
            _now(),
            conversation_id,
        )

    async def reset(self, conversation_id: int) -> None:
        """Start fresh: move the start pointer past every stored turn, deleting nothing."""
        await self._pool.execute(
            "UPDATE conversations SET start_seq = next_seq, summary = NULL, summary_seq = 0, "
            "updated_at = $1 WHERE id = $2",
            _now(),
            conversation_id,
        )

    async def set_summary(self, conversation_id: int, summary: str, summary_seq: int) -> None:
        """Store the summary of the turns before summary_seq."""
        await self._pool.execute(
            "UPDATE conversations SET summary = $1, summary_seq = $2, updated_at = $3 WHERE id = $4",
            summary,
            summary_seq,
            _now(),
            conversation_id,
        )

    async def move_conversations(self, old_prefix: str, new_prefix: str) -> int:
        """Re-key every conversation under `old_prefix` (a chat that changed id); return how many."""
        # Compared with substr, not LIKE: escaped ids contain '%', a LIKE wildcard. A conversation
        # whose new key is taken stays where it is (SQLite's UPDATE OR IGNORE).
        rows = await self._pool.fetch(
            "UPDATE conversations AS c SET key = $2 || substr(c.key, length($1) + 1), updated_at = $3 "
            "WHERE (c.key = $1 OR substr(c.key, 1, length($1) + 1) = $1 || ':') "
            "AND NOT EXISTS (SELECT 1 FROM conversations AS taken "
            "WHERE taken.key = $2 || substr(c.key, length($1) + 1)) RETURNING c.id",
            old_prefix,
            new_prefix,
            _now(),
        )
        return len(rows)

    async def history(
        self, conversation_id: int, start_seq: int, before_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Usable turns with start_seq <= seq < before_seq, newest first."""
        rows = await self._pool.fetch(
            "SELECT seq, role, content, tokens FROM messages "
            "WHERE conversation_id = $1 AND seq >= $2 AND seq < $3 AND status = 'ok' "
            "ORDER BY seq DESC LIMIT $4",
            conversation_id,
            start_seq,
            before_seq,
            limit,
        )
        return [StoredMessage(row["seq"], row["role"], row["content"], row["tokens"]) for row in rows]

    async def record_turn(self, turn: TurnRecord) -> None:
        """Append a turn's messages, count its usage and close its inbox entry, atomically.

        The conversation row is locked (FOR UPDATE) first, so concurrent turns of one
        conversation, from this process or another, take consecutive seqs one after another.
        """
        now = _now()
        async with self._pool.acquire() as db, db.transaction():
            first_seq = await db.fetchval(
                "SELECT next_seq FROM conversations WHERE id = $1 FOR UPDATE", turn.conversation_id
            )
            if first_seq is None:
                raise LookupError(f"no conversation with id {turn.conversation_id}")
            if turn.messages:
                await db.execute(
                    "INSERT INTO messages (conversation_id, seq, role, content, tokens, status, created_at) "
                    "SELECT $1, $2 + m.ord - 1, m.role, m.content, m.tokens, m.status, $7 "
                    "FROM unnest($3::text[], $4::text[], $5::int[], $6::text[]) "
                    "WITH ORDINALITY AS m (role, content, tokens, status, ord)",
                    turn.conversation_id,
                    first_seq,
                    [m.role for m in turn.messages],
                    [m.content for m in turn.messages],
                    [m.tokens for m in turn.messages],
                    [m.status for m in turn.messages],
                    now,
                )
            await db.execute(
                "UPDATE conversations SET next_seq = $1, updated_at = $2 WHERE id = $3",
                first_seq + len(turn.messages),
                now,
                turn.conversation_id,
            )
            await db.execute(
                "INSERT INTO usage (user_key, day, prompt_tokens, completion_tokens, requests) "
                "VALUES ($1, $2, $3, $4, 1) ON CONFLICT (user_key, day) DO UPDATE SET "
                "prompt_tokens = usage.prompt_tokens + EXCLUDED.prompt_tokens, "
                "completion_tokens = usage.completion_tokens + EXCLUDED.completion_tokens, "
                "requests = usage.requests + 1",
                turn.user_key,
                turn.day,
                turn.prompt_tokens,
                turn.completion_tokens,
            )
            await db.execute(
                "INSERT INTO users (user_key, display_name, created_at, last_seen_at) "
                "VALUES ($1, $2, $3, $3) ON CONFLICT (user_key) DO UPDATE SET "
                "display_name = EXCLUDED.display_name, last_seen_at = EXCLUDED.last_seen_at",
                turn.user_key,
                turn.user_name,
                now,
            )
            if turn.inbox_ids:
                await db.execute(
                    "UPDATE inbox SET status = $1, finished_at = $2 WHERE id = ANY($3::bigint[])",
                    turn.inbox_status,
                    now,
                    list(turn.inbox_ids),
                )

    async def usage(self, user_key: str, since_day: str) -> UsageTotals:
        """A user's usage from since_day (YYYY-MM-DD) on."""
        # SUM of BIGINT is NUMERIC in PostgreSQL: cast back so the totals are ints.
        row = await self._pool.fetchrow(
            "SELECT COALESCE(SUM(prompt_tokens), 0)::bigint, COALESCE(SUM(completion_tokens), 0)::bigint, "
            "COALESCE(SUM(requests), 0)::bigint FROM usage WHERE user_key = $1 AND day >= $2",
            user_key,
            since_day,
        )
        assert row is not None  # an aggregate always yields one row
        return UsageTotals(*row)

    async def day_stats(self, day: str) -> DayStats:
        """Users, answered messages and tokens on one day (YYYY-MM-DD)."""
        row = await self._pool.fetchrow(
            "SELECT COUNT(*), COALESCE(SUM(requests), 0)::bigint, "
            "COALESCE(SUM(prompt_tokens + completion_tokens), 0)::bigint FROM usage WHERE day = $1",
            day,
        )
        assert row is not None  # an aggregate always yields one row
        return DayStats(*row)

    async def user_policies(self) -> list[UserPolicy]:
        """Every stored user policy (bans and own limits)."""
        rows = await self._pool.fetch(
            "SELECT user_key, banned, daily_tokens, monthly_tokens FROM user_policies ORDER BY user_key"
        )
        return [UserPolicy(key, bool(banned), daily, monthly) for key, banned, daily, monthly in rows]

    async def save_user_policy(self, policy: UserPolicy) -> None:
        """Create or replace a user's policy."""
        await self._pool.execute(
            "INSERT INTO user_policies (user_key, banned, daily_tokens, monthly_tokens, updated_at) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_key) DO UPDATE SET banned = EXCLUDED.banned, "
            "daily_tokens = EXCLUDED.daily_tokens, monthly_tokens = EXCLUDED.monthly_tokens, "
            "updated_at = EXCLUDED.updated_at",
            policy.user_key,
            policy.banned,
            policy.daily_tokens,
            policy.monthly_tokens,
            _now(),
        )

    async def inbox_add(
        self, platform: str, chat_id: str, message_id: str, payload: str, conversation_key: str = ""
    ) -> int | None:
        """Record a received message, as this worker's; None when it was received before.

        A conversation's entries get ids in the order of the calls: the core reserves their places
        in that order, and conversation_turn relies on the two orders being the same.
        """
        async with self._in_call_order(conversation_key):
            inbox_id: int | None = await self._pool.fetchval(
                _INBOX_ADD,
                platform,
                chat_id,
                message_id,
                payload,
                _now(),
                conversation_key,
                self._worker,
                INBOX_ADD_LOCK_CLASS,
            )
        return inbox_id

    @asynccontextmanager
    async def _in_call_order(self, key: str) -> AsyncIterator[None]:
        """One insert of a conversation at a time in this process, first called first."""
        # Concurrent inserts on separate connections may be numbered in either order; a later
        # message numbered first would wait for one queued behind it here (a deadlock until
        # TURN_WAIT_S). asyncio.Lock is taken in call order, and at the call if free.
        turnstile = self._adding.get(key)
        if turnstile is None:
            turnstile = self._adding[key] = _Turnstile()
        turnstile.users += 1
        try:
            async with turnstile.lock:
                yield
        finally:
            turnstile.users -= 1
            if not turnstile.users:
                del self._adding[key]

    @asynccontextmanager
    async def conversation_turn(self, key: str, inbox_id: int) -> AsyncIterator[None]:
        """Hold the conversation (a leased row lock) once no other worker has an earlier message."""
        token = f"{self._worker}:{inbox_id}"
        await self._pool.execute(
            "INSERT INTO conversations (key, created_at, updated_at) VALUES ($1, $2, $2) "
            "ON CONFLICT (key) DO NOTHING",
            key,
            _now(),
        )
        await self._acquire_turn(key, inbox_id, token)
        try:
            yield
        finally:
            # A release lost to a crash is healed by the lease running out.
            await self._pool.execute(
                "UPDATE conversations SET lock_owner = NULL, lock_until = NULL "
                "WHERE key = $1 AND lock_owner = $2",
                key,
                token,
            )

    async def _acquire_turn(self, key: str, inbox_id: int, token: str) -> None:
        """Poll (backing off) until the lock is free and no earlier message waits elsewhere."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TURN_WAIT_S
        delay = TURN_POLL_MIN_S
        in_order = True
        while not await self._pool.fetchval(
            _ACQUIRE_TURN, key, token, TURN_LEASE_S, inbox_id, self._worker, in_order
        ):
            if in_order and loop.time() > deadline:
                # The worker holding the earlier message is gone; its message is replayed later.
                logger.warning(
                    "conversation %s: earlier message elsewhere unanswered for %.0f s; going on",
                    key,
                    TURN_WAIT_S,
                )
                in_order = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, TURN_POLL_MAX_S)

    async def inbox_claim(self, platform: str) -> list[InboxEntry]:
        """This worker's earlier entries and long-orphaned ones, claimed with SKIP LOCKED."""
        rows = await self._pool.fetch(
            "UPDATE inbox SET worker = $2 WHERE id IN ("
            "SELECT id FROM inbox WHERE status = $4 AND platform = $1 "
            "AND (worker = $2 OR received_at < now() - make_interval(secs => $3)) "
            "ORDER BY id FOR UPDATE SKIP LOCKED) "
            "RETURNING id, platform, chat_id, message_id, payload",
            platform,
            self._worker,
            ORPHAN_AFTER_S,
            INBOX_PENDING,
        )
        return sorted((InboxEntry(*row) for row in rows), key=lambda entry: entry.id)

    async def inbox_finish(self, inbox_id: int, status: str) -> None:
        """Mark an inbox entry handled (answered, ignored or failed)."""
        await self._pool.execute(
            "UPDATE inbox SET status = $1, finished_at = $2 WHERE id = $3", status, _now(), inbox_id
        )

    async def inbox_pending(self) -> list[InboxEntry]:
        """Received messages that were never handled, oldest first."""
        rows = await self._pool.fetch(
            "SELECT id, platform, chat_id, message_id, payload FROM inbox WHERE status = $1 ORDER BY id",
            INBOX_PENDING,
        )
        return [InboxEntry(*row) for row in rows]

    async def close(self) -> None:
        """Wait (bounded) for queries under way, then release every connection."""
        if self._pool.is_closing():
            return
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("PostgreSQL queries still running after %.0f s; closing anyway", CLOSE_TIMEOUT_S)
            self._pool.terminate()
