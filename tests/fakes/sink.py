"""A reply sink that records what the core sent and enforces the platform's rules like Telegram does.

Usage::

    sink = RecordingSink(max_message_len=300, edit_interval_s=1.0)
    await core_or_writer_under_test(sink)
    assert sink.final_texts == ["Hello"]

Like a real platform it rejects what a platform rejects, so a test fails loudly instead of recording
nonsense: an empty or whitespace-only text, a text over ``max_message_len``, an edit of an unknown
message id, and an edit that changes nothing (Telegram's "message is not modified").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# ("send", id, text), ("edit", id, text), ("typing_start",) or ("typing_stop",)
Event = tuple[str, ...]


class SinkRejected(Exception):
    """What the fake platform answers to a request a real one would refuse."""


class RecordingSink:
    """ReplySink that keeps every send, edit and typing start/stop in order."""

    def __init__(
        self,
        max_message_len: int = 4096,
        can_stream: bool = True,
        edit_interval_s: float = 0.0,
        fail_on_send: Exception | None = None,
        fail_on_edit: Exception | None = None,
    ) -> None:
        self._max_message_len = max_message_len
        self._can_stream = can_stream
        self._edit_interval_s = edit_interval_s
        self.fail_on_send = fail_on_send
        self.fail_on_edit = fail_on_edit
        self.sent: list[str] = []
        self.edits: list[tuple[str, str]] = []
        self.events: list[Event] = []
        self.messages: dict[str, str] = {}
        self.typing_active = False

    @property
    def max_message_len(self) -> int:
        """Longest text one message may hold."""
        return self._max_message_len

    @property
    def can_stream(self) -> bool:
        """Whether partial answers may be shown and then edited."""
        return self._can_stream

    @property
    def edit_interval_s(self) -> float:
        """Least time between two writes of a streamed answer."""
        return self._edit_interval_s

    @property
    def final_texts(self) -> list[str]:
        """Current text of every message, in the order they were sent."""
        return list(self.messages.values())

    def _check_text(self, text: str) -> None:
        """Refuse what a platform would refuse for any message text."""
        if not text.strip():
            raise SinkRejected("message text is empty")
        if len(text) > self._max_message_len:
            raise SinkRejected(f"message is too long ({len(text)} > {self._max_message_len})")

    async def send(self, text: str) -> str:
        """Record a new message; return its id ("1", "2", ...)."""
        if self.fail_on_send is not None:
            raise self.fail_on_send
        self._check_text(text)
        message_id = str(len(self.messages) + 1)
        self.messages[message_id] = text
        self.sent.append(text)
        self.events.append(("send", message_id, text))
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        """Record a new text for a message sent earlier."""
        if self.fail_on_edit is not None:
            raise self.fail_on_edit
        if message_id not in self.messages:
            raise SinkRejected(f"message to edit not found: {message_id}")
        self._check_text(text)
        if self.messages[message_id] == text:
            raise SinkRejected("message is not modified")
        self.messages[message_id] = text
        self.edits.append((message_id, text))
        self.events.append(("edit", message_id, text))

    @asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        """Record 'typing…' starting and stopping around the block."""
        self.typing_active = True
        self.events.append(("typing_start",))
        try:
            yield
        finally:
            self.typing_active = False
            self.events.append(("typing_stop",))
