"""Discord: mentions, replies, DMs and threads through on_message; slash commands through a tree."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import discord
from discord import app_commands

from adapters.discord_pacing import ChannelGate
from adapters.discord_sink import ChannelSink, InteractionSink
from adapters.discord_translate import PLATFORM, role_ids, to_incoming
from bot.commands import COMMAND_DESCRIPTIONS
from bot.config import Settings
from bot.core import BotCore
from bot.errors import ShuttingDown
from bot.messages import ChatKind, IncomingMessage

logger = logging.getLogger(__name__)

# Slash commands are recorded under this prefix: they cannot be answered after a restart.
INTERACTION_PREFIX = "interaction-"

READY_TIMEOUT_S = 60.0
THREAD_NAME_LEN = 90


class DiscordAdapter:
    """Runs a discord.py client in the shared event loop and hands messages to the core."""

    name = "discord"

    def __init__(
        self, core: BotCore, settings: Settings, client_options: dict[str, Any] | None = None
    ) -> None:
        """Build the client and its slash commands.

        Args:
            client_options: extra keyword arguments for the discord.py client (tests pass a
                short ``guild_ready_timeout``).
        """
        assert settings.discord_bot_token is not None
        self._core = core
        self._settings = settings
        intents = discord.Intents.default()
        # Without the privileged intent Discord still sends the content of DMs and mentions.
        intents.message_content = settings.discord_message_content
        self.client = _make_client(settings, intents, client_options or {})
        self.client.on_message = self._on_message  # type: ignore[attr-defined]
        self._tree = app_commands.CommandTree(self.client)
        self._add_commands()
        self._gate = ChannelGate()
        self._runner: asyncio.Task[None] | None = None
        # New messages wait until those recorded before a restart are queued, to keep their order.
        self._replayed = asyncio.Event()

    async def start(self) -> None:
        """Log in, connect, wait for READY, sync slash commands."""
        assert self._settings.discord_bot_token is not None
        await self.client.login(self._settings.discord_bot_token.get_secret_value())
        self._runner = asyncio.create_task(self.client.connect(), name="discord gateway")
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait(
            {ready, self._runner}, timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        if ready not in done:
            ready.cancel()
            await self.stop()
            raise RuntimeError("Discord did not become ready: check DISCORD_BOT_TOKEN and the network")
        await self._sync_commands()
        replayed = await self._core.replay(PLATFORM, self._replay_sink)
        self._replayed.set()
        if replayed:
            logger.info("answering %d Discord messages received before the restart", len(replayed))
        logger.info("Discord bot %s ready in %d guilds", self.client.user, len(self.client.guilds))

    async def stop(self) -> None:
        """Disconnect; answers in flight belong to the core's shutdown."""
        await self.client.close()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _sync_commands(self) -> None:
        """Slash commands: to the listed guilds (instant, for development) or globally."""
        try:
            for guild_id in self._settings.discord_command_guild_ids:
                guild = discord.Object(guild_id)
                self._tree.copy_global_to(guild=guild)
                await self._tree.sync(guild=guild)
            if not self._settings.discord_command_guild_ids:
                await self._tree.sync()
        except discord.HTTPException as exc:  # the menu is a convenience; mentions still work
            logger.warning("slash command sync failed: %s", exc)

    def _add_commands(self) -> None:
        """/ask, /reset, /model, /system, /usage: each deferred at once, then run by the core."""

        @self._tree.command(name="ask", description="Ask the model")
        @app_commands.describe(prompt="Your question")
        async def ask(interaction: discord.Interaction, prompt: str) -> None:
            await self._on_command(interaction, prompt)

        @self._tree.command(name="reset", description=COMMAND_DESCRIPTIONS["reset"])
        async def reset(interaction: discord.Interaction) -> None:
            await self._on_command(interaction, "/reset")

        @self._tree.command(name="usage", description=COMMAND_DESCRIPTIONS["usage"])
        async def usage(interaction: discord.Interaction) -> None:
            await self._on_command(interaction, "/usage")

        @self._tree.command(name="model", description=COMMAND_DESCRIPTIONS["model"])
        @app_commands.describe(name="A model to switch to (leave empty to see the list)")
        async def model(interaction: discord.Interaction, name: str | None = None) -> None:
            await self._on_command(interaction, f"/model {name or ''}".strip())

        @self._tree.command(name="system", description=COMMAND_DESCRIPTIONS["system"])
        @app_commands.describe(text="New instructions, or 'default' (leave empty to see them)")
        async def system(interaction: discord.Interaction, text: str | None = None) -> None:
            await self._on_command(interaction, f"/system {text or ''}".strip())

    async def _on_message(self, message: discord.Message) -> None:
        """A gateway message: translate and hand to the core (which decides access)."""
        assert self.client.user is not None
        await self._replayed.wait()
        incoming = to_incoming(message, self.client.user)
        if incoming is None:
            return
        channel: discord.abc.Messageable = message.channel
        reply_to: discord.Message | None = message
        if self._wants_thread(incoming, message):
            thread = await message.create_thread(name=_thread_name(incoming.text))
            channel, reply_to = thread, None
            incoming = replace(incoming, thread_id=str(thread.id))
        sink = ChannelSink(channel, getattr(channel, "id", 0), self._gate, reply_to)
        await self._submit(incoming, sink)

    async def _on_command(self, interaction: discord.Interaction, text: str) -> None:
        """A slash command: acknowledge within Discord's 3 s first, then let the core answer."""
        await interaction.response.defer(thinking=True)
        incoming = _from_interaction(interaction, text)
        await self._submit(incoming, InteractionSink(interaction, self._gate))

    def _replay_sink(self, message: IncomingMessage) -> ChannelSink | None:
        """Where a message recorded before a restart is answered; None for a slash command."""
        if message.message_id.startswith(INTERACTION_PREFIX):
            return None  # its interaction token ended with the old process
        channel_id = int(message.thread_id or message.chat_id)
        # A partial messageable needs no cache: threads and DMs may not be cached yet.
        channel = self.client.get_partial_messageable(channel_id)
        return ChannelSink(
            channel, channel_id, self._gate, channel.get_partial_message(int(message.message_id))
        )

    async def _submit(self, incoming: IncomingMessage, sink: ChannelSink | InteractionSink) -> None:
        """Hand over to the core; while shutting down the message is dropped with a log line."""
        try:
            await self._core.submit(incoming, sink)
        except ShuttingDown:
            logger.warning("Discord message %s arrived during shutdown; not answered", incoming.message_id)

    def _wants_thread(self, incoming: IncomingMessage, message: discord.Message) -> bool:
        """Whether to open a thread for a new conversation started by a channel mention."""
        return (
            self._settings.discord_thread_per_conversation
            and self._core.accepts(incoming)
            and incoming.chat_kind is ChatKind.GROUP
            and incoming.thread_id is None
            and isinstance(message.channel, discord.TextChannel)
        )


