"""Persistent state: conversations, messages, usage and the inbox."""

from storage.base import (
    Conversation,
    InboxEntry,
    NewMessage,
    Store,
    StoredMessage,
    TurnRecord,
    UsageTotals,
)

__all__ = [
    "Conversation",
    "InboxEntry",
    "NewMessage",
    "Store",
    "StoredMessage",
    "TurnRecord",
    "UsageTotals",
]
