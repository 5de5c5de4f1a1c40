"""Fuzzing to_incoming: mutated Telegram payload samples through python-telegram-bot's own parser."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telegram import Bot, Update

from adapters.telegram import SECRET_HEADER, WEBHOOK_PATH, TelegramAdapter
from adapters.telegram_translate import BotIdentity, to_incoming
from bot.app import open_runtime
from bot.messages import ChatKind, IncomingMessage
from tests.conftest import TEARDOWN_CLOSE_S
from tests.fakes.telegram_server import DEFAULT_BOT_ID, DEFAULT_BOT_USERNAME, DEFAULT_TOKEN, FakeTelegram
from tests.fuzz_strategies import (
    EDGE_INTS,
    JSON_VALUES,
    Body,
    broken_text,
    hostile_text,
    mutate,
    nested_json,
)
from tests.helpers import HOST, free_port

PAYLOADS = Path(__file__).parent / "payloads" / "telegram"
SAMPLES: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(PAYLOADS.glob("*.json"))
}
# Samples with a `message` (the only update kind gptrelay answers), for the well-typed mutations.
MESSAGE_SAMPLES = sorted(name for name, data in SAMPLES.items() if "message" in data)
BOT = Bot(DEFAULT_TOKEN)  # parses only; nothing here touches the network
ME = BotIdentity(DEFAULT_BOT_ID, DEFAULT_BOT_USERNAME)
STR_FIELDS = ("platform", "chat_id", "user_id", "user_name", "message_id", "text")
OPTIONAL_STR_FIELDS = ("thread_id", "reply_to_id", "reply_to_text", "language", "guild_id")
MALFORMED = "ignored: malformed"

ENTITY_TYPES = ("mention", "bot_command", "text_mention", "bold", "url", "hashtag", "pre", "custom_emoji")
OUR_MENTIONS = (f"@{DEFAULT_BOT_USERNAME}", f"@{DEFAULT_BOT_USERNAME.upper()}", "@other_helper_bot")
COMMANDS = ("/start", "/help", f"/help@{DEFAULT_BOT_USERNAME}", "/reset@other_helper_bot", "/", "/@")
USERS = st.fixed_dictionaries(
    {"id": st.sampled_from([DEFAULT_BOT_ID, 5100000004]) | EDGE_INTS, "is_bot": st.booleans()},
    optional={"first_name": hostile_text(max_repeat=20), "username": hostile_text(max_repeat=5)},
)
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def assert_well_formed(message: IncomingMessage | None, update: Update) -> None:
    """None, or a message the core can use: strings that are str (and UTF-8 encodable), a valid kind."""
    if message is None:
        return
    assert isinstance(message, IncomingMessage)
    for name in STR_FIELDS:
        value = getattr(message, name)
        assert type(value) is str, (name, value)
        value.encode("utf-8")  # SQLite stores it: a lone surrogate would fail there
    for name in OPTIONAL_STR_FIELDS:
        value = getattr(message, name)
        assert value is None or type(value) is str, (name, value)
        if value is not None:
            value.encode("utf-8")
    assert message.platform == "telegram"
    assert isinstance(message.chat_kind, ChatKind)
    assert type(message.addressed) is bool
    assert message.user_name
    assert message.role_ids == ()
    assert message.raw is update
    assert update.message is not None
    assert message.chat_id == str(update.message.chat.id)
    assert message.message_id == str(update.message.message_id)
    for name in ("chat_id", "user_id", "message_id", "thread_id", "reply_to_id"):
        value = getattr(message, name)
        assert value is None or str(int(value)) == value, (name, value)  # the sink sends int(...)
    if message.chat_kind is ChatKind.PRIVATE:
        assert message.addressed


def parse(data: Any) -> Update | None:
    """Update.de_json as the webhook calls it; None where the library refuses the payload (a 400 there)."""
    try:
        return Update.de_json(data, BOT)
    except Exception:  # e.g. OverflowError or OSError for a date out of range: the library's validation
        return None


# ---------------------------------------------------------------- garbage in


@FUZZ
@given(name=st.sampled_from(sorted(SAMPLES)), data=st.data())
def test_mutated_samples_are_translated_or_ignored(name: str, data: st.DataObject) -> None:
    """Dropped keys, wrong types, unknown fields, edge ints, hostile strings: never an exception."""
    update = parse(mutate(data, copy.deepcopy(SAMPLES[name])))
    if update is None:
        return
    assert_well_formed(to_incoming(update, ME), update)


@FUZZ
@given(value=JSON_VALUES, key=st.sampled_from(["message", "edited_message", "channel_post", "x"]))
def test_random_json_as_an_update_is_refused_or_ignored(value: Any, key: str) -> None:
    update = parse({"update_id": 1, key: value})
    if update is None:
        return
    assert_well_formed(to_incoming(update, ME), update)


@FUZZ
@given(
    name=st.sampled_from(MESSAGE_SAMPLES),
    field=st.sampled_from(
        [
            *("text", "caption", "language_code", "first_name", "username", "quote", "reply"),
            *("from.id", "chat.id", "message_id", "message_thread_id", "is_topic_message"),
        ]
    ),
    value=JSON_VALUES,
)
def test_a_wrong_type_in_one_field_is_never_passed_on(name: str, field: str, value: Any) -> None:
    """python-telegram-bot does not check types: whatever lands in a field, the core gets str or nothing."""
    data = copy.deepcopy(SAMPLES[name])
    message = data["message"]
    if field in ("language_code", "first_name", "username"):
        message.setdefault("from", {"id": 5100000001, "is_bot": False, "first_name": "A"})[field] = value
    elif field == "quote":
        message["quote"] = {"text": value, "position": 0}
        message["reply_to_message"] = copy.deepcopy(SAMPLES["group_reply_to_bot"]["message"])
        message["reply_to_message"]["from"]["id"] = 5100000002
    elif field == "reply":
        message["reply_to_message"] = {"message_id": 9, "date": 0, "chat": message["chat"], "text": value}
    elif field in ("from.id", "chat.id"):
        outer = field.partition(".")[0]
        message.setdefault(outer, {"is_bot": False, "first_name": "A", "type": "private"})["id"] = value
    else:
        message[field] = value
    update = parse(data)
    if update is None:
        return
    assert_well_formed(to_incoming(update, ME), update)


@FUZZ
@given(
    name=st.sampled_from(MESSAGE_SAMPLES),
    entities=st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(ENTITY_TYPES), "offset": EDGE_INTS, "length": EDGE_INTS},
            optional={"user": USERS},
        ),
        min_size=1,
        max_size=4,
    ),
    text=hostile_text() | broken_text(),
    in_caption=st.booleans(),
)
def test_entities_out_of_range_never_raise(
    name: str, entities: list[dict[str, Any]], text: str, in_caption: bool
) -> None:
    """Offsets and lengths that are negative, past the end, or inside a surrogate pair."""
    data = copy.deepcopy(SAMPLES[name])
    message = data["message"]
    message.pop("text", None)
    message.pop("caption", None)
    if in_caption:
        message |= {"caption": text, "caption_entities": entities}
    else:
        message |= {"text": text, "entities": entities}
    update = parse(data)
    if update is None:
        return
    assert_well_formed(to_incoming(update, ME), update)


# ---------------------------------------------------------------- odd but well-typed


@st.composite
def text_with_entities(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    """Hostile text with entities on whole characters, counted in UTF-16 units as Telegram does."""
    pieces = draw(
        st.lists(
            st.one_of(hostile_text(max_repeat=200), st.sampled_from(OUR_MENTIONS + COMMANDS)),
            min_size=1,
            max_size=5,
        )
    )
    text = "".join(pieces)
    bounds = [0]
    for char in text:
        bounds.append(bounds[-1] + len(char.encode("utf-16-le")) // 2)
    entities = []
    for _ in range(draw(st.integers(0, 4))):
        start = draw(st.integers(0, len(bounds) - 1))
        end = draw(st.integers(start, len(bounds) - 1))
        entity: dict[str, Any] = {
            "type": draw(st.sampled_from(ENTITY_TYPES)),
            "offset": bounds[start],
            "length": bounds[end] - bounds[start],
        }
        if entity["type"] == "text_mention":
            entity["user"] = {"id": draw(st.sampled_from([DEFAULT_BOT_ID, 5100000004])), "is_bot": False}
            entity["user"]["first_name"] = "someone"
        entities.append(entity)
    # Telegram sends entities sorted by offset.
    return text, sorted(entities, key=lambda e: e["offset"])


@st.composite
def well_typed_updates(draw: st.DrawFn) -> dict[str, Any]:
    """A message sample with hostile but well-typed values where people control them."""
    data = copy.deepcopy(SAMPLES[draw(st.sampled_from(MESSAGE_SAMPLES))])
    message = data["message"]
    text, entities = draw(text_with_entities())
    key, entities_key = draw(st.sampled_from([("text", "entities"), ("caption", "caption_entities")]))
    for old in ("text", "entities", "caption", "caption_entities"):
        message.pop(old, None)
    message[key] = text
    if entities:
        message[entities_key] = entities
    sender = message.get("from")
    if isinstance(sender, dict):
        sender["first_name"] = draw(hostile_text(max_repeat=50))
        for optional in ("last_name", "username", "language_code"):
            if draw(st.booleans()):
                sender[optional] = draw(hostile_text(max_repeat=50))
            else:
                sender.pop(optional, None)
        sender["id"] = draw(EDGE_INTS)
    message["chat"]["id"] = draw(EDGE_INTS)
    message["message_id"] = draw(EDGE_INTS)
    if "quote" in message:
        message["quote"]["text"] = draw(hostile_text())
    replied = message.get("reply_to_message")
    if isinstance(replied, dict) and "text" in replied:
        replied["text"] = draw(hostile_text())
    return data


@FUZZ
@given(data=well_typed_updates())
def test_well_typed_updates_are_never_called_malformed(
    data: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """What Telegram can really send (any text, any ids) is translated, never dropped as malformed."""
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="adapters.telegram_translate")
    update = Update.de_json(data, BOT)  # well-typed: the library must accept it
    message = to_incoming(update, ME)
    assert not [r for r in caplog.records if MALFORMED in r.getMessage()]
    assert_well_formed(message, update)
    assert update.message is not None
    sent = update.message
    if sent.from_user is not None and not sent.from_user.is_bot and sent.sender_chat is None:
        # A person said something (text or caption, maybe empty): only another bot's command is skipped.
        assert message is not None or "@" in (sent.text or sent.caption or "")


# ---------------------------------------------------------------- the webhook, for real

WEBHOOK_SECRET = "fuzz-secret"
DATE_FIELDS = ("date", "edit_date", "forward_date")


@st.composite
def webhook_bodies(draw: st.DrawFn) -> Body:
    """What might reach the webhook: bytes, deep nesting, random JSON, mutated updates, absurd dates."""
    kind = draw(st.sampled_from(["bytes", "nested", "json", "mutated", "date", "migrate"]))
    if kind == "bytes":
        return Body(kind, draw(st.binary(max_size=2000)))
    if kind == "nested":
        depth = draw(st.sampled_from([10, 900, 1000, 5000, 50_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"message":', "}")]))
        return Body(kind, nested_json(depth, opener, closer))
    if kind == "json":
        return Body(kind, json.dumps(draw(JSON_VALUES)).encode())
    data = copy.deepcopy(SAMPLES[draw(st.sampled_from(MESSAGE_SAMPLES))])
    if kind == "mutated":
        data = mutate(draw(st.data()), data)
    elif kind == "date":
        data["message"][draw(st.sampled_from(DATE_FIELDS))] = draw(EDGE_INTS)
    else:
        data["message"]["migrate_to_chat_id"] = draw(EDGE_INTS | broken_text() | JSON_VALUES)
    return Body(kind, json.dumps(data).encode())


@pytest.fixture
async def webhook(make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A Telegram-only bot in webhook mode on FakeTelegram and the fake model; yields the webhook URL."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")  # PTB warns while building a RetryAfter otherwise
    port = free_port()
    async with FakeTelegram(flood=None) as server:
        settings = make_settings(
            telegram_bot_token=server.token,
            telegram_api_base_url=server.base_url,
            http_enabled=False,
            shutdown_timeout_s=TEARDOWN_CLOSE_S,
            telegram_mode="webhook",
            telegram_webhook_url="https://example.invalid/telegram",
            telegram_webhook_secret=WEBHOOK_SECRET,
            telegram_webhook_listen=HOST,
            telegram_webhook_port=port,
        )
        async with open_runtime(settings) as runtime:
            adapter = TelegramAdapter(runtime.core, settings)
            await adapter.start()
            try:
                yield f"http://{HOST}:{port}{WEBHOOK_PATH}"
            finally:
                await runtime.core.close(TEARDOWN_CLOSE_S)
                await adapter.stop()


@FUZZ
@given(body=webhook_bodies())
async def test_the_webhook_answers_garbage_with_400_never_500(webhook: str, body: Body) -> None:
    """A 5xx makes Telegram send the same update again and again; garbage is refused once, with 400."""
    headers = {SECRET_HEADER: WEBHOOK_SECRET, "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(webhook, data=body.data, headers=headers) as answer,
    ):
        assert answer.status in (200, 400), (answer.status, await answer.text())
        assert answer.content_type == "application/json"
        await answer.json()
