"""Platform faults end to end: python-telegram-bot on FakeTelegram and discord.py on FakeDiscord refusing,
failing or dropping the bot's writes; the answer still arrives whole, or is logged and kept.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters import discord_pacing, telegram_pacing, telegram_sink
from adapters.discord_sink import ChannelSink, InteractionSink
from adapters.telegram_sink import MAX_ATTEMPTS
from tests.conftest import SettingsFactory
from tests.fakes.discord_server import ALICE_ID, GENERAL_ID, FakeDiscord
from tests.fakes.openai_server import FakeOpenAI, TextReply
from tests.fakes.telegram_server import FakeTelegram
from tests.test_core import query
from tests.test_discord import answered, discord_settings, writes
from tests.test_discord import errors_logged as discord_errors
from tests.test_discord import running_bot as running_discord
from tests.test_telegram import MENTION, settled, telegram_settings, until, writes_to
from tests.test_telegram import errors_logged as telegram_errors
from tests.test_telegram import running_bot as running_telegram

ALICE = 5100000001
GROUP = -1002100000001
FAST_INTERVAL_S = 0.05
FAST_WINDOW_S = 0.2
FAST_BACKOFF_S = 0.05
UNDELIVERED = "could not be delivered"
# A reply long enough to be streamed: a preview, then edits, then the final text.
STREAMED = TextReply(("Hello", " there", ", my", " dear", " friend."), chunk_delay_s=0.15)


def inbox(db_path: Path) -> list[tuple[str, str, str]]:
    """(chat id, message id, status) of every inbox entry, in arrival order."""
    rows = query(db_path, "SELECT chat_id, message_id, status FROM inbox ORDER BY id")
    return [(str(chat), str(message), str(status)) for chat, message, status in rows]


def stored(db_path: Path) -> list[tuple[str, str, str]]:
    """Every stored message as (role, content, status), in order."""
    rows = query(db_path, "SELECT role, content, status FROM messages ORDER BY conversation_id, seq")
    return [(str(role), str(content), str(status)) for role, content, status in rows]


def undelivered_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The core's records of answers the platform would not take."""
    return [r for r in caplog.records if UNDELIVERED in r.getMessage()]


# ---------------------------------------------------------------- Telegram


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    """A fake Bot API without flood rules; the bot's pacing and network backoff shortened."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")  # PTB 22.8 warns while building a RetryAfter otherwise
    for module in (telegram_pacing, telegram_sink):
        monkeypatch.setattr(module, "PRIVATE_INTERVAL_S", FAST_INTERVAL_S)
        monkeypatch.setattr(module, "GROUP_INTERVAL_S", FAST_INTERVAL_S)
    monkeypatch.setattr(telegram_sink, "NETWORK_BACKOFF_S", FAST_BACKOFF_S)
    async with FakeTelegram(flood=None) as server:
        yield server


def tg_update(tg: FakeTelegram, chat_id: int, text: str) -> dict[str, Any]:
    """Alice's text in her private chat, or addressed to the bot in the group."""
    if chat_id == ALICE:
        return tg.private_text(ALICE, text)
    return tg.group_text(GROUP, ALICE, f"{MENTION} {text}")


# (method, chat, fault, streamed): which write fails once, where, how.
TELEGRAM_FAULTS = {
    "send-502": ("sendMessage", ALICE, 502, False),
    "send-dropped": ("sendMessage", ALICE, "drop", False),
    "send-429": ("sendMessage", GROUP, 429, False),
    "edit-500": ("editMessageText", GROUP, 500, True),
    "edit-dropped": ("editMessageText", GROUP, "drop", True),
    "draft-502": ("sendMessageDraft", ALICE, 502, True),
}


