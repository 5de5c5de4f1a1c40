"""The store interface the core depends on, and the records it exchanges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation's pointers and per-conversation choices."""

    id: int
    key: str
    start_seq: int
    next_seq: int
    system_prompt: str | None
    model: str | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored turn of a conversation."""

    seq: int
    role: str
    content: str
    tokens: int


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A turn to append; failed and partial turns are kept but never sent to the model."""

    role: str
    content: str
    tokens: int
    status: str = STATUS_OK


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """Everything one answered message writes, committed together."""

    conversation_id: int
    messages: tuple[NewMessage, ...]
    user_key: str
    user_name: str
    day: str
    prompt_tokens: int
    completion_tokens: int
    inbox_id: int | None = None
    inbox_status: str = "answered"


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Tokens and requests summed over a period."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A received platform message that is not answered yet."""

    id: int
    platform: str
    chat_id: str
    message_id: str
    payload: str


class Store(Protocol):
    """Async persistence used by the core; SQLite now, PostgreSQL later."""

    async def conversation(self, key: str) -> Conversation:
        """Fetch a conversation by key, creating it on first use."""
        ...

    async def set_system_prompt(self, conversation_id: int, text: str | None) -> None:
        """Set (or clear with None) a conversation's system prompt."""
        ...

    async def set_model(self, conversation_id: int, model: str | None) -> None:
        """Set (or clear with None) a conversation's model."""
        ...

    async def reset(self, conversation_id: int) -> None:
        """Start fresh: move the start pointer past every stored turn, deleting nothing."""
        ...

    async def history(
        self, conversation_id: int, start_seq: int, before_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Usable turns with start_seq <= seq < before_seq, newest first."""
        ...

    async def move_conversations(self, old_prefix: str, new_prefix: str) -> int:
        """Re-key every conversation under `old_prefix` (a chat that changed id); return how many."""
        ...

    async def record_turn(self, turn: TurnRecord) -> None:
        """Append a turn's messages, count its usage and close its inbox entry, atomically."""
        ...

    async def usage(self, user_key: str, since_day: str) -> UsageTotals:
        """A user's usage from since_day (YYYY-MM-DD) on."""
        ...

    async def inbox_add(self, platform: str, chat_id: str, message_id: str, payload: str) -> int | None:
        """Record a received message; None when it was received before."""
        ...

    async def inbox_finish(self, inbox_id: int, status: str) -> None:
        """Mark an inbox entry handled (answered, ignored or failed)."""
        ...

    async def inbox_pending(self) -> list[InboxEntry]:
        """Received messages that were never handled, oldest first."""
        ...

    async def applied_migrations(self) -> list[str]:
        """Names of the schema migrations this database has, in order."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release the database."""
        ...
