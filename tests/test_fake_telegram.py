"""The fake Telegram Bot API, driven by the real python-telegram-bot ``Bot`` and ``Application``."""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeAllPrivateChats,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
)
from telegram.ext import Application, ApplicationBuilder, ContextTypes, MessageHandler, filters

from tests.fakes.telegram_server import (
    CHAT_NOT_FOUND,
    FakeTelegram,
    FloodRules,
    mention_entities,
    parse_html,
    parse_markdown_v2,
    utf16_len,
)

TOKEN = "7000000001:AAFakeTokenForGptrelayTests0000000000"
BOT_ID = 7000000001
BOT_USERNAME = "gptrelay_test_bot"
ALICE = 5100000001
BOB = 5100000002
SUPERGROUP = -1002100000001
FORUM = -1002100000002
# Copied from shared/payloads (validated samples), so the suite needs nothing outside the repo.
PAYLOADS = Path(__file__).parent / "payloads" / "telegram"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    """A running fake Bot API with the default flood rules."""
    async with FakeTelegram(token=TOKEN, bot_username=BOT_USERNAME, bot_id=BOT_ID) as fake:
        yield fake


def make_bot(fake: FakeTelegram, token: str = TOKEN) -> Bot:
    """The real PTB Bot pointed at the fake."""
    return Bot(token, base_url=fake.base_url, base_file_url=fake.base_file_url)


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    """An initialized Bot talking to ``tg``."""
    async with make_bot(tg) as real_bot:
        yield real_bot


@pytest.fixture
def clock() -> FakeClock:
    """A clock for flood control tests."""
    return FakeClock()


@pytest.fixture
async def flood_tg(clock: FakeClock) -> AsyncIterator[FakeTelegram]:
    """A fake whose flood control runs on ``clock``."""
    async with FakeTelegram(token=TOKEN, clock=clock) as fake:
        yield fake


@pytest.fixture(autouse=True)
def timedelta_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """PTB warns when ``RetryAfter.retry_after`` is read as an int; read it as a timedelta."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")


def load_samples() -> list[dict[str, Any]]:
    """Every Telegram payload sample, in update_id order."""
    samples = [json.loads(path.read_text(encoding="utf-8")) for path in PAYLOADS.glob("*.json")]
    return sorted(samples, key=lambda data: data["update_id"])


async def raw_post(fake: FakeTelegram, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """POST with plain aiohttp; return the status and the JSON body."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{fake.port}{path}", **kwargs) as response,
    ):
        return response.status, await response.json()


# ---------------------------------------------------------------- protocol


async def test_get_me_returns_the_bot(bot: Bot, tg: FakeTelegram) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username, me.first_name) == (BOT_ID, True, BOT_USERNAME, "GPT Relay (test)")
    assert me.can_join_groups is True
    assert me.can_read_all_group_messages is False
    assert me.supports_inline_queries is False
    assert me.api_kwargs == {}
    assert [call.method for call in tg.calls] == ["getMe", "getMe"]  # initialize() + get_me()


async def test_wrong_token_is_401_and_invalid_token(tg: FakeTelegram) -> None:
    status, body = await raw_post(tg, "/bot1:wrong/getMe")
    assert (status, body) == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    with pytest.raises(InvalidToken):
        async with make_bot(tg, token="1:wrong"):
            pass


