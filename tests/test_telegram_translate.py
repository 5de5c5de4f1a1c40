"""to_incoming: every Telegram payload sample (and mutations of them) through python-telegram-bot's parser."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from telegram import Bot, Update

from adapters.telegram_translate import BotIdentity, to_incoming
from bot.messages import ChatKind, IncomingMessage
from tests.fakes.telegram_server import DEFAULT_BOT_ID, DEFAULT_BOT_USERNAME, DEFAULT_TOKEN, FakeTelegram

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gptrelay-hypothesis")
PROPERTY = settings(
    database=None, deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)

PAYLOADS = Path(__file__).parent / "payloads" / "telegram"
SAMPLE_NAMES = sorted(path.stem for path in PAYLOADS.glob("*.json"))
# A Bot object to parse with; nothing here touches the network.
BOT = Bot(DEFAULT_TOKEN)
ME = BotIdentity(DEFAULT_BOT_ID, DEFAULT_BOT_USERNAME)
ALICE = 5100000001
GROUP = -1002100000001


def load(name: str) -> dict[str, Any]:
    """One payload sample as JSON."""
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def translate(data: dict[str, Any]) -> IncomingMessage | None:
    """Parse like the adapter does, then translate (FakeTelegram's builders leave update_id to push)."""
    return to_incoming(Update.de_json({"update_id": 1} | data, BOT), ME)


@pytest.fixture(scope="module")
def tg() -> FakeTelegram:
    """FakeTelegram's update builders (with the entities Telegram attaches); the server is not started."""
    return FakeTelegram()


def test_every_sample_has_an_expectation() -> None:
    assert sorted(EXPECTED) == SAMPLE_NAMES


# name: (chat kind, addressed, thread id, prompt text, reply_to_id, reply_to_text); None = ignored.
Expected = tuple[ChatKind, bool, str | None, str, str | None, str | None] | None
EXPECTED: dict[str, Expected] = {
    "anonymous_admin_mention": None,  # speaks as the chat, not as a person
    "channel_post": None,
    "edited_message_private": None,
    "forum_topic_mention": (
        ChatKind.GROUP,
        True,
        "42",
        "summarize the last deploy failure please",
        None,  # the topic's creation message is not a reply
        None,
    ),
    "group_command_help_addressed_to_other_bot": None,
    "group_command_help_addressed_to_us": (ChatKind.GROUP, True, None, "/help", None, None),
    "group_migrate_to_supergroup": None,  # service message
    "group_new_chat_members_bot_added": None,  # service message
    "group_photo_caption_mention": (ChatKind.GROUP, True, None, "what breed is this dog?", None, None),
    "group_reply_to_bot": (ChatKind.GROUP, True, None, "Can you make it shorter?", "2310", None),
    "group_text_no_mention": (ChatKind.GROUP, False, None, "anyone up for lunch at 12? 🍜", None, None),
    "private_emoji_rtl_entities": (
        ChatKind.PRIVATE,
        True,
        None,
        "Hi 👋🏽! Please translate مرحبا بالعالم and שלום עולם 🇮🇱🇸🇦 into English. "
        "Glossary: https://example.org/glossary 👩\u200d💻",
        None,
        None,
    ),
    "private_photo_no_caption": (ChatKind.PRIVATE, True, None, "", None, None),
    "private_start": (ChatKind.PRIVATE, True, None, "/start", None, None),
    "private_sticker": (ChatKind.PRIVATE, True, None, "", None, None),
    "private_text": (
        ChatKind.PRIVATE,
        True,
        None,
        "Hi! Can you explain what a context window is?",
        None,
        None,
    ),
    "private_text_4096": None,  # checked on its own below
    "private_voice": (ChatKind.PRIVATE, True, None, "", None, None),
    "supergroup_mention_middle": (
        ChatKind.GROUP,
        True,
        None,
        "hey what's the capital of Australia?",
        None,
        None,
    ),
    "supergroup_reply_with_quote_mention": (
        ChatKind.GROUP,
        True,
        None,
        "is this actually true?",
        "18405",
        "visible from the Moon with the naked eye",  # the quoted part, not Bob's whole message
    ),
    "supergroup_text_mention_other_user": (
        ChatKind.GROUP,
        False,
        None,
        "Dana can you take a look at the flaky test on main?",
        None,
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - {"private_text_4096"}))
def test_sample(name: str) -> None:
    data = load(name)
    message = translate(data)
    expected = EXPECTED[name]
    if expected is None:
        assert message is None
        return
    assert message is not None
    got = (
        message.chat_kind,
        message.addressed,
        message.thread_id,
        message.text,
        message.reply_to_id,
        message.reply_to_text,
    )
    assert got == expected
    sent = data["message"]
    assert message.platform == "telegram"
    assert message.chat_id == str(sent["chat"]["id"])
    assert message.user_id == str(sent["from"]["id"])
    assert message.message_id == str(sent["message_id"])
    assert message.language == sent["from"].get("language_code")
    assert message.user_name
    assert message.role_ids == ()  # identity data only; the core decides admins
    assert isinstance(message.raw, Update)


def test_a_4096_character_private_text_is_kept_whole() -> None:
    data = load("private_text_4096")
    message = translate(data)
    assert message is not None
    assert (message.chat_kind, message.addressed) == (ChatKind.PRIVATE, True)
    assert message.text == data["message"]["text"].strip()
    assert len(data["message"]["text"]) == 4096


def test_mention_after_emoji_is_cut_at_utf16_offsets(tg: FakeTelegram) -> None:
    # Four astral characters (8 UTF-16 units) before the mention: code-point offsets would cut "hey".
    data = tg.group_text(GROUP, ALICE, "👋🏽🇫🇷 hey @gptrelay_test_bot what's 2+2? 🤔")
    assert data["message"]["entities"] == [{"offset": 13, "length": 18, "type": "mention"}]
    message = translate(data)
    assert message is not None
    assert message.addressed
    assert message.text == "👋🏽🇫🇷 hey what's 2+2? 🤔"


def test_mention_of_the_bot_is_case_insensitive(tg: FakeTelegram) -> None:
    message = translate(tg.group_text(GROUP, ALICE, "@GPTRelay_Test_Bot hello"))
    assert message is not None
    assert (message.addressed, message.text) == (True, "hello")


def test_mention_of_another_user_does_not_address_the_bot(tg: FakeTelegram) -> None:
    message = translate(tg.group_text(GROUP, ALICE, "@bob_k what do you think?"))
    assert message is not None
    assert (message.addressed, message.text) == (False, "@bob_k what do you think?")


def test_text_mention_of_the_bot_addresses_it(tg: FakeTelegram) -> None:
    bot_user = {"id": DEFAULT_BOT_ID, "is_bot": True, "first_name": "GPT Relay (test)"}
    entity = {"offset": 3, "length": 9, "type": "text_mention", "user": bot_user}
    message = translate(tg.group_text(GROUP, ALICE, "🙂 GPT Relay, what is 2+2?", entities=[entity]))
    assert message is not None
    assert message.addressed
    assert message.text == "🙂 , what is 2+2?"


def test_text_mention_of_someone_else_does_not_address_the_bot(tg: FakeTelegram) -> None:
    dana = {"id": 5100000004, "is_bot": False, "first_name": "Dana"}
    entity = {"offset": 0, "length": 4, "type": "text_mention", "user": dana}
    message = translate(tg.group_text(GROUP, ALICE, "Dana, lunch?", entities=[entity]))
    assert message is not None
    assert not message.addressed


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        ("/help@gptrelay_test_bot", "/help"),
        ("/help@GPTRELAY_TEST_BOT", "/help"),
        ("/model@gptrelay_test_bot gpt-4o", "/model gpt-4o"),
        ("/help", "/help"),
    ],
)
def test_commands_for_us_are_normalised(tg: FakeTelegram, text: str, prompt: str) -> None:
    message = translate(tg.group_text(GROUP, ALICE, text))
    assert message is not None
    assert (message.addressed, message.text) == (True, prompt)


