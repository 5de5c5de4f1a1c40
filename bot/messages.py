"""The neutral message every adapter translates into, and the reply sink it provides."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class ChatKind(StrEnum):
    """Whether a chat is one-to-one with the bot or shared by several people."""

    PRIVATE = "private"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One platform message, as the core sees it; `raw` is for the adapter only.

    `guild_id` and `role_ids` (Discord) come from the platform's identity data, never from the
    text: the core's access rules decide admins and allow lists from them.
    """

    platform: str
    chat_id: str
    chat_kind: ChatKind
    user_id: str
    user_name: str
    message_id: str
    text: str
    addressed: bool
    thread_id: str | None = None
    reply_to_id: str | None = None
    reply_to_text: str | None = None
    language: str | None = None
    guild_id: str | None = None
    role_ids: tuple[str, ...] = ()
    raw: object = field(default=None, repr=False, compare=False)


# Fields that must hold text the store can encode (platform libraries do not check types).
_REQUIRED_TEXT = ("chat_id", "user_id", "user_name", "message_id", "text")
_OPTIONAL_TEXT = ("thread_id", "reply_to_id", "reply_to_text", "language", "guild_id")


def well_formed(message: IncomingMessage | None) -> IncomingMessage | None:
    """The message if every text field is a str the store can encode; else TypeError or ValueError.

    A translator calls this last: a numeric `language_code` or a lone surrogate ("\\ud800" in
    JSON) would otherwise fail deep in the core, and an update that fails is never confirmed.
    """
    if message is None:
        return None
    for name in (*_REQUIRED_TEXT, *_OPTIONAL_TEXT):
        value = getattr(message, name)
        if value is None and name in _OPTIONAL_TEXT:
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} is {type(value).__name__}, not str")
        value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    if not all(isinstance(role, str) for role in message.role_ids):
        raise TypeError("role_ids must be strings")
    return message


class ReplySink(Protocol):
    """Where the core's answer goes; each adapter renders it its own way."""

    @property
    def max_message_len(self) -> int:
        """Longest text one platform message may hold."""
        ...

    @property
    def can_stream(self) -> bool:
        """Whether partial answers may be shown and then edited."""
        ...

    @property
    def edit_interval_s(self) -> float:
        """Least time between two writes of a streamed answer (flood pacing)."""
        ...

    async def send(self, text: str) -> str:
        """Send a new message; return its id for later edits.

        Text ending in bot.streaming.TYPING_MARKER is still being written (a sink may show it
        as a draft); text without it is final.
        """
        ...

    async def edit(self, message_id: str, text: str) -> None:
        """Replace the text of a message sent earlier."""
        ...

    def typing(self) -> AbstractAsyncContextManager[None]:
        """Show 'typing…' while the model thinks."""
        ...
