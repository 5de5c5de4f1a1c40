"""Fuzzing to_incoming: mutated MESSAGE_CREATE samples through discord.py's own ConnectionState."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.discord_translate import to_incoming
from bot.messages import ChatKind, IncomingMessage
from tests.fakes.discord_server import (
    ALICE_DM_ID,
    ALICE_ID,
    BOB_ID,
    BOT_ID,
    BOT_ROLE_ID,
    GENERAL_ID,
    GUILD_ID,
    HELPER_BOT_ID,
    THREAD_ID,
    FakeDiscord,
    iter_sample_frames,
)
from tests.fuzz_strategies import EDGE_INTS, JSON_VALUES, broken_text, hostile_text, mutate

READY_TIMEOUT_S = 5.0
EVENT_TIMEOUT_S = 2.0
SAMPLES: dict[str, dict[str, Any]] = {
    name: frame["d"] for name, frame in iter_sample_frames() if frame["t"] == "MESSAGE_CREATE"
}
STR_FIELDS = ("platform", "chat_id", "user_id", "user_name", "message_id", "text")
OPTIONAL_STR_FIELDS = ("thread_id", "reply_to_id", "reply_to_text", "language", "guild_id")
MALFORMED = "ignored: malformed"
# Mentions and look-alikes a message may carry; the bot's own are what addresses it.
OUR_MENTIONS = (f"<@{BOT_ID}>", f"<@!{BOT_ID}>", f"<@&{BOT_ROLE_ID}>")
OTHER_TOKENS = (
    f"<@{ALICE_ID}>",
    "<@&1180000000000000005>",
    "@everyone",
    "@here",
    "<@",
    "<@!>",
    "<@&>",
    ".*",
    "\\",
)
SNOWFLAKES = st.sampled_from([BOT_ID, ALICE_ID, BOB_ID, HELPER_BOT_ID, GENERAL_ID, THREAD_ID, 1]).map(str)
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@dataclass
class Parser:
    """A real client logged in to the fake: its ConnectionState turns payloads into discord.Message."""

    client: discord.Client
    inbox: asyncio.Queue[discord.Message]

    @property
    def me(self) -> discord.ClientUser:
        """The bot's own user, as on_message handlers see it."""
        assert self.client.user is not None
        return self.client.user

    async def parse(self, data: dict[str, Any]) -> discord.Message | None:
        """What on_message would get for this MESSAGE_CREATE; None where discord.py refuses it."""
        while not self.inbox.empty():
            self.inbox.get_nowait()
        try:
            self.client._connection.parse_message_create(data)  # type: ignore[arg-type]
        except Exception:  # discord.py's own validation: the gateway would not dispatch it either
            return None
        return await asyncio.wait_for(self.inbox.get(), EVENT_TIMEOUT_S)


@pytest.fixture
async def parser(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Parser]:
    """A client with the message-content intent, connected to FakeDiscord (guild, channels, thread known)."""
    intents = discord.Intents.default()
    intents.message_content = True
    async with FakeDiscord(rate_limits=None) as fake:
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
            yield Parser(client, inbox)
        finally:
            await client.close()
            await task


def assert_well_formed(incoming: IncomingMessage | None, message: discord.Message) -> None:
    """None, or a message the core can use: strings that are str (and UTF-8 encodable), a valid kind."""
    if incoming is None:
        return
    assert isinstance(incoming, IncomingMessage)
    for name in STR_FIELDS:
        value = getattr(incoming, name)
        assert type(value) is str, (name, value)
        value.encode("utf-8")  # SQLite stores it: a lone surrogate would fail there
    for name in OPTIONAL_STR_FIELDS:
        value = getattr(incoming, name)
        assert value is None or type(value) is str, (name, value)
        if value is not None:
            value.encode("utf-8")
    assert incoming.platform == "discord"
    assert isinstance(incoming.chat_kind, ChatKind)
    assert type(incoming.addressed) is bool
    assert isinstance(incoming.role_ids, tuple)
    assert all(type(role) is str for role in incoming.role_ids)
    assert incoming.raw is message
    assert incoming.message_id == str(message.id)
    for name in ("chat_id", "user_id", "message_id", "thread_id", "reply_to_id", "guild_id"):
        value = getattr(incoming, name)
        assert value is None or str(int(value)) == value, (name, value)  # the sink sends int(...)
    if incoming.chat_kind is ChatKind.PRIVATE:
        assert incoming.addressed
        assert incoming.guild_id is None


