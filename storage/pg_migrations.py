"""The PostgreSQL schema: the same ordered, named migrations as SQLite's, in PostgreSQL's dialect."""

from __future__ import annotations

# Names match storage.migrations.MIGRATIONS one for one, so both databases report the same
# applied_migrations(). Times are timestamptz; the store hands them out as ISO 8601 strings.
PG_MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_initial",
        (
            """
                CREATE TABLE users (
                    user_key TEXT PRIMARY KEY,
                    display_name TEXT NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL,
                    last_seen_at TIMESTAMPTZ NOT NULL
                )
            """,
            """
                CREATE TABLE conversations (
                    id BIGSERIAL PRIMARY KEY,
                    key TEXT NOT NULL UNIQUE,
                    start_seq INTEGER NOT NULL DEFAULT 0,
                    next_seq INTEGER NOT NULL DEFAULT 0,
                    system_prompt TEXT,
                    model TEXT,
                    created_at TIMESTAMPTZ NOT NULL,
                    updated_at TIMESTAMPTZ NOT NULL
                )
            """,
            """
                CREATE TABLE messages (
                    conversation_id BIGINT NOT NULL REFERENCES conversations(id),
                    seq INTEGER NOT NULL,
                    role TEXT NOT NULL,
                    content TEXT NOT NULL,
                    tokens INTEGER NOT NULL,
                    status TEXT NOT NULL,
                    created_at TIMESTAMPTZ NOT NULL,
                    PRIMARY KEY (conversation_id, seq)
                )
            """,
            """
                CREATE TABLE usage (
                    user_key TEXT NOT NULL,
                    day TEXT NOT NULL,
                    prompt_tokens BIGINT NOT NULL DEFAULT 0,
                    completion_tokens BIGINT NOT NULL DEFAULT 0,
                    requests BIGINT NOT NULL DEFAULT 0,
                    PRIMARY KEY (user_key, day)
                )
            """,
            """
                CREATE TABLE inbox (
                    id BIGSERIAL PRIMARY KEY,
                    platform TEXT NOT NULL,
                    chat_id TEXT NOT NULL,
                    message_id TEXT NOT NULL,
                    payload TEXT NOT NULL,
                    status TEXT NOT NULL DEFAULT 'pending',
                    received_at TIMESTAMPTZ NOT NULL,
                    finished_at TIMESTAMPTZ,
                    UNIQUE (platform, chat_id, message_id)
                )
            """,
            """
                CREATE INDEX inbox_pending ON inbox (id) WHERE status = 'pending'
            """,
        ),
    ),
    (
        "0002_conversation_management",
        (
            "ALTER TABLE conversations ADD COLUMN persona TEXT",
            "ALTER TABLE conversations ADD COLUMN summary TEXT",
            "ALTER TABLE conversations ADD COLUMN summary_seq INTEGER NOT NULL DEFAULT 0",
            """
                CREATE TABLE user_policies (
                    user_key TEXT PRIMARY KEY,
                    banned BOOLEAN NOT NULL DEFAULT FALSE,
                    daily_tokens BIGINT,
                    monthly_tokens BIGINT,
                    updated_at TIMESTAMPTZ NOT NULL
                )
            """,
            "CREATE INDEX usage_day ON usage (day)",
        ),
    ),
    (
        "0003_workers",
        (
            # Which conversation an entry belongs to and which worker received it, so several
            # workers on one database can keep each conversation in order.
            "ALTER TABLE inbox ADD COLUMN conversation_key TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE inbox ADD COLUMN worker TEXT NOT NULL DEFAULT ''",
            "CREATE INDEX inbox_pending_by_conversation ON inbox (conversation_key, id) "
            "WHERE status = 'pending'",
            "ALTER TABLE conversations ADD COLUMN lock_owner TEXT",
            "ALTER TABLE conversations ADD COLUMN lock_until TIMESTAMPTZ",
        ),
    ),
)