@pytest.mark.parametrize("text", ["/help@other_helper_bot", "/start@other_helper_bot now"])
def test_commands_for_another_bot_are_ignored(tg: FakeTelegram, text: str) -> None:
    assert translate(tg.group_text(GROUP, ALICE, text)) is None
    assert translate(tg.private_text(ALICE, text)) is None


def test_reply_to_someone_else_carries_their_text(tg: FakeTelegram) -> None:
    bob = {"message_id": 7, "from": {"id": 5100000002, "is_bot": False, "first_name": "Bob"}, "date": 0}
    bob |= {"chat": {"id": GROUP, "type": "supergroup", "title": "G"}, "text": "Pluto is a planet"}
    message = translate(tg.group_text(GROUP, ALICE, "@gptrelay_test_bot true?", reply_to=bob))
    assert message is not None
    assert (message.reply_to_id, message.reply_to_text, message.text) == ("7", "Pluto is a planet", "true?")


@pytest.mark.parametrize("name", ["private_sticker", "private_photo_no_caption", "private_voice"])
def test_non_text_is_addressed_in_private_but_not_in_groups(name: str) -> None:
    private = translate(load(name))
    assert private is not None
    assert (private.chat_kind, private.addressed, private.text) == (ChatKind.PRIVATE, True, "")
    data = copy.deepcopy(load(name))
    data["message"]["chat"] = {"id": GROUP, "title": "Relay Test Supergroup", "type": "supergroup"}
    in_group = translate(data)
    assert in_group is not None
    assert (in_group.chat_kind, in_group.addressed, in_group.text) == (ChatKind.GROUP, False, "")


