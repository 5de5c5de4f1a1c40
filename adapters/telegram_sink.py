"""Rendering one answer into a Telegram chat: drafts in private, edits in groups, always paced."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from datetime import timedelta
from typing import TypeVar

from telegram import Bot, Message, MessageEntity, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut
from telegram.warnings import PTBDeprecationWarning

from adapters.telegram_format import TELEGRAM_MAX_UTF16, Chunk, plain, render, utf16_len
from adapters.telegram_pacing import GROUP_INTERVAL_S, PRIVATE_INTERVAL_S, FloodGate
from adapters.typing_indicator import delayed_typing
from bot.streaming import TYPING_MARKER

logger = logging.getLogger(__name__)

# Raw Markdown per message; formatting usually shortens it, and render() splits what still exceeds.
TELEGRAM_MESSAGE_LEN = 4000
MAX_ATTEMPTS = 5
NETWORK_BACKOFF_S = 1.0
# Telegram shows "typing…" for about 5 s per action.
TYPING_REFRESH_S = 4.5
TYPING_DELAY_S = 0.4
NOT_MODIFIED = "message is not modified"

T = TypeVar("T")


class TelegramSink:
    """ReplySink for one Telegram chat (and topic).

    Text that ends in the streaming marker is still being written: in private chats it is
    shown as a draft (sendMessageDraft), elsewhere as an edited message; text without it is final.
    """

    max_message_len = TELEGRAM_MESSAGE_LEN
    can_stream = True

    def __init__(
        self,
        bot: Bot,
        gate: FloodGate,
        chat_id: int,
        *,
        private: bool,
        thread_id: int | None = None,
        reply_to: int | None = None,
    ) -> None:
        self._bot = bot
        self._gate = gate
        self._chat_id = chat_id
        self._private = private
        self._thread_id = thread_id
        self._reply_to = reply_to
        self._draft_id = random.randint(1, 2**31 - 1)
        self._ids = itertools.count(1)
        # Each logical message may span several Telegram messages when formatting lengthens it.
        self._messages: dict[str, list[int]] = {}
        self._shown: dict[int, Chunk] = {}
        self._visible = asyncio.Event()

    @property
    def edit_interval_s(self) -> float:
        """At most one write per interval per chat (Telegram's flood limits)."""
        return PRIVATE_INTERVAL_S if self._private else GROUP_INTERVAL_S

    async def send(self, text: str) -> str:
        """Start a message (a draft while in progress in a private chat)."""
        logical = str(next(self._ids))
        self._messages[logical] = []
        await self.edit(logical, text)
        return logical

    async def edit(self, message_id: str, text: str) -> None:
        """Bring a logical message up to `text`."""
        in_progress = text.endswith(TYPING_MARKER)
        body = text.removesuffix(TYPING_MARKER)
        sent = self._messages[message_id]
        if in_progress:
            # A preview shows the first chunk only, with room for the marker; the final text will
            # be delivered whole.
            first, entities = render(body, TELEGRAM_MAX_UTF16 - utf16_len(TYPING_MARKER))[0]
            chunks = [(first + TYPING_MARKER, entities)]
            if self._private and not sent:
                await self._draft(chunks[0])
                return
        else:
            chunks = render(body)
        for index, chunk in enumerate(chunks):
            if index < len(sent):
                await self._edit(sent[index], chunk)
            else:
                sent.append(await self._post(chunk))

    def typing(self) -> AbstractAsyncContextManager[None]:
        """Send 'typing' until the first text is visible, from TYPING_DELAY_S on.

        Not at once: a fast answer is visible before TYPING_DELAY_S, and a typing action it
        would not need costs a request and a share of the flood budget.
        """
        return delayed_typing(self._visible, self._keep_typing, TYPING_DELAY_S)

    async def _keep_typing(self) -> None:
        """Refresh the typing action while nothing is visible yet."""
        while not self._visible.is_set():
            try:
                await self._bot.send_chat_action(
                    self._chat_id, ChatAction.TYPING, message_thread_id=self._thread_id
                )
            except Exception as exc:  # cosmetic: never fail an answer over it
                logger.debug("typing action failed in chat %s: %s", self._chat_id, exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._visible.wait(), TYPING_REFRESH_S)

    async def _draft(self, chunk: Chunk) -> None:
        """Show in-progress text as a native draft (private chats, Bot API 9.3)."""
        text, entities = chunk
        await self._call(
            lambda: self._bot.send_message_draft(
                self._chat_id, self._draft_id, text, message_thread_id=self._thread_id, entities=entities
            ),
            draft=True,
        )
        self._visible.set()

    async def _post(self, chunk: Chunk) -> int:
        """Send a new message; the first of the answer replies to the question."""
        reply = ReplyParameters(self._reply_to, allow_sending_without_reply=True) if self._reply_to else None
        self._reply_to = None

        async def send(text: str, entities: tuple[MessageEntity, ...]) -> Message:
            return await self._bot.send_message(
                self._chat_id,
                text,
                entities=entities,
                message_thread_id=self._thread_id,
                reply_parameters=reply,
            )

        message = await self._with_plain_fallback(chunk, send)
        self._shown[message.message_id] = chunk
        self._visible.set()
        return message.message_id

    async def _edit(self, telegram_id: int, chunk: Chunk) -> None:
        """Edit a sent message, unless it already shows this text."""
        if self._shown.get(telegram_id) == chunk:
            return

        async def edit(text: str, entities: tuple[MessageEntity, ...]) -> object:
            return await self._bot.edit_message_text(
                text, chat_id=self._chat_id, message_id=telegram_id, entities=entities
            )

        try:
            await self._with_plain_fallback(chunk, edit)
        except BadRequest as exc:
            if NOT_MODIFIED not in str(exc).lower():
                raise
        self._shown[telegram_id] = chunk

    async def _with_plain_fallback(
        self, chunk: Chunk, write: Callable[[str, tuple[MessageEntity, ...]], Awaitable[T]]
    ) -> T:
        """Write formatted; if Telegram rejects the entities, write the same text plain."""
        text, entities = chunk
        try:
            return await self._call(lambda: write(text, entities))
        except BadRequest as exc:
            if not entities or "entities" not in str(exc).lower():
                raise
            logger.warning("Telegram rejected entities in chat %s; sending plain text", self._chat_id)
            return await self._call(lambda: write(plain(text)[0][0], ()))

    async def _call(self, request: Callable[[], Awaitable[T]], draft: bool = False) -> T:
        """One paced write, retried on flood control and network errors within bounds."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # An answer's first text gets the global slots kept for first messages.
            first = not self._visible.is_set()
            try:
                async with self._gate.slot(self._chat_id, group=not self._private, first=first, draft=draft):
                    return await request()
            except RetryAfter as exc:
                wait = retry_seconds(exc)
                logger.warning("flood control in chat %s: retrying in %.0f s", self._chat_id, wait)
                self._gate.penalize(self._chat_id, wait)
            except (TimedOut, NetworkError) as exc:
                if isinstance(exc, BadRequest) or attempt == MAX_ATTEMPTS:
                    raise
                logger.warning("Telegram write failed in chat %s (%s); retrying", self._chat_id, exc)
                await asyncio.sleep(NETWORK_BACKOFF_S * attempt)
        raise TimedOut(f"gave up after {MAX_ATTEMPTS} attempts in chat {self._chat_id}")


def retry_seconds(exc: RetryAfter) -> float:
    """RetryAfter's value as seconds (PTB gives an int or a timedelta)."""
    # PTB 22 warns when the value is read as an int (PTB_TIMEDELTA unset); the value is all we need.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        retry_after = exc.retry_after
    return retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)
