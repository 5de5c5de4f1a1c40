"""to_incoming on every MESSAGE_CREATE sample, parsed by discord.py's own state from a fake gateway."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from adapters.discord_translate import PLATFORM, to_incoming
from bot.messages import ChatKind, IncomingMessage
from tests.fakes.discord_server import (
    ALICE_DM_ID,
    ALICE_ID,
    BOB_ID,
    BOT_ID,
    GENERAL_ID,
    THREAD_ID,
    FakeDiscord,
    iter_sample_frames,
    load_frame,
)

READY_TIMEOUT_S = 5.0
EVENT_TIMEOUT_S = 3.0
MESSAGE_SAMPLES = sorted(name for name, frame in iter_sample_frames() if frame["t"] == "MESSAGE_CREATE")


@dataclass(frozen=True)
class Expected:
    """What to_incoming must make of one sample."""

    chat_kind: ChatKind
    chat_id: int
    user_id: int
    text: str
    addressed: bool
    thread_id: int | None = None
    reply_to_text: str | None = None


EXPECTED: dict[str, Expected | None] = {
    "guild_mention_user": Expected(
        ChatKind.GROUP, GENERAL_ID, ALICE_ID, "what's the capital of Australia?", addressed=True
    ),
    "guild_mention_managed_role": Expected(
        ChatKind.GROUP, GENERAL_ID, BOB_ID, "how do I reset my password on the wiki?", addressed=True
    ),
    "guild_no_mention": Expected(ChatKind.GROUP, GENERAL_ID, BOB_ID, "lunch at 12? 🍜", addressed=False),
    "dm_message": Expected(
        ChatKind.PRIVATE,
        ALICE_DM_ID,
        ALICE_ID,
        "hey, can you help me write a haiku about autumn?",
        addressed=True,
    ),
    "guild_public_thread_mention": Expected(
        ChatKind.GROUP,
        GENERAL_ID,
        ALICE_ID,
        "can you summarize this thread so far?",
        addressed=True,
        thread_id=THREAD_ID,
    ),
    "guild_reply_to_bot": Expected(
        ChatKind.GROUP, GENERAL_ID, ALICE_ID, "And the capital of New Zealand?", addressed=True
    ),
    "guild_reply_to_other_user_with_mention": Expected(
        ChatKind.GROUP,
        GENERAL_ID,
        ALICE_ID,
        "is this true?",
        addressed=True,
        reply_to_text="I read that goldfish only have a 3-second memory",
    ),
    "guild_other_bot_mentions_us": None,
    "guild_own_message_echo": None,
    "guild_system_member_join": None,
    "guild_attachment_only_mention": Expected(ChatKind.GROUP, GENERAL_ID, BOB_ID, "", addressed=True),
    "guild_everyone_mention": Expected(
        ChatKind.GROUP,
        GENERAL_ID,
        ALICE_ID,
        "@everyone maintenance tonight at 22:00 UTC, the bot will be offline ~10 min",
        addressed=False,
    ),
}


@dataclass
class Parser:
    """A real client connected to the fake: turns a sample frame into a discord.Message."""

    fake: FakeDiscord
    client: discord.Client
    inbox: asyncio.Queue[discord.Message]

    @property
    def me(self) -> discord.ClientUser:
        """The bot's own user, as on_message handlers see it."""
        assert self.client.user is not None
        return self.client.user

    async def parse(self, name: str) -> discord.Message:
        """Dispatch one sample and return the message the client built from it."""
        await self.fake.dispatch_file(name)
        return await asyncio.wait_for(self.inbox.get(), EVENT_TIMEOUT_S)


async def start_parser(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch, intents: discord.Intents
) -> tuple[Parser, asyncio.Task[None]]:
    """Log a client in against the fake and wait for READY."""
    fake.patch_discord(monkeypatch)
    client = discord.Client(intents=intents, guild_ready_timeout=0.05)
    inbox: asyncio.Queue[discord.Message] = asyncio.Queue()

    async def on_message(message: discord.Message) -> None:
        inbox.put_nowait(message)

    client.event(on_message)
    await client.login(fake.token)
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await asyncio.wait_for(client.wait_until_ready(), READY_TIMEOUT_S)
    except BaseException:
        await client.close()
        await task
        raise
    return Parser(fake, client, inbox), task


