"""Persistent state: conversations, messages, usage, user policies and the inbox."""

from storage.base import (
    Conversation,
    DayStats,
    InboxEntry,
    NewMessage,
    Store,
    StoredMessage,
    TurnRecord,
    UsageTotals,
    UserPolicy,
)

__all__ = [
    "Conversation",
    "DayStats",
    "InboxEntry",
    "NewMessage",
    "Store",
    "StoredMessage",
    "TurnRecord",
    "UsageTotals",
    "UserPolicy",
]
