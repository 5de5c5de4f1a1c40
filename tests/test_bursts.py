"""Bursts: a user's messages that arrive together are answered as one prompt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bot.core import BotCore, Reply
from bot.messages import ChatKind, IncomingMessage
from tests.chat_helpers import answer_bodies, fast_discord, fast_telegram, incoming, last_user
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.discord_server import ALICE_ID, GENERAL_ID, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, TextReply
from tests.fakes.sink import RecordingSink
from tests.fakes.telegram_server import FakeTelegram
from tests.test_discord import answered, discord_settings, settled_interaction
from tests.test_discord import running_bot as running_discord
from tests.test_telegram import handled, nothing_pending, telegram_settings, until
from tests.test_telegram import running_bot as running_telegram

ALICE = 5100000001
BURST_WINDOW_S = 0.5
# Telegram cuts a long paste into messages of up to 4096 characters.
PASTE_PART = ("lorem ipsum dolor sit amet " * 160)[:4000].strip()
TELEGRAM_SINK_LEN = 4000


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    """A fast fake Bot API."""
    async with fast_telegram(monkeypatch) as server:
        yield server


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fast fake Discord."""
    async with fast_discord(monkeypatch) as server:
        yield server


class InteractionLikeSink(RecordingSink):
    """A sink that must carry its own answer, as a Discord interaction's does."""

    mergeable = False


async def submit_all(core: BotCore, messages: list[IncomingMessage]) -> list[Reply]:
    """Submit messages one right after the other (as a platform delivers them), then await every reply."""
    futures = []
    for message in messages:
        future = await core.submit(message, RecordingSink(max_message_len=TELEGRAM_SINK_LEN))
        assert future is not None
        futures.append(future)
    return list(await asyncio.gather(*futures))


# ---------------------------------------------------------------- Telegram end to end


async def test_quick_messages_become_one_prompt_when_always_waiting(
    tg: FakeTelegram, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(TextReply(("One answer for all three.",)))
    settings = telegram_settings(make_settings, tg, burst_wait="always", burst_window_s=BURST_WINDOW_S)
    async with running_telegram(settings) as bot:
        for text in ("first part", "second part", "third part"):
            tg.push_update(tg.private_text(ALICE, text))
        await until(lambda: tg.texts(ALICE) == ["One answer for all three."], "the one answer")
        await until(lambda: nothing_pending(bot), "every part's inbox entry closed")
    assert [last_user(b) for b in answer_bodies(fake_openai)] == ["first part\nsecond part\nthird part"]
    assert len(answer_bodies(fake_openai)[0]["messages"]) == 2  # system + the merged prompt


async def test_a_split_paste_becomes_one_prompt(
    tg: FakeTelegram, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(TextReply(("Read it all.",)))
    settings = telegram_settings(make_settings, tg, burst_window_s=BURST_WINDOW_S)  # "split" by default
    async with running_telegram(settings):
        for text in (PASTE_PART, PASTE_PART + " two", "what do you think?"):
            tg.push_update(tg.private_text(ALICE, text))
        await until(lambda: tg.texts(ALICE) == ["Read it all."], "the answer to the paste")
        # The next short message is a prompt of its own.
        last = tg.push_update(tg.private_text(ALICE, "thanks"))
        await handled(tg, last)
        await until(lambda: len(tg.texts(ALICE)) == 2, "the answer to the next message")
    assert [last_user(b) for b in answer_bodies(fake_openai)] == [
        f"{PASTE_PART}\n{PASTE_PART} two\nwhat do you think?",
        "thanks",
    ]


# ---------------------------------------------------------------- through the core


async def test_a_short_message_does_not_wait_for_the_window(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(burst_window_s=10.0)
    started = time.monotonic()

    [reply] = await submit_all(h.core, [incoming("quick one")])

    assert reply.text == "echo: quick one"
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    ("platform", "prompts"),
    [("telegram", [f"{PASTE_PART}\nand this"]), ("http", [PASTE_PART, "and this"])],
)
async def test_a_long_message_waits_for_its_followers_only_on_burst_platforms(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, platform: str, prompts: list[str]
) -> None:
    h = await make_core(burst_window_s=BURST_WINDOW_S)

    await submit_all(
        h.core, [incoming(PASTE_PART, platform=platform), incoming("and this", platform=platform)]
    )

    assert [last_user(b) for b in answer_bodies(fake_openai)] == prompts


async def test_two_users_are_never_merged(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(burst_wait="always", burst_window_s=BURST_WINDOW_S, group_context="shared")

    def in_group(text: str, user_id: str) -> IncomingMessage:
        return incoming(text, user_id=user_id, chat_id="-500", kind=ChatKind.GROUP)

    replies = await submit_all(h.core, [in_group("from alice", "1"), in_group("from bob", "2")])

    assert [r.error for r in replies] == [None, None]
    assert [last_user(b) for b in answer_bodies(fake_openai)] == ["user1: from alice", "user2: from bob"]


async def test_a_slash_command_is_never_merged_into_a_burst(
    dc: FakeDiscord, make_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = discord_settings(make_settings, dc, burst_wait="always", burst_window_s=BURST_WINDOW_S)
    async with running_discord(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "hello"))
        slash = await dc.dispatch("INTERACTION_CREATE", dc.interaction_ask("and more"))
        # Before the fix the slash command joined the message's burst: its "thinking…" never ended.
        await until(lambda: settled_interaction(dc, slash["token"]) == "echo: and more", "the slash answer")
        await answered(dc, GENERAL_ID, ["echo: and more", "echo: hello"])
    assert [last_user(b) for b in answer_bodies(fake_openai)] == ["hello", "and more"]


async def test_a_sink_that_must_answer_itself_is_never_merged(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(burst_wait="always", burst_window_s=BURST_WINDOW_S)
    first = await h.core.submit(incoming("typed"), RecordingSink())
    own_sink = InteractionLikeSink()
    second = await h.core.submit(incoming("slash"), own_sink)
    assert first is not None
    assert second is not None

    await asyncio.gather(first, second)

    assert own_sink.final_texts == ["echo: slash"]
    assert [last_user(b) for b in answer_bodies(fake_openai)] == ["typed", "slash"]


async def test_commands_are_never_merged(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(burst_wait="always", burst_window_s=BURST_WINDOW_S)

    hello, usage = await submit_all(h.core, [incoming("hello"), incoming("/usage")])
    help_text, after = await submit_all(h.core, [incoming("/help"), incoming("after help")])

    assert hello.text == "echo: hello"
    assert usage.text.startswith("Today: ")
    assert help_text.text.startswith("I answer your messages")
    assert after.text == "echo: after help"
    assert [last_user(b) for b in answer_bodies(fake_openai)] == ["hello", "after help"]
