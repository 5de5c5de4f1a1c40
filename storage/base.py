"""The store interface the core depends on, and the records it exchanges."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
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
    persona: str | None = None
    # A model-written summary of the turns start_seq <= seq < summary_seq, leading the context.
    summary: str | None = None
    summary_seq: int = 0
    updated_at: str = ""

    @property
    def live_summary(self) -> str | None:
        """The summary, if it covers turns of the current context (a reset voids it)."""
        return self.summary if self.summary and self.summary_seq > self.start_seq else None


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
    # Every inbox entry the turn answers: several when a burst of messages was merged.
    inbox_ids: tuple[int, ...] = ()
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
class UserPolicy:
    """An admin's controls for one user: a ban and own token limits (None: the default)."""

    user_key: str
    banned: bool = False
    daily_tokens: int | None = None
    monthly_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class DayStats:
    """Everyone's use on one day."""

    users: int = 0
    requests: int = 0
    tokens: int = 0


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

    async def set_persona(self, conversation_id: int, persona: str | None) -> None:
        """Pick a persona (clearing any free-text system prompt), or clear it with None."""
        ...

    async def reset(self, conversation_id: int) -> None:
        """Start fresh: move the start pointer past every stored turn, deleting nothing."""
        ...

    async def set_summary(self, conversation_id: int, summary: str, summary_seq: int) -> None:
        """Store the summary of the turns before summary_seq."""
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

    async def day_stats(self, day: str) -> DayStats:
        """Users, answered messages and tokens on one day (YYYY-MM-DD)."""
        ...

    async def user_policies(self) -> list[UserPolicy]:
        """Every stored user policy (bans and own limits)."""
        ...

    async def save_user_policy(self, policy: UserPolicy) -> None:
        """Create or replace a user's policy."""
        ...

    async def inbox_add(
        self, platform: str, chat_id: str, message_id: str, payload: str, conversation_key: str = ""
    ) -> int | None:
        """Record a received message; None when it was received before."""
        ...

    def conversation_turn(self, key: str, inbox_id: int) -> AbstractAsyncContextManager[None]:
        """Hold a conversation while one of its messages is answered, across every worker.

        Entered only once no other worker holds an earlier unanswered message of it, so answers
        follow arrival order even when the messages reached different workers.
        """
        ...

    async def inbox_claim(self, platform: str) -> list[InboxEntry]:
        """Take over the platform's unanswered entries of this worker's earlier life and of
        workers gone for good, oldest first (several workers never claim one entry twice)."""
        ...

    async def inbox_finish(self, inbox_id: int, status: str) -> None:
        """Mark an inbox entry handled (answered, ignored or failed)."""
        ...

    async def inbox_pending(self) -> list[InboxEntry]:
        """Received messages that were never handled, oldest first."""
        ...

    async def ping(self) -> None:
        """Raise if the database cannot be queried now (readiness checks)."""
        ...

    async def applied_migrations(self) -> list[str]:
        """Names of the schema migrations this database has, in order."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release the database."""
        ...