def test_a_service_message_in_private_is_ignored() -> None:
    data = copy.deepcopy(load("private_text"))
    pinned = copy.deepcopy(data["message"])
    del data["message"]["text"]
    data["message"]["pinned_message"] = pinned  # "Alice pinned a message": nobody asked anything
    assert translate(data) is None


def test_other_bots_are_ignored(tg: FakeTelegram) -> None:
    data = tg.group_text(GROUP, 7000000099, "@gptrelay_test_bot ping", first_name="Helper")
    data["message"]["from"]["is_bot"] = True
    assert translate(data) is None


# ---------------------------------------------------------------- robustness

# Each key is dropped, replaced or nudged with a chance of 1 in MUTATION_ODDS + 1 each.
MUTATION_ODDS = 29
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def mutate(data: st.DataObject, value: Any) -> Any:
    """Drop some keys, replace some values with random JSON, nudge some integers (entity offsets)."""
    if isinstance(value, dict):
        mutated: dict[str, Any] = {}
        for key, item in value.items():
            action = data.draw(st.integers(0, MUTATION_ODDS))
            if action == 0:
                continue
            if action == 1:
                mutated[key] = data.draw(JSON_VALUES)
            elif action == 2 and isinstance(item, int) and not isinstance(item, bool):
                mutated[key] = item + data.draw(st.integers(-3, 3))
            else:
                mutated[key] = mutate(data, item)
        return mutated
    if isinstance(value, list):
        return [mutate(data, item) for item in value]
    return value


@PROPERTY
@given(name=st.sampled_from(SAMPLE_NAMES), data=st.data())
def test_mutated_samples_never_make_to_incoming_raise(name: str, data: st.DataObject) -> None:
    mutated = mutate(data, load(name))
    try:
        update = Update.de_json(mutated, BOT)
    except Exception:  # python-telegram-bot refuses it: not a translation problem
        return
    message = to_incoming(update, ME)
    assert message is None or isinstance(message.text, str)
