"""Rendering a streamed answer through a reply sink: edits on a timer, rollover at the limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from bot.messages import ReplySink
from bot.text import split_for_limit

logger = logging.getLogger(__name__)

# Shown at the end of a message that is still being written.
TYPING_MARKER = " ▌"
# The first partial text waits this long after the first delta: an answer that completes
# sooner goes out as one final message (one write instead of two). Short, because with many
# answers starting at once the platform requests queue behind it, and the user should still
# see text within half a second of the model's first token.
FIRST_RENDER_DELAY_S = 0.125


class StreamWriter:
    """Accumulates deltas and keeps the sink's messages in step with them."""

    def __init__(self, sink: ReplySink, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._clock = clock
        self._text = ""
        self._sent: list[tuple[str, str]] = []  # (message id, text shown)
        self._last_write = float("-inf")
        self._first_delta_at: float | None = None
        # After a failed preview write, only the final text is attempted (the sink retried already).
        self._previews_off = False

    @property
    def text(self) -> str:
        """Everything received so far."""
        return self._text

    def clock(self) -> float:
        """The writer's clock (monotonic seconds), for timing against first_delta_at."""
        return self._clock()

    @property
    def first_delta_at(self) -> float | None:
        """When the first delta arrived (on the writer's clock), if one has."""
        return self._first_delta_at

    @property
    def message_ids(self) -> list[str]:
        """Ids of the messages written so far, in order."""
        return [message_id for message_id, _ in self._sent]

    async def feed(self, delta: str) -> None:
        """Take one delta; write to the sink when streaming and the interval has passed."""
        self._text += delta
        if self._first_delta_at is None:
            self._first_delta_at = self._clock()
        if not self._sink.can_stream or self._previews_off:
            return
        now = self._clock()
        if (
            now - self._first_delta_at >= FIRST_RENDER_DELAY_S
            and now - self._last_write >= self._sink.edit_interval_s
        ):
            try:
                await self._render(final=False)
            except Exception as exc:  # a lost preview must not lose the answer: finish() tries again
                logger.warning(
                    "preview write failed (%s: %s); sending only the final text", type(exc).__name__, exc
                )
                self._previews_off = True

    async def finish(self) -> None:
        """Write the complete text, without the typing marker."""
        await self._render(final=True)

    async def _render(self, final: bool) -> None:
        """Bring every sink message up to date with the text received."""
        if not self._text.strip():
            return
        # The same room whether final or not, so the last render never moves earlier cuts.
        parts = split_for_limit(self._text, self._sink.max_message_len - len(TYPING_MARKER))
        if not final:
            parts[-1] += TYPING_MARKER
        for index, part in enumerate(parts):
            if index < len(self._sent):
                message_id, shown = self._sent[index]
                if shown != part:
                    await self._sink.edit(message_id, part)
                    self._sent[index] = (message_id, part)
            else:
                self._sent.append((await self._sink.send(part), part))
        self._last_write = self._clock()