def _make_client(settings: Settings, intents: discord.Intents, options: dict[str, Any]) -> discord.Client:
    """A plain client, or an AutoShardedClient running all shards or this worker's range."""
    if settings.discord_shard_ids:
        return discord.AutoShardedClient(
            intents=intents,
            shard_ids=settings.discord_shard_ids,
            shard_count=settings.discord_shard_count,
            **options,
        )
    if settings.discord_sharded:
        return discord.AutoShardedClient(intents=intents, **options)
    return discord.Client(intents=intents, **options)


def _from_interaction(interaction: discord.Interaction, text: str) -> IncomingMessage:
    """A slash command as the neutral message; it shares the context of the user's messages."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread):
        chat_id, thread_id = channel.parent_id, str(channel.id)
    else:
        chat_id, thread_id = interaction.channel_id or 0, None
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=str(chat_id),
        chat_kind=ChatKind.PRIVATE if interaction.guild_id is None else ChatKind.GROUP,
        user_id=str(interaction.user.id),
        user_name=interaction.user.display_name,
        message_id=f"{INTERACTION_PREFIX}{interaction.id}",
        text=text,
        addressed=True,
        thread_id=thread_id,
        language=str(interaction.locale),
        guild_id=str(interaction.guild_id) if interaction.guild_id is not None else None,
        role_ids=role_ids(interaction.user),
        raw=interaction,
    )


def _thread_name(text: str) -> str:
    """A thread title from the question's first words."""
    first_line = (text.strip().splitlines() or ["Conversation"])[0]
    return first_line[:THREAD_NAME_LEN] or "Conversation"
