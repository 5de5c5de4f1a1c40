"""The bot's own texts in the user's language: English and Chinese."""

# Chinese texts use full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.errors import LimitExceeded
from bot.texts import TEXTS, Lang, pick_language, render
from tests.chat_helpers import fast_discord, fast_telegram, say
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_server import FakeTelegram
from tests.test_discord import discord_settings, settled_interaction
from tests.test_discord import running_bot as running_discord
from tests.test_telegram import running_bot as running_telegram
from tests.test_telegram import telegram_settings, until

ALICE = 5100000001
BOB = 5100000002


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("zh-hans", Lang.ZH),
        ("zh-CN", Lang.ZH),
        ("zh_TW", Lang.ZH),
        ("ZH", Lang.ZH),
        ("en", Lang.EN),
        ("en-US", Lang.EN),
        ("fr", Lang.EN),
        ("", Lang.EN),
        (None, Lang.EN),
    ],
)
def test_pick_language_from_platform_codes(code: str | None, expected: Lang) -> None:
    assert pick_language(code, Lang.EN) is expected


def test_unknown_codes_fall_back_to_the_default() -> None:
    assert pick_language("fr-FR", Lang.ZH) is Lang.ZH
    assert pick_language(None, Lang.ZH) is Lang.ZH
    assert pick_language("en-GB", Lang.ZH) is Lang.EN


def test_every_text_has_a_chinese_version() -> None:
    assert [key for key, texts in TEXTS.items() if Lang.ZH not in texts] == []


async def test_refusals_follow_the_users_language(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(daily_token_limit=1)

    await say(h.core, "hello", language="zh-hans")
    refused, sink = await say(h.core, "again", language="zh-hans")
    unknown, _ = await say(h.core, "/nope", language="zh-hans")

    assert isinstance(refused.error, LimitExceeded)
    assert sink.final_texts == [render("budget_exceeded", Lang.ZH, **refused.error.params)]
    assert sink.final_texts[0].startswith("你已用完每日 token 限额（1）。将在 ")
    assert unknown.text == render("unknown_command", Lang.ZH, name="nope")


def with_language(update: dict[str, Any], code: str | None) -> dict[str, Any]:
    """The update with the sender's language_code set (None: removed)."""
    sender = update["message"]["from"]
    if code is None:
        sender.pop("language_code", None)
    else:
        sender["language_code"] = code
    return update


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    """A fast fake Bot API."""
    async with fast_telegram(monkeypatch) as server:
        yield server


async def test_telegram_chinese_user_gets_chinese_help(
    tg: FakeTelegram, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    async with running_telegram(telegram_settings(make_settings, tg)):
        tg.push_update(with_language(tg.private_text(ALICE, "/help"), "zh-hans"))
        tg.push_update(tg.private_text(BOB, "/help"))  # language_code "en"
        await until(lambda: tg.texts(ALICE) and tg.texts(BOB), "both help texts")
    assert tg.texts(ALICE) == [render("help", Lang.ZH)]
    assert tg.texts(BOB) == [render("help", Lang.EN)]


async def test_default_language_for_users_of_other_languages(
    tg: FakeTelegram, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = telegram_settings(make_settings, tg, default_language="zh")
    async with running_telegram(settings):
        tg.push_update(with_language(tg.private_text(ALICE, "/help"), None))
        tg.push_update(with_language(tg.private_text(BOB, "/help"), "en-US"))
        tg.push_update(with_language(tg.private_text(BOB + 1, "/help"), "de"))
        await until(lambda: tg.texts(ALICE) and tg.texts(BOB) and tg.texts(BOB + 1), "three help texts")
    assert tg.texts(ALICE) == [render("help", Lang.ZH)]
    assert tg.texts(BOB) == [render("help", Lang.EN)]
    assert tg.texts(BOB + 1) == [render("help", Lang.ZH)]


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fast fake Discord."""
    async with fast_discord(monkeypatch) as server:
        yield server


async def test_discord_interaction_locale(
    dc: FakeDiscord, make_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_discord(discord_settings(make_settings, dc), dc, monkeypatch):
        chinese = dc.interaction_command("usage")
        chinese["locale"] = "zh-CN"
        await dc.dispatch("INTERACTION_CREATE", chinese)
        english = await dc.dispatch("INTERACTION_CREATE", dc.interaction_command("usage"))
        await until(
            lambda: settled_interaction(dc, chinese["token"]) and settled_interaction(dc, english["token"]),
            "both /usage answers",
        )
    assert settled_interaction(dc, chinese["token"]).startswith("今天：0 个 token")
    assert settled_interaction(dc, english["token"]).startswith("Today: 0 tokens")