@pytest.mark.parametrize(
    ("method", "chat_id", "fault", "streamed"), TELEGRAM_FAULTS.values(), ids=TELEGRAM_FAULTS
)
async def test_telegram_write_fault_is_retried_and_the_answer_arrives_whole(
    tg: FakeTelegram,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    method: str,
    chat_id: int,
    fault: int | str,
    streamed: bool,
) -> None:
    reply = STREAMED if streamed else TextReply(("Short and ", "sweet."))
    fake_openai.enqueue(reply)
    if fault == "drop":
        tg.drop_next(method)
    else:
        assert isinstance(fault, int)
        tg.fail_next(method, status=fault, retry_after=1)
    settings = telegram_settings(make_settings, tg)
    async with running_telegram(settings):
        tg.push_update(tg_update(tg, chat_id, "hi"))
        await until(lambda: settled(tg, chat_id) == [reply.text], "the complete answer")
        await until(lambda: inbox(settings.db_path)[-1][2] == "answered", "the answer recorded")

    failed, *retried = tg.calls_of(method)
    assert failed.status == (0 if fault == "drop" else fault)
    assert retried, "the failed write was not retried"
    assert retried[0].status == 200
    assert retried[0].params.get("text") == failed.params.get("text")  # the same write again
    if fault == 429:
        assert retried[0].at - failed.at >= 0.95  # retry_after honoured
    assert all(c.status == 200 for c in writes_to(tg, chat_id) if c.at > failed.at)
    assert tg.texts(chat_id) == [reply.text]  # one message, nothing duplicated
    assert telegram_errors(caplog) == []
    assert stored(settings.db_path)[-1] == ("assistant", reply.text, "ok")


# What a refusal costs: Telegram's 403 "bot was blocked" is final at once; a 5xx is retried to the limit.
UNDELIVERABLE = {"blocked-403": (403, 1), "always-502": (502, MAX_ATTEMPTS)}


@pytest.mark.parametrize(("status", "attempts"), UNDELIVERABLE.values(), ids=UNDELIVERABLE)
async def test_telegram_answer_that_cannot_be_delivered_is_logged_and_kept(
    tg: FakeTelegram,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    status: int,
    attempts: int,
) -> None:
    fake_openai.enqueue(TextReply(("Nobody ", "will read this.")))
    tg.fail_next("sendMessage", status=status, times=attempts)
    settings = telegram_settings(make_settings, tg)
    async with running_telegram(settings):
        update = tg.push_update(tg.private_text(ALICE, "are you there?"))
        await until(lambda: bool(undelivered_logs(caplog)), "the undelivered answer logged")
        await until(lambda: inbox(settings.db_path)[0][2] != "pending", "the inbox entry closed")
        # The bot goes on: the next message (once the platform takes writes again) is answered.
        tg.push_update(tg.private_text(ALICE, "and now?"))
        await until(lambda: tg.texts(ALICE) == ["echo: and now?"], "the next answer")

    message_id = str(update["message"]["message_id"])
    assert len(tg.calls_of("sendMessage")) == attempts + 1
    [record] = undelivered_logs(caplog)
    assert record.levelno == logging.ERROR
    assert "telegram" in record.getMessage()
    assert message_id in record.getMessage()
    assert str(ALICE) in record.getMessage()
    assert record.exc_info is not None  # with the platform's reason
    assert inbox(settings.db_path) == [
        (str(ALICE), message_id, "undelivered"),
        (str(ALICE), str(int(message_id) + 1), "answered"),
    ]
    # The turn is kept: it happened, and the next question's context needs it.
    assert stored(settings.db_path)[:2] == [
        ("user", "are you there?", "ok"),
        ("assistant", "Nobody will read this.", "ok"),
    ]
    assert fake_openai.last_body["messages"][1:] == [
        {"role": "user", "content": "are you there?"},
        {"role": "assistant", "content": "Nobody will read this."},
        {"role": "user", "content": "and now?"},
    ]