# ---------------------------------------------------------------- garbage in


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLES)), data=st.data())
async def test_mutated_samples_are_translated_or_ignored(
    parser: Parser, name: str, data: st.DataObject
) -> None:
    """Dropped keys, wrong types, unknown fields, edge ints, hostile strings: never an exception."""
    message = await parser.parse(mutate(data, copy.deepcopy(SAMPLES[name])))
    if message is None:
        return
    assert_well_formed(to_incoming(message, parser.me), message)


@FUZZ
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    field=st.sampled_from(
        ["content", "type", "author.username", "author.global_name", "member.nick", "referenced.content"]
    ),
    value=JSON_VALUES,
)
async def test_a_wrong_type_in_one_field_is_never_passed_on(
    parser: Parser, name: str, field: str, value: Any
) -> None:
    """discord.py does not check types: whatever lands in a field, the core gets str or nothing."""
    data = copy.deepcopy(SAMPLES[name])
    if field == "referenced.content":
        data["referenced_message"] = copy.deepcopy(SAMPLES["guild_no_mention"]) | {"content": value}
        data["message_reference"] = {"message_id": data["referenced_message"]["id"]}
    elif "." in field:
        outer, inner = field.split(".")
        data.setdefault(outer, {})[inner] = value
    else:
        data[field] = value
    message = await parser.parse(data)
    if message is None:
        return
    assert_well_formed(to_incoming(message, parser.me), message)


# ---------------------------------------------------------------- odd but well-typed


@st.composite
def well_typed_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A sample with hostile but well-typed content, names and ids where people control them."""
    data = copy.deepcopy(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    pieces = st.one_of(hostile_text(max_repeat=100), st.sampled_from(OUR_MENTIONS + OTHER_TOKENS))
    data["content"] = "".join(draw(st.lists(pieces, max_size=6)))
    author = data["author"]
    author["username"] = draw(hostile_text(max_repeat=20))
    author["global_name"] = draw(st.none() | hostile_text(max_repeat=20))
    if "member" in data:
        data["member"]["nick"] = draw(st.none() | hostile_text(max_repeat=20))
    data["id"] = draw(SNOWFLAKES | EDGE_INTS.filter(lambda n: n >= 0).map(str))
    if draw(st.booleans()):
        # Move it to another place: the DM, #general, the thread, or a channel the bot has never seen.
        place = draw(st.sampled_from([None, GENERAL_ID, THREAD_ID, 1]))
        if place is None:
            data.pop("guild_id", None)
            data.pop("member", None)
            data["channel_id"] = str(ALICE_DM_ID)
        else:
            data["guild_id"] = str(GUILD_ID)
            data["channel_id"] = str(place)
    referenced = data.get("referenced_message")
    if isinstance(referenced, dict):
        referenced["content"] = draw(hostile_text())
    return data


@FUZZ
@given(data=well_typed_messages())
async def test_well_typed_messages_are_translated(
    parser: Parser, data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """What Discord can really send is translated or skipped (a bot's, a system message), never malformed."""
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="adapters.discord_translate")
    message = await parser.parse(data)
    assert message is not None  # well-typed: discord.py must accept it
    incoming = to_incoming(message, parser.me)
    assert not [r for r in caplog.records if MALFORMED in r.getMessage()]
    assert_well_formed(incoming, message)
    person = not message.author.bot and message.author.id != BOT_ID
    if person and message.type in (discord.MessageType.default, discord.MessageType.reply):
        assert incoming is not None
        if f"<@{BOT_ID}>" in message.content or f"<@!{BOT_ID}>" in message.content:
            assert incoming.addressed
            assert f"<@{BOT_ID}>" not in incoming.text
            assert f"<@!{BOT_ID}>" not in incoming.text


@FUZZ
@given(content=broken_text())
async def test_lone_surrogates_in_content_never_reach_the_core(parser: Parser, content: str) -> None:
    """A JSON `\\ud800` escape decodes to a str that SQLite cannot store: ignored, not passed on."""
    message = await parser.parse(copy.deepcopy(SAMPLES["dm_message"]) | {"content": content})
    assert message is not None
    assert_well_formed(to_incoming(message, parser.me), message)
