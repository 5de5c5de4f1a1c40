"""Ordered schema migrations; the names of applied ones are recorded in the database."""

from __future__ import annotations

# Each migration is a name and its statements, run in one transaction. Statements are listed
# one by one (not split on ";") so a future trigger or a string with a semicolon stays intact.
MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_initial",
        (
            """
                CREATE TABLE users (
                    user_key TEXT PRIMARY KEY,
                    display_name TEXT NOT NULL,
                    created_at TEXT NOT NULL,
                    last_seen_at TEXT NOT NULL
                )
            """,
            """
                CREATE TABLE conversations (
                    id INTEGER PRIMARY KEY,
                    key TEXT NOT NULL UNIQUE,
                    start_seq INTEGER NOT NULL DEFAULT 0,
                    next_seq INTEGER NOT NULL DEFAULT 0,
                    system_prompt TEXT,
                    model TEXT,
                    created_at TEXT NOT NULL,
                    updated_at TEXT NOT NULL
                )
            """,
            """
                CREATE TABLE messages (
                    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
                    seq INTEGER NOT NULL,
                    role TEXT NOT NULL,
                    content TEXT NOT NULL,
                    tokens INTEGER NOT NULL,
                    status TEXT NOT NULL,
                    created_at TEXT NOT NULL,
                    PRIMARY KEY (conversation_id, seq)
                ) WITHOUT ROWID
            """,
            """
                CREATE TABLE usage (
                    user_key TEXT NOT NULL,
                    day TEXT NOT NULL,
                    prompt_tokens INTEGER NOT NULL DEFAULT 0,
                    completion_tokens INTEGER NOT NULL DEFAULT 0,
                    requests INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (user_key, day)
                ) WITHOUT ROWID
            """,
            """
                CREATE TABLE inbox (
                    id INTEGER PRIMARY KEY,
                    platform TEXT NOT NULL,
                    chat_id TEXT NOT NULL,
                    message_id TEXT NOT NULL,
                    payload TEXT NOT NULL,
                    status TEXT NOT NULL DEFAULT 'pending',
                    received_at TEXT NOT NULL,
                    finished_at TEXT,
                    UNIQUE (platform, chat_id, message_id)
                )
            """,
            """
                CREATE INDEX inbox_pending ON inbox (status) WHERE status = 'pending'
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
                    banned INTEGER NOT NULL DEFAULT 0,
                    daily_tokens INTEGER,
                    monthly_tokens INTEGER,
                    updated_at TEXT NOT NULL
                ) WITHOUT ROWID
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
            "ALTER TABLE conversations ADD COLUMN lock_until TEXT",
        ),
    ),
)