async def test_telegram_drafts_refused_for_good_still_deliver_the_final_answer(
    tg: FakeTelegram,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_openai.enqueue(STREAMED)
    tg.fail_next("sendMessageDraft", status=400, description="TEXTDRAFT_PEER_INVALID", times=10)
    async with running_telegram(telegram_settings(make_settings, tg)):
        tg.push_update(tg.private_text(ALICE, "stream it"))
        await until(lambda: tg.texts(ALICE) == [STREAMED.text], "the final answer")

    assert len(tg.calls_of("sendMessageDraft")) == 1  # previews stop after the first refusal
    assert [c.status for c in tg.calls_of("sendMessage")] == [200]
    assert telegram_errors(caplog) == []
    assert undelivered_logs(caplog) == []


# ---------------------------------------------------------------- Discord


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fake Discord without rate limits; the bot's channel gate and edit interval shortened."""
    monkeypatch.setattr(discord_pacing, "WINDOW_S", FAST_WINDOW_S)
    monkeypatch.setattr(ChannelSink, "edit_interval_s", FAST_INTERVAL_S)
    monkeypatch.setattr(InteractionSink, "edit_interval_s", FAST_INTERVAL_S)
    async with FakeDiscord(rate_limits=None) as server:
        yield server


SEND_PATH = rf"^/channels/{GENERAL_ID}/messages$"
EDIT_PATH = rf"^/channels/{GENERAL_ID}/messages/\d+$"
# (HTTP method, path, status, retry_after, streamed, the least wait before the retry)
DISCORD_FAULTS = {
    "send-429": ("POST", SEND_PATH, 429, 0.3, False, 0.3),
    "send-500": ("POST", SEND_PATH, 500, None, False, 1.0),  # discord.py waits 1 s after a first 5xx
    "edit-502": ("PATCH", EDIT_PATH, 502, None, True, 1.0),
}


@pytest.mark.parametrize(
    ("method", "path", "status", "retry_after", "streamed", "least_wait_s"),
    DISCORD_FAULTS.values(),
    ids=DISCORD_FAULTS,
)
async def test_discord_write_fault_is_retried_and_the_answer_arrives_whole(
    dc: FakeDiscord,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    status: int,
    retry_after: float | None,
    streamed: bool,
    least_wait_s: float,
) -> None:
    reply = STREAMED if streamed else TextReply(("Short and ", "sweet."))
    fake_openai.enqueue(reply)
    dc.fail_next(method, path, status, retry_after=retry_after)
    settings = discord_settings(make_settings, dc)
    async with running_discord(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "hi"))
        await answered(dc, GENERAL_ID, [reply.text])
        await until(lambda: inbox(settings.db_path)[-1][2] == "answered", "the answer recorded")

    calls = [c for c in writes(dc, GENERAL_ID) if c.method == method]
    failed, retried = calls[0], calls[1]
    assert failed.status == status
    assert retried.status == 200
    assert retried.json.get("content") == failed.json.get("content")  # the same write again
    assert retried.at - failed.at >= least_wait_s - 0.05
    assert all(c.status == 200 for c in writes(dc, GENERAL_ID) if c.at > failed.at)
    assert discord_errors(caplog) == []
    assert stored(settings.db_path)[-1] == ("assistant", reply.text, "ok")


DISCORD_UNDELIVERABLE = {
    # The bot lost its permission to write in the channel: final at once.
    "missing-permissions": (403, 50013, "Missing Permissions", None, 1),
    # Rate limited on every try: discord.py gives up after 5.
    "always-429": (429, None, None, 0.05, 5),
}


@pytest.mark.parametrize(
    ("status", "code", "text", "retry_after", "attempts"),
    DISCORD_UNDELIVERABLE.values(),
    ids=DISCORD_UNDELIVERABLE,
)
async def test_discord_answer_that_cannot_be_delivered_is_logged_and_kept(
    dc: FakeDiscord,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: int | None,
    text: str | None,
    retry_after: float | None,
    attempts: int,
) -> None:
    fake_openai.enqueue(TextReply(("Nobody ", "will read this.")))
    dc.fail_next("POST", SEND_PATH, status, retry_after=retry_after, code=code, message=text, times=attempts)
    settings = discord_settings(make_settings, dc)
    async with running_discord(settings, dc, monkeypatch):
        question = await dc.dispatch(
            "MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "are you there?")
        )
        await until(lambda: bool(undelivered_logs(caplog)), "the undelivered answer logged")
        await until(lambda: inbox(settings.db_path)[0][2] != "pending", "the inbox entry closed")
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "and now?"))
        await answered(dc, GENERAL_ID, ["echo: and now?"], "the next answer")

    sends = [c for c in writes(dc, GENERAL_ID) if c.method == "POST"]
    assert [c.status for c in sends] == [status] * attempts + [200]
    [record] = undelivered_logs(caplog)
    assert record.levelno == logging.ERROR
    for part in ("discord", question["id"], str(GENERAL_ID)):
        assert part in record.getMessage()
    assert record.exc_info is not None
    assert [(chat, status) for chat, _, status in inbox(settings.db_path)] == [
        (str(GENERAL_ID), "undelivered"),
        (str(GENERAL_ID), "answered"),
    ]
    assert inbox(settings.db_path)[0][1] == question["id"]
    assert stored(settings.db_path)[:2] == [
        ("user", "are you there?", "ok"),
        ("assistant", "Nobody will read this.", "ok"),
    ]