async def test_unknown_method_is_404(bot: Bot, tg: FakeTelegram) -> None:
    status, body = await raw_post(tg, f"/bot{TOKEN}/sendTelepathy")
    assert status == 404
    assert body == {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("sendTelepathy")


async def test_form_fields_are_json_decoded_and_json_bodies_accepted(tg: FakeTelegram) -> None:
    form = {
        "chat_id": str(ALICE),
        "text": "123",
        "entities": json.dumps([{"type": "bold", "offset": 0, "length": 3}]),
    }
    status, body = await raw_post(tg, f"/bot{TOKEN}/sendMessage", data=form)
    assert status == 200
    assert body["result"]["text"] == "123"
    status, body = await raw_post(tg, f"/bot{TOKEN}/sendMessage", json={"chat_id": ALICE, "text": "json"})
    assert status == 200
    first, second = tg.calls_of("sendmessage")
    assert first.params == {
        "chat_id": ALICE,
        "text": "123",
        "entities": [{"type": "bold", "offset": 0, "length": 3}],
    }
    assert second.params == {"chat_id": ALICE, "text": "json"}
    assert first.at <= second.at


# ---------------------------------------------------------------- sending and editing


async def test_send_message_is_stored_as_a_real_message(bot: Bot, tg: FakeTelegram) -> None:
    first = await bot.send_message(ALICE, "Hello")
    second = await bot.send_message(ALICE, "again")
    other = await bot.send_message(BOB, "Bob")
    assert (first.message_id, second.message_id, other.message_id) == (1, 2, 1)
    assert first.chat.type == "private"
    assert first.from_user is not None
    assert first.from_user.id == BOT_ID
    assert first.text == "Hello"
    assert tg.texts(ALICE) == ["Hello", "again"]
    assert tg.messages(ALICE)[0]["from"]["username"] == BOT_USERNAME


async def test_bot_message_ids_follow_the_pushed_ones(bot: Bot, tg: FakeTelegram) -> None:
    tg.push_update(tg.private_text(ALICE, "hi", first_name="Alice", message_id=101))
    reply = await bot.send_message(ALICE, "hello", reply_parameters=ReplyParameters(101))
    assert reply.message_id == 102
    assert reply.reply_to_message is not None
    assert reply.reply_to_message.text == "hi"
    assert reply.chat.first_name == "Alice"


async def test_reply_in_a_forum_topic(bot: Bot, tg: FakeTelegram) -> None:
    tg.push_json_file(PAYLOADS / "forum_topic_mention.json")
    sent = await bot.send_message(FORUM, "ok", message_thread_id=42, reply_parameters=ReplyParameters(57))
    assert sent.message_thread_id == 42
    assert sent.is_topic_message is True
    assert sent.chat.is_forum is True
    assert sent.reply_to_message is not None
    assert sent.reply_to_message.message_id == 57
    assert tg.messages(FORUM)[0]["message_thread_id"] == 42
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(FORUM, "ok", reply_parameters=ReplyParameters(9999))


async def test_edit_message_text_changes_the_stored_message(bot: Bot, tg: FakeTelegram) -> None:
    sent = await bot.send_message(ALICE, "draft")
    bold = [MessageEntity(MessageEntity.BOLD, 0, 5)]
    edited = await bot.edit_message_text("final", chat_id=ALICE, message_id=sent.message_id, entities=bold)
    assert isinstance(edited, type(sent))
    assert edited.text == "final"
    assert edited.edit_date is not None
    assert edited.entities == tuple(bold)
    assert tg.texts(ALICE) == ["final"]
    assert tg.messages(ALICE)[0]["entities"] == [{"type": "bold", "offset": 0, "length": 5}]


async def test_drafts_in_private_chats_only(bot: Bot, tg: FakeTelegram) -> None:
    assert await bot.send_message_draft(ALICE, 7, "Hel") is True
    assert await bot.send_message_draft(ALICE, 7, "Hello") is True
    assert tg.drafts(ALICE) == ["Hel", "Hello"]
    assert tg.messages(ALICE) == []
    tg.add_chat(SUPERGROUP)
    with pytest.raises(BadRequest, match=r"(?i)textdraft_peer_invalid"):
        await bot.send_message_draft(SUPERGROUP, 7, "no")
    with pytest.raises(BadRequest, match=r"(?i)random_id_invalid"):
        await bot.send_message_draft(ALICE, 0, "no")


async def test_chat_action_and_commands(bot: Bot, tg: FakeTelegram) -> None:
    assert await bot.send_chat_action(ALICE, "typing") is True
    commands = [BotCommand("start", "Start"), BotCommand("reset", "Forget the conversation")]
    assert await bot.set_my_commands(commands) is True
    private = BotCommandScopeAllPrivateChats()
    assert await bot.set_my_commands(commands[:1], scope=private) is True
    assert await bot.get_my_commands() == tuple(commands)
    assert await bot.get_my_commands(scope=private) == tuple(commands[:1])
    assert tg.commands({"type": "all_private_chats"}) == [{"command": "start", "description": "Start"}]
    assert await bot.delete_my_commands() is True
    assert await bot.get_my_commands() == ()
    with pytest.raises(BadRequest, match=r"(?i)bot_command_invalid"):
        await bot.set_my_commands([BotCommand("Bad-Command", "no")])


async def test_webhook_is_stored_and_blocks_get_updates(bot: Bot, tg: FakeTelegram) -> None:
    assert await bot.set_webhook("https://relay.example/hook", secret_token="s3cret") is True
    assert (tg.webhook_url, tg.webhook_secret) == ("https://relay.example/hook", "s3cret")
    assert (await bot.get_webhook_info()).url == "https://relay.example/hook"
    with pytest.raises(Conflict):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook() is True
    assert (await bot.get_webhook_info()).url == ""
    with pytest.raises(BadRequest, match=r"(?i)https url"):
        await bot.set_webhook("http://relay.example/hook")
    assert await bot.close() is True
    assert await bot.log_out() is True


# ---------------------------------------------------------------- updates


async def test_get_updates_confirms_by_offset(bot: Bot, tg: FakeTelegram) -> None:
    first = tg.push_update(tg.private_text(ALICE, "one"))
    second = tg.push_update(tg.private_text(ALICE, "two"))
    assert second["update_id"] == first["update_id"] + 1
    updates = await bot.get_updates(timeout=0)
    assert [u.message.text for u in updates if u.message] == ["one", "two"]
    # Not confirmed yet: the same updates come again.
    assert len(await bot.get_updates(timeout=0, limit=1)) == 1
    assert len(await bot.get_updates(offset=second["update_id"], timeout=0)) == 1
    assert tg.confirmed_offset == second["update_id"]
    assert await bot.get_updates(offset=second["update_id"] + 1, timeout=0) == ()
    assert tg.pending_updates == 0
    assert tg.confirmed_offset == second["update_id"] + 1


async def test_get_updates_negative_offset_keeps_the_last(bot: Bot, tg: FakeTelegram) -> None:
    for text in ("a", "b", "c"):
        tg.push_update(tg.private_text(ALICE, text))
    updates = await bot.get_updates(offset=-1, timeout=0)
    assert [u.message.text for u in updates if u.message] == ["c"]


async def test_long_poll_answers_as_soon_as_an_update_is_pushed(bot: Bot, tg: FakeTelegram) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    tg.push_update(tg.private_text(ALICE, "wake up"))
    updates = await asyncio.wait_for(poll, 2)
    assert [u.message.text for u in updates if u.message] == ["wake up"]
    assert time.monotonic() - started < 1.0


async def test_long_poll_times_out_empty(bot: Bot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert 0.9 <= time.monotonic() - started < 1.5


async def test_a_second_poll_ends_the_first_with_conflict(bot: Bot, tg: FakeTelegram) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.05)
    status, body = await raw_post(tg, f"/bot{TOKEN}/getUpdates", data={"timeout": "0"})
    assert (status, body["result"]) == (200, [])
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await asyncio.wait_for(poll, 2)


async def test_payload_samples_parse_as_updates(bot: Bot, tg: FakeTelegram) -> None:
    samples = load_samples()
    for sample in samples:
        tg.push_update(sample)
    updates = await bot.get_updates(timeout=0)
    assert [u.update_id for u in updates] == [s["update_id"] for s in samples]
    for update, sample in zip(updates, samples, strict=True):
        assert update.effective_chat is not None
        kind = next(key for key in sample if key != "update_id")
        assert update.effective_chat.id == sample[kind]["chat"]["id"]


async def test_pushed_sample_keeps_its_fields(bot: Bot, tg: FakeTelegram) -> None:
    tg.push_json_file(PAYLOADS / "supergroup_mention_middle.json")
    (update,) = await bot.get_updates(timeout=0)
    assert isinstance(update, Update)
    message = update.message
    assert message is not None
    assert (update.update_id, message.message_id, message.chat.type) == (870100004, 18402, "supergroup")
    assert message.from_user is not None
    assert message.from_user.username == "alice_moreau"
    assert list(message.parse_entities([MessageEntity.MENTION]).values()) == ["@gptrelay_test_bot"]


async def test_group_text_helper_matches_telegram(bot: Bot, tg: FakeTelegram) -> None:
    text = "🎉 hi @gptrelay_test_bot, and @bob_k!"
    assert mention_entities(text) == [
        {"offset": 6, "length": 18, "type": "mention"},
        {"offset": 30, "length": 6, "type": "mention"},
    ]
    tg.push_update(tg.group_text(FORUM, ALICE, text, thread_id=42))
    tg.push_update(tg.group_text(SUPERGROUP, BOB, "/help@gptrelay_test_bot"))
    topic, command = await bot.get_updates(timeout=0)
    assert topic.message is not None
    mentions = topic.message.parse_entities([MessageEntity.MENTION])
    assert list(mentions.values()) == ["@gptrelay_test_bot", "@bob_k"]
    assert topic.message.is_topic_message is True
    assert topic.message.message_thread_id == 42
    assert topic.message.reply_to_message is not None
    assert topic.message.reply_to_message.forum_topic_created is not None
    assert command.message is not None
    assert list(command.message.parse_entities().items()) == [
        (MessageEntity(MessageEntity.BOT_COMMAND, 0, 23), "/help@gptrelay_test_bot")
    ]
    # Pushed groups are known: the bot can answer there.
    answer = await bot.send_message(
        SUPERGROUP, "help", reply_parameters=ReplyParameters(command.message.message_id)
    )
    assert answer.message_id == command.message.message_id + 1


async def test_application_initializes_and_polls(tg: FakeTelegram) -> None:
    app = ApplicationBuilder().token(TOKEN).base_url(tg.base_url).base_file_url(tg.base_file_url).build()
    tg.push_update(tg.private_text(ALICE, "direct"))
    async with app:
        assert app.bot.username == BOT_USERNAME
        (update,) = await app.bot.get_updates(timeout=0)
        assert update.message is not None
        assert update.message.text == "direct"
        await app.bot.get_updates(offset=update.update_id + 1, timeout=0)
        await echo_through_the_updater(app, tg)
    assert tg.pending_updates == 0


async def echo_through_the_updater(app: Application[Any, Any, Any, Any, Any, Any], tg: FakeTelegram) -> None:
    """Run the real Updater against the fake: one pushed message is answered."""
    answered = asyncio.Event()

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text(f"echo: {update.message.text}")
        answered.set()

    app.add_handler(MessageHandler(filters.TEXT, echo))
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling(timeout=1)
    tg.push_update(tg.private_text(ALICE, "through polling"))
    await asyncio.wait_for(answered.wait(), 2)
    await app.updater.stop()
    await app.stop()
    assert tg.texts(ALICE) == ["echo: through polling"]


# ---------------------------------------------------------------- Telegram's errors


async def test_edit_to_the_same_content_is_not_modified(bot: Bot) -> None:
    sent = await bot.send_message(ALICE, "same", entities=[MessageEntity(MessageEntity.BOLD, 0, 4)])
    with pytest.raises(BadRequest) as caught:
        await bot.edit_message_text(
            "same",
            chat_id=ALICE,
            message_id=sent.message_id,
            entities=[MessageEntity(MessageEntity.BOLD, 0, 4)],
        )
    assert caught.value.message.lower().startswith("message is not modified: specified new message content")
    # New entities alone are a change.
    await bot.edit_message_text("same", chat_id=ALICE, message_id=sent.message_id)


async def test_empty_text_is_refused(bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)^message text is empty$"):
        await bot.send_message(ALICE, " \n ")


async def test_length_limit_counts_utf16_units(bot: Bot) -> None:
    await bot.send_message(ALICE, "a" * 4096)
    await bot.send_message(ALICE, "😀" * 2048)  # 4096 UTF-16 code units
    with pytest.raises(BadRequest, match=r"(?i)^message is too long$"):
        await bot.send_message(ALICE, "😀" * 2048 + "a")
    sent = await bot.send_message(ALICE, "short")
    with pytest.raises(BadRequest, match=r"(?i)^message_too_long$"):
        await bot.edit_message_text("a" * 4097, chat_id=ALICE, message_id=sent.message_id)


async def test_length_limit_applies_after_entity_parsing(bot: Bot) -> None:
    sent = await bot.send_message(ALICE, "*" + "a" * 4096 + "*", parse_mode="MarkdownV2")
    assert sent.text == "a" * 4096
    assert sent.entities == (MessageEntity(MessageEntity.BOLD, 0, 4096),)


async def test_entities_must_lie_inside_the_text(bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)^can't parse entities: .*beyond the end"):
        await bot.send_message(ALICE, "hello", entities=[MessageEntity(MessageEntity.BOLD, 0, 6)])
    # "😀x": the emoji is two UTF-16 units; offset 1 would cut it in half.
    with pytest.raises(BadRequest, match=r"(?i)^can't parse entities: .*surrogate"):
        await bot.send_message(ALICE, "😀x", entities=[MessageEntity(MessageEntity.BOLD, 1, 2)])
    sent = await bot.send_message(ALICE, "😀x", entities=[MessageEntity(MessageEntity.BOLD, 2, 1)])
    assert sent.parse_entities() == {MessageEntity(MessageEntity.BOLD, 2, 1): "x"}


async def test_markdown_v2_is_parsed_and_checked(bot: Bot) -> None:
    sent = await bot.send_message(
        ALICE, "*bold* and _it_ \\. [link](https://example.com)", parse_mode="MarkdownV2"
    )
    assert sent.text == "bold and it . link"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [
        ("bold", 0, 4),
        ("italic", 9, 2),
        ("text_link", 14, 4),
    ]
    with pytest.raises(BadRequest, match=r"(?i)^can't parse entities: character '\.' is reserved"):
        await bot.send_message(ALICE, "Hello.", parse_mode="MarkdownV2")
    with pytest.raises(
        BadRequest, match=r"(?i)^can't parse entities: can't find end of bold entity at byte offset 0"
    ):
        await bot.send_message(ALICE, "*unclosed", parse_mode="MarkdownV2")


async def test_html_is_parsed_and_checked(bot: Bot) -> None:
    sent = await bot.send_message(ALICE, "<b>x</b> &amp; <code>y</code>", parse_mode="HTML")
    assert sent.text == "x & y"
    assert [(e.type, e.offset, e.length) for e in sent.entities] == [("bold", 0, 1), ("code", 4, 1)]
    with pytest.raises(
        BadRequest, match=r"(?i)^can't parse entities: can't find end tag corresponding to start tag"
    ):
        await bot.send_message(ALICE, "<b>open", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r'(?i)^can\'t parse entities: unsupported start tag ""'):
        await bot.send_message(ALICE, "1 < 2", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)^can't parse entities: can't find end of the entity"):
        await bot.send_message(ALICE, "*open", parse_mode="Markdown")


def test_parsers_count_utf16_offsets() -> None:
    text, entities = parse_markdown_v2("😀 *b* ```python\nprint()\n```")
    assert text == "😀 b print()\n"
    assert entities == [
        {"offset": 3, "length": 1, "type": "bold"},
        {"offset": 5, "length": 8, "type": "pre", "language": "python"},
    ]
    assert utf16_len(text) == 13
    text, entities = parse_html(
        '<pre><code class="language-go">x</code></pre><blockquote expandable>q</blockquote>'
    )
    assert text == "xq"
    assert entities == [
        {"offset": 0, "length": 1, "type": "pre", "language": "go"},
        {"offset": 1, "length": 1, "type": "expandable_blockquote"},
    ]


async def test_edit_of_a_missing_message_and_unknown_chats(bot: Bot, tg: FakeTelegram) -> None:
    with pytest.raises(BadRequest, match=r"(?i)^message to edit not found$"):
        await bot.edit_message_text("x", chat_id=ALICE, message_id=999)
    with pytest.raises(BadRequest, match=r"(?i)^chat not found$"):
        await bot.send_message(-1002999999999, "anyone?")
    tg.add_chat(-1002999999999, title="Known now")
    sent = await bot.send_message(-1002999999999, "hello")
    assert (sent.chat.type, sent.chat.title) == ("supergroup", "Known now")
    assert CHAT_NOT_FOUND.endswith("chat not found")


async def test_write_to_a_migrated_group_raises_chat_migrated(bot: Bot, tg: FakeTelegram) -> None:
    tg.push_json_file(PAYLOADS / "group_migrate_to_supergroup.json")
    with pytest.raises(ChatMigrated) as caught:
        await bot.send_message(-4100000002, "hello")
    assert caught.value.new_chat_id == -1002100000004
    await bot.send_message(-1002100000004, "hello")


# ---------------------------------------------------------------- flood control


async def send_or_retry_after(bot: Bot, chat_id: int, text: str) -> int | None:
    """Send; return None, or the retry_after seconds of a 429."""
    try:
        await bot.send_message(chat_id, text)
    except RetryAfter as exc:
        retry_after = exc.retry_after
    else:
        return None
    return int(retry_after.total_seconds()) if isinstance(retry_after, dtm.timedelta) else -1


async def test_flood_per_chat_allows_a_burst_of_3_then_1_per_second(
    flood_tg: FakeTelegram, clock: FakeClock
) -> None:
    async with make_bot(flood_tg) as bot:
        assert [await send_or_retry_after(bot, ALICE, f"m{i}") for i in range(3)] == [None, None, None]
        assert await send_or_retry_after(bot, ALICE, "too fast") == 1
        assert flood_tg.flood_errors == 1
        assert flood_tg.texts(ALICE) == ["m0", "m1", "m2"]  # the refused write was not applied
        assert await send_or_retry_after(bot, BOB, "other chat") is None
        clock.advance(0.5)
        assert await send_or_retry_after(bot, ALICE, "half a token") == 1
        clock.advance(0.5)
        assert await send_or_retry_after(bot, ALICE, "one token") is None
        for _ in range(5):  # steady 1/s passes forever
            clock.advance(1.0)
            assert await send_or_retry_after(bot, ALICE, "steady") is None
        assert flood_tg.flood_errors == 2


async def test_flood_edits_and_drafts_count(flood_tg: FakeTelegram, clock: FakeClock) -> None:
    async with make_bot(flood_tg) as bot:
        sent = await bot.send_message(ALICE, "v0")
        await bot.edit_message_text("v1", chat_id=ALICE, message_id=sent.message_id)
        await bot.send_message_draft(ALICE, 1, "d")
        with pytest.raises(RetryAfter):
            await bot.edit_message_text("v2", chat_id=ALICE, message_id=sent.message_id)
        assert flood_tg.texts(ALICE) == ["v1"]
    rules = FloodRules(count_drafts=False)
    async with FakeTelegram(token=TOKEN, clock=clock, flood=rules) as fake, make_bot(fake) as bot:
        for i in range(10):
            await bot.send_message_draft(ALICE, 1, f"d{i}")
        assert fake.flood_errors == 0


async def test_flood_group_allows_20_per_minute(clock: FakeClock) -> None:
    rules = FloodRules(per_chat_per_s=None)
    async with FakeTelegram(token=TOKEN, clock=clock, flood=rules) as fake, make_bot(fake) as bot:
        fake.add_chat(SUPERGROUP)
        for _ in range(20):
            assert await send_or_retry_after(bot, SUPERGROUP, "x") is None
            clock.advance(1.0)
        clock.advance(20.5)  # 40.5 s after the first write
        assert await send_or_retry_after(bot, SUPERGROUP, "21st") == 20
        clock.advance(19.49)
        assert await send_or_retry_after(bot, SUPERGROUP, "21st") == 1
        clock.advance(0.01)  # exactly 60 s after the first write: it left the window
        assert await send_or_retry_after(bot, SUPERGROUP, "21st") is None
        assert await send_or_retry_after(bot, ALICE, "private chats are not groups") is None
        assert fake.flood_errors == 2


async def test_flood_global_allows_30_per_second(clock: FakeClock) -> None:
    rules = FloodRules(per_chat_per_s=None, per_group_per_min=None)
    async with FakeTelegram(token=TOKEN, clock=clock, flood=rules) as fake, make_bot(fake) as bot:
        for user in range(30):
            assert await send_or_retry_after(bot, ALICE + user, "x") is None
        assert await send_or_retry_after(bot, BOB + 100, "31st") == 1
        clock.advance(0.999)
        assert await send_or_retry_after(bot, BOB + 100, "31st") == 1
        clock.advance(0.001)
        assert await send_or_retry_after(bot, BOB + 100, "31st") is None


async def test_flood_drafts_count_per_chat_but_not_bot_wide(clock: FakeClock) -> None:
    rules = FloodRules(per_group_per_min=None)
    async with FakeTelegram(token=TOKEN, clock=clock, flood=rules) as fake, make_bot(fake) as bot:
        for user in range(30):
            assert await send_or_retry_after(bot, ALICE + user, "x") is None
        # The bot-wide budget is spent on messages, yet other chats' previews still pass...
        for user in range(30, 40):
            await bot.send_message_draft(ALICE + user, 1, "preview")
        assert await send_or_retry_after(bot, BOB + 100, "31st message") == 1
        # ...while each draft still counts against its own chat.
        for _ in range(2):
            await bot.send_message_draft(ALICE + 30, 1, "more")
        with pytest.raises(RetryAfter):
            await bot.send_message_draft(ALICE + 30, 1, "4th write in the chat at once")
        assert fake.flood_errors == 2
    rules = FloodRules(per_chat_per_s=None, per_group_per_min=None, drafts_in_global=True)
    async with FakeTelegram(token=TOKEN, clock=clock, flood=rules) as fake, make_bot(fake) as bot:
        for user in range(30):
            await bot.send_message_draft(ALICE + user, 1, "preview")
        assert await send_or_retry_after(bot, BOB + 100, "31st write") == 1


async def test_flood_none_disables_the_rules() -> None:
    async with FakeTelegram(token=TOKEN, flood=None) as fake, make_bot(fake) as bot:
        for i in range(40):
            await bot.send_message(ALICE, f"m{i}")
        assert fake.flood_errors == 0
        assert len(fake.messages(ALICE)) == 40


# ---------------------------------------------------------------- scripted failures


async def test_fail_next_scripts_errors(bot: Bot, tg: FakeTelegram) -> None:
    tg.fail_next("sendMessage", 429, retry_after=2)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(ALICE, "x")
    assert caught.value.retry_after == dtm.timedelta(seconds=2)
    tg.fail_next("sendMessage", status=500)
    with pytest.raises(NetworkError, match="Internal Server Error"):
        await bot.send_message(ALICE, "x")
    sent = await bot.send_message(ALICE, "applied")
    tg.fail_next("editMessageText", status=400, description="message can't be edited", times=2)
    for _ in range(2):
        with pytest.raises(BadRequest, match=r"(?i)^message can't be edited$"):
            await bot.edit_message_text("y", chat_id=ALICE, message_id=sent.message_id)
    tg.fail_next("sendChatAction", status=403)
    with pytest.raises(Forbidden, match="bot was blocked by the user"):
        await bot.send_chat_action(ALICE, "typing")
    assert tg.texts(ALICE) == ["applied"]
    assert tg.flood_errors == 0
    assert [call.status for call in tg.calls_of("sendMessage")] == [429, 500, 200]