@pytest.fixture(params=["message_content", "default"])
async def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Parser]:
    """A parser with the privileged content intent (content always present) or without it (the default)."""
    intents = discord.Intents.default()
    intents.message_content = request.param == "message_content"
    async with FakeDiscord(rate_limits=None) as fake:
        started, task = await start_parser(fake, monkeypatch, intents)
        try:
            yield started
        finally:
            await started.client.close()
            await task


def hidden_without_intent(name: str, parser: Parser) -> bool:
    """Whether Discord blanks this sample's content for a bot without the content intent."""
    if parser.client.intents.message_content:
        return False
    data: dict[str, Any] = load_frame(name)["d"]
    mentioned = any(int(m["id"]) == BOT_ID for m in data.get("mentions", ()))
    return bool(data.get("guild_id")) and not mentioned and not data.get("mention_roles")


def test_every_message_sample_has_an_expectation() -> None:
    assert sorted(EXPECTED) == MESSAGE_SAMPLES


@pytest.mark.parametrize("name", MESSAGE_SAMPLES)
async def test_sample(name: str, parser: Parser, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.discord_translate")
    message = await parser.parse(name)
    incoming = to_incoming(message, parser.me)
    expected = EXPECTED[name]
    if expected is None:
        assert incoming is None
        assert any(f"message {message.id} ignored" in r.getMessage() for r in caplog.records)
        return
    assert incoming is not None
    text = "" if hidden_without_intent(name, parser) else expected.text
    assert incoming == IncomingMessage(
        platform=PLATFORM,
        chat_id=str(expected.chat_id),
        chat_kind=expected.chat_kind,
        user_id=str(expected.user_id),
        user_name=message.author.display_name,
        message_id=load_frame(name)["d"]["id"],
        text=text,
        addressed=expected.addressed,
        thread_id=str(expected.thread_id) if expected.thread_id else None,
        reply_to_id=incoming.reply_to_id,
        reply_to_text=expected.reply_to_text,
        # Identity data for the core's access rules comes from the guild and the member.
        language=str(message.guild.preferred_locale) if message.guild else None,
        guild_id=str(message.guild.id) if message.guild else None,
        role_ids=tuple(str(role.id) for role in getattr(message.author, "roles", ())),
    )
    assert incoming.raw is message


async def test_reply_ids_point_at_the_replied_message(parser: Parser) -> None:
    for name in ("guild_reply_to_bot", "guild_reply_to_other_user_with_mention"):
        incoming = to_incoming(await parser.parse(name), parser.me)
        assert incoming is not None
        assert incoming.reply_to_id == load_frame(name)["d"]["message_reference"]["message_id"]
    plain = to_incoming(await parser.parse("guild_mention_user"), parser.me)
    assert plain is not None
    assert plain.reply_to_id is None


async def test_everyone_is_not_a_mention_even_though_discord_py_says_so(parser: Parser) -> None:
    message = await parser.parse("guild_everyone_mention")
    assert message.mention_everyone
    assert parser.me.mentioned_in(message)  # the trap: discord.py counts @everyone
    incoming = to_incoming(message, parser.me)
    assert incoming is not None
    assert not incoming.addressed


async def test_nickname_mention_and_other_role_mentions(parser: Parser) -> None:
    """<@!id> (the legacy nickname form) is stripped too; a role that is not the bot's is kept."""
    data = parser.fake.guild_message(GENERAL_ID, ALICE_ID, "placeholder")
    data["content"] = f"<@!{BOT_ID}>  ask <@&1180000000000000005> why"
    await parser.fake.dispatch("MESSAGE_CREATE", data)
    message = await asyncio.wait_for(parser.inbox.get(), EVENT_TIMEOUT_S)
    incoming = to_incoming(message, parser.me)
    assert incoming is not None
    assert incoming.addressed
    assert incoming.text == "ask <@&1180000000000000005> why"
