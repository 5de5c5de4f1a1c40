"""Access: allow lists, admins by platform identity, and bans that survive a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.access import Access, PlatformRules
from bot.messages import ChatKind, IncomingMessage
from bot.texts import render
from tests.chat_helpers import answer_bodies, fast_discord, fast_telegram, incoming, say
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.discord_server import ALICE_ID, BOB_ID, GENERAL_ID, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.sink import RecordingSink
from tests.fakes.telegram_server import FakeTelegram
from tests.helpers import running_relay
from tests.test_console import chat as console_chat
from tests.test_discord import answered, discord_settings
from tests.test_discord import running_bot as running_discord
from tests.test_telegram import handled, model_requests, telegram_settings, until
from tests.test_telegram import running_bot as running_telegram

ALICE = 5100000001
BOB = 5100000002
# The fake Discord's sample guild gives Alice its "Moderators" role; Bob has none.
MODERATORS = 1180000000000000002


def message(platform: str = "telegram", **fields: Any) -> IncomingMessage:
    """A message for the rule checks (only identity fields matter)."""
    return incoming("hi", platform=platform, **fields)


# ---------------------------------------------------------------- rules


def test_empty_rules_allow_everyone() -> None:
    assert PlatformRules().allows(message())
    assert not PlatformRules().is_admin(message())


def test_user_and_chat_lists_must_both_admit() -> None:
    rules = PlatformRules(users=frozenset({"7"}), chats=frozenset({"-500"}))
    assert rules.allows(message(user_id="7", chat_id="-500", kind=ChatKind.GROUP))
    assert not rules.allows(message(user_id="8", chat_id="-500", kind=ChatKind.GROUP))
    assert not rules.allows(message(user_id="7"))  # their private chat is not listed


def test_a_listed_thread_admits_its_messages() -> None:
    rules = PlatformRules(chats=frozenset({"900"}))
    assert rules.allows(message(chat_id="800", thread_id="900", kind=ChatKind.GROUP))
    assert not rules.allows(message(chat_id="800", thread_id="901", kind=ChatKind.GROUP))


def test_guild_and_role_lists() -> None:
    rules = PlatformRules(guilds=frozenset({"1"}), roles=frozenset({"10", "11"}))
    assert rules.allows(message("discord", guild_id="1", role_ids=("5", "11")))
    assert not rules.allows(message("discord", guild_id="1", role_ids=("5",)))
    assert not rules.allows(message("discord", guild_id="2", role_ids=("10",)))
    assert not rules.allows(message("discord", role_ids=("10",)))  # a DM has no guild


def test_admins_by_id_or_role() -> None:
    rules = PlatformRules(admins=frozenset({"42"}), admin_roles=frozenset({"99"}))
    assert rules.is_admin(message(user_id="42"))
    assert rules.is_admin(message("discord", user_id="8", role_ids=("99",)))
    assert not rules.is_admin(message(user_id="8", role_ids=("98",)))


def test_admin_identity_is_per_platform_and_never_from_text(make_settings: SettingsFactory) -> None:
    access = Access(make_settings(telegram_admin_ids=[42]))
    assert access.is_admin(message(user_id="42"))
    # The same number on another platform is someone else; a name or text claiming it is nothing.
    assert not access.is_admin(message("discord", user_id="42"))
    assert not access.is_admin(message("http", user_id="42"))
    assert not access.is_admin(incoming("I am admin 42, /ban 7", user_id="8", user_name="42"))
    # The terminal is the operator at the machine.
    assert access.is_admin(message("console", user_id="anyone"))
    assert access.has_admins("telegram")
    assert not access.has_admins("discord")


# ---------------------------------------------------------------- bans through the core


async def test_banned_user_gets_nothing_until_unbanned(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(telegram_admin_ids=[42])

    refused, _ = await say(h.core, "/ban 8", user_id="7")
    assert refused.text == render("admins_only", name="ban")
    banned, _ = await say(h.core, "/ban 8", user_id="42")
    assert banned.text == "User telegram:8 is banned."

    sink = RecordingSink()
    assert await h.core.submit(incoming("hello?", user_id="8"), sink) is None
    assert await h.core.submit(incoming("/help", user_id="8"), sink) is None
    assert sink.events == []
    assert answer_bodies(fake_openai) == []
    stats, _ = await say(h.core, "/stats", user_id="42")
    assert "Banned users: telegram:8" in stats.text

    unbanned, _ = await say(h.core, "/unban 8", user_id="42")
    assert unbanned.text == "User telegram:8 is no longer banned."
    back, _ = await say(h.core, "hello again", user_id="8")
    assert back.text == "echo: hello again"


async def test_admin_role_may_ban_and_an_http_caller_may_not(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(discord_admin_role_ids=[99])

    moderator = {"platform": "discord", "user_id": "5", "role_ids": ("99",)}
    done, _ = await say(h.core, "/ban discord:6", **moderator)
    http_caller, _ = await say(h.core, "/ban discord:5", platform="http", user_id="5")

    assert done.text == "User discord:6 is banned."
    assert http_caller.text == render("admins_only", name="ban")
    assert await h.core.submit(incoming("hi", platform="discord", user_id="6"), RecordingSink()) is None
    assert await h.core.submit(incoming("hi", **moderator), RecordingSink()) is not None


async def test_the_console_is_admin_and_bans_survive_a_restart(
    make_core: HarnessFactory, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings()
    h = await make_core(settings)

    printed, _ = await console_chat(h.core, ["/ban telegram:7"], user="operator")

    assert "User telegram:7 is banned." in printed
    await h.close()

    restarted = await make_core(settings)
    assert await restarted.core.submit(incoming("still there?"), RecordingSink()) is None
    assert answer_bodies(fake_openai) == []


async def test_a_banned_http_user_gets_403_and_no_model_call(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    async with running_relay(make_settings(http_port=0)) as relay:
        printed, _ = await console_chat(relay.runtime.core, ["/ban http:mallory"])
        assert "User http:mallory is banned." in printed
        async with relay.session.post("/ask_gpt", json={"prompt": "hi", "user": "mallory"}) as response:
            status, body = response.status, await response.json()
        async with relay.session.post("/ask_gpt", json={"prompt": "hi", "user": "alice"}) as response:
            assert response.status == 200

    # Before the fix: 500 "message was not accepted".
    assert status == 403
    assert body["error"]["message"] == "this user may not use the bot"
    assert [b["messages"][-1]["content"] for b in answer_bodies(fake_openai)] == ["hi"]


# ---------------------------------------------------------------- end to end on the platforms


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


async def test_telegram_admin_bans_by_user_id(
    tg: FakeTelegram, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = telegram_settings(make_settings, tg, telegram_admin_ids=[ALICE])
    async with running_telegram(settings):
        tg.push_update(tg.private_text(BOB, f"/ban {ALICE}", first_name="Admin"))
        await until(lambda: tg.texts(BOB) == [render("admins_only", name="ban")], "Bob's refusal")
        tg.push_update(tg.private_text(ALICE, f"/ban {BOB}"))
        await until(lambda: tg.texts(ALICE) == [f"User telegram:{BOB} is banned."], "the ban")
        await handled(tg, tg.push_update(tg.private_text(BOB, "hello?")))
        tg.push_update(tg.private_text(ALICE, "ping"))
        await until(lambda: len(tg.texts(ALICE)) == 2, "Alice's answer")

    # After a restart on the same database Bob is still banned, until Alice lifts it.
    async with running_telegram(settings):
        await handled(tg, tg.push_update(tg.private_text(BOB, "still nothing?")))
        tg.push_update(tg.private_text(ALICE, f"/unban {BOB}"))
        await until(lambda: len(tg.texts(ALICE)) == 3, "the unban")
        tg.push_update(tg.private_text(BOB, "back?"))
        await until(lambda: tg.texts(BOB)[1:] == ["echo: back?"], "Bob's answer")

    assert tg.texts(BOB) == [render("admins_only", name="ban"), "echo: back?"]
    assert [request[-1][1] for request in model_requests(fake_openai)] == ["ping", "back?"]


async def test_discord_allowed_role(
    dc: FakeDiscord,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = discord_settings(make_settings, dc, discord_allowed_role_ids=[MODERATORS])
    async with running_discord(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, BOB_ID, "may I?"))
        await answered(dc, GENERAL_ID, [render("not_allowed")], "Bob's refusal")
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "and me?"))
        await answered(dc, GENERAL_ID, [render("not_allowed"), "echo: and me?"])
    assert [request[-1] for request in model_requests(fake_openai)] == [("user", "and me?")]
