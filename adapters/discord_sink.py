"""Rendering one answer into a Discord channel or an interaction, paced per channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

import discord

from adapters.discord_pacing import WINDOW_S, WRITES_PER_WINDOW, ChannelGate
from adapters.typing_indicator import delayed_typing

logger = logging.getLogger(__name__)

DISCORD_MAX_MESSAGE_LEN = 2000
# Typing shows for about 10 s; refreshing sooner only spends rate limit.
TYPING_REFRESH_S = 9.0
TYPING_DELAY_S = 0.4
NO_PINGS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=False)


class ChannelSink:
    """ReplySink for a channel, thread or DM: the first message replies to the question."""

    max_message_len = DISCORD_MAX_MESSAGE_LEN
    can_stream = True
    # Spread the channel's writes evenly over its window.
    edit_interval_s = WINDOW_S / WRITES_PER_WINDOW

    def __init__(
        self,
        channel: discord.abc.Messageable,
        channel_id: int,
        gate: ChannelGate,
        reply_to: discord.Message | discord.PartialMessage | None,
    ) -> None:
        self._channel = channel
        self._channel_id = channel_id
        self._gate = gate
        self._reply_to = reply_to
        self._messages: dict[str, discord.Message] = {}
        self._visible = asyncio.Event()

    async def send(self, text: str) -> str:
        """Post a message; only the first of an answer is a reply (without pinging anyone)."""
        question, self._reply_to = self._reply_to, None
        # A question deleted meanwhile still gets its answer, as a plain message.
        reference = question.to_reference(fail_if_not_exists=False) if question is not None else None
        async with self._gate.write(self._channel_id):
            message = await self._channel.send(
                text, reference=reference, mention_author=False, allowed_mentions=NO_PINGS
            )
        self._visible.set()
        self._messages[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        """Edit a message sent earlier."""
        async with self._gate.write(self._channel_id):
            edited = await self._messages[message_id].edit(content=text, allowed_mentions=NO_PINGS)
        self._messages[message_id] = edited

    def typing(self) -> AbstractAsyncContextManager[None]:
        """Show typing until the first text is visible (never re-sent while text streams)."""
        return delayed_typing(self._visible, self._keep_typing, TYPING_DELAY_S)

    async def _keep_typing(self) -> None:
        """Trigger typing, and again each time it expires while nothing is visible yet."""
        while not self._visible.is_set():
            try:
                async with self._gate.typing() as free:
                    if free:  # skipped when answers need the bot-wide budget
                        await self._channel.typing()
            except discord.HTTPException as exc:  # cosmetic: never fail an answer over it
                logger.debug("typing failed in channel %s: %s", self._channel_id, exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._visible.wait(), TYPING_REFRESH_S)


class InteractionSink:
    """ReplySink for a slash command: the deferred response is the first message, then followups."""

    max_message_len = DISCORD_MAX_MESSAGE_LEN
    can_stream = True
    edit_interval_s = WINDOW_S / WRITES_PER_WINDOW
    # Each interaction waits for its own response: never merged into a burst (bot.bursts).
    mergeable = False

    def __init__(self, interaction: discord.Interaction, gate: ChannelGate) -> None:
        self._interaction = interaction
        self._gate = gate
        # Interaction webhooks have buckets of their own, keyed here by the interaction.
        self._key = interaction.id
        self._original_used = False

    async def send(self, text: str) -> str:
        """Fill the deferred 'thinking…' response first, then send followups."""
        await self._gate.wait(self._key)
        if not self._original_used:
            self._original_used = True
            await self._interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
            return "@original"
        message = await self._interaction.followup.send(text, wait=True, allowed_mentions=NO_PINGS)
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        """Edit the original response or a followup."""
        await self._gate.wait(self._key)
        if message_id == "@original":
            await self._interaction.edit_original_response(content=text, allowed_mentions=NO_PINGS)
        else:
            await self._interaction.followup.edit_message(
                int(message_id), content=text, allowed_mentions=NO_PINGS
            )

    @asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        """The deferred response already shows 'thinking…'."""
        yield
