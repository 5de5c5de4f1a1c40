"""Helpers of the conversation-management tests: neutral messages, the core's replies, the database."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest

from adapters import discord_pacing, telegram_pacing, telegram_sink
from adapters.discord_sink import ChannelSink, InteractionSink
from bot.core import BotCore, Reply
from bot.messages import ChatKind, IncomingMessage
from bot.summary import SUMMARY_INSTRUCTIONS
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.sink import RecordingSink
from tests.fakes.telegram_server import FakeTelegram

CHAT_PATH = "/v1/chat/completions"
# Platform pacing for tests that are not about pacing (as tests/test_telegram.py and test_discord.py set it).
FAST_INTERVAL_S = 0.05
FAST_WINDOW_S = 0.2

_message_ids = itertools.count(1)


def incoming(
    text: str,
    *,
    platform: str = "telegram",
    user_id: str = "7",
    chat_id: str | None = None,
    kind: ChatKind = ChatKind.PRIVATE,
    addressed: bool = True,
    user_name: str | None = None,
    **extra: Any,
) -> IncomingMessage:
    """A neutral message; by default in user 7's private Telegram chat."""
    return IncomingMessage(
        platform=platform,
        chat_id=chat_id or user_id,
        chat_kind=kind,
        user_id=user_id,
        user_name=user_name or f"user{user_id}",
        message_id=str(next(_message_ids)),
        text=text,
        addressed=addressed,
        **extra,
    )


async def ask(core: BotCore, message: IncomingMessage, sink: RecordingSink | None = None) -> Reply:
    """Submit a message that must be accepted and wait for its reply."""
    future = await core.submit(message, sink or RecordingSink())
    assert future is not None, "the core did not accept the message"
    return await future


async def say(core: BotCore, text: str, **fields: Any) -> tuple[Reply, RecordingSink]:
    """Submit `text` (see incoming() for `fields`); return the reply and what the user saw."""
    sink = RecordingSink()
    return await ask(core, incoming(text, **fields), sink), sink


def query(db_path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the database directly, behind the store's back."""
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(sql, params).fetchall()


def execute(db_path: Path, sql: str, *params: object) -> int:
    """Change the database behind the store's back (time travel); return the rows changed."""
    with closing(sqlite3.connect(db_path)) as db, db:
        return db.execute(sql, params).rowcount


def chat_bodies(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """Bodies of every chat completion request the fake received."""
    return [r.body for r in fake.requests if r.path == CHAT_PATH]


def is_summary_request(body: dict[str, Any]) -> bool:
    """Whether a request asks for a conversation summary."""
    messages = body.get("messages") or [{}]
    return bool(messages[0].get("role") == "system" and messages[0].get("content") == SUMMARY_INSTRUCTIONS)


def answer_bodies(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """Chat requests that answer a user (not summaries)."""
    return [b for b in chat_bodies(fake) if not is_summary_request(b)]


def summary_bodies(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """Chat requests that ask for a summary."""
    return [b for b in chat_bodies(fake) if is_summary_request(b)]


def system_of(body: dict[str, Any]) -> str:
    """The first system message of a request."""
    first = body["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def last_user(body: dict[str, Any]) -> str:
    """The last user message of a request."""
    return next(str(m["content"]) for m in reversed(body["messages"]) if m["role"] == "user")


@asynccontextmanager
async def fast_telegram(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    """A fake Bot API without flood rules; the bot's per-chat pacing shortened."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")  # PTB 22.8 warns on a RetryAfter otherwise
    for module in (telegram_pacing, telegram_sink):
        monkeypatch.setattr(module, "PRIVATE_INTERVAL_S", FAST_INTERVAL_S)
        monkeypatch.setattr(module, "GROUP_INTERVAL_S", FAST_INTERVAL_S)
    async with FakeTelegram(flood=None) as server:
        yield server


@asynccontextmanager
async def fast_discord(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fake Discord without rate limits; the bot's channel gate and edit interval shortened."""
    monkeypatch.setattr(discord_pacing, "WINDOW_S", FAST_WINDOW_S)
    monkeypatch.setattr(ChannelSink, "edit_interval_s", FAST_INTERVAL_S)
    monkeypatch.setattr(InteractionSink, "edit_interval_s", FAST_INTERVAL_S)
    async with FakeDiscord(rate_limits=None) as server:
        yield server
