"""conversation_key: which messages share a context."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bot.conversation import GroupContext, conversation_key, user_key
from bot.messages import ChatKind, IncomingMessage


def message(
    chat_kind: ChatKind = ChatKind.PRIVATE,
    chat_id: str = "100",
    user_id: str = "7",
    thread_id: str | None = None,
    platform: str = "telegram",
) -> IncomingMessage:
    """A plain text message with only the fields the key depends on varied."""
    return IncomingMessage(
        platform=platform,
        chat_id=chat_id,
        chat_kind=chat_kind,
        user_id=user_id,
        user_name="Ada",
        message_id="1",
        text="hello",
        addressed=True,
        thread_id=thread_id,
    )


def test_private_chat_key_has_no_user_part() -> None:
    key = conversation_key(message(ChatKind.PRIVATE, chat_id="100", user_id="7"))
    assert key == "telegram:chat:100"
    assert "user" not in key


@pytest.mark.parametrize("group_context", ["per_user", "shared"])
def test_private_chat_ignores_group_context(group_context: GroupContext) -> None:
    private = message(ChatKind.PRIVATE)
    assert conversation_key(private, group_context) == "telegram:chat:100"


def test_group_per_user_includes_user() -> None:
    key = conversation_key(message(ChatKind.GROUP, chat_id="-500", user_id="7"), "per_user")
    assert key == "telegram:chat:-500:user:7"


def test_group_default_is_per_user() -> None:
    group = message(ChatKind.GROUP, user_id="7")
    assert conversation_key(group) == conversation_key(group, "per_user")


def test_group_shared_excludes_user() -> None:
    key = conversation_key(message(ChatKind.GROUP, chat_id="-500", user_id="7"), "shared")
    assert key == "telegram:chat:-500"
    other_user = message(ChatKind.GROUP, chat_id="-500", user_id="8")
    assert conversation_key(other_user, "shared") == key


def test_two_users_in_one_group_differ() -> None:
    ada = message(ChatKind.GROUP, chat_id="-500", user_id="7")
    bob = replace(ada, user_id="8", user_name="Bob")
    assert conversation_key(ada) != conversation_key(bob)


def test_same_user_in_two_groups_differs() -> None:
    here = message(ChatKind.GROUP, chat_id="-500", user_id="7")
    there = replace(here, chat_id="-600")
    assert conversation_key(here) != conversation_key(there)


@pytest.mark.parametrize("group_context", ["per_user", "shared"])
def test_threads_are_separate(group_context: GroupContext) -> None:
    main = message(ChatKind.GROUP, chat_id="-500")
    topic_a = replace(main, thread_id="11")
    topic_b = replace(main, thread_id="12")
    keys = {conversation_key(m, group_context) for m in (main, topic_a, topic_b)}
    assert len(keys) == 3
    assert conversation_key(topic_a, group_context).startswith("telegram:chat:-500:thread:11")


def test_thread_and_user_both_in_per_user_key() -> None:
    key = conversation_key(message(ChatKind.GROUP, chat_id="-500", user_id="7", thread_id="11"))
    assert key == "telegram:chat:-500:thread:11:user:7"


def test_thread_in_private_chat_is_separate() -> None:
    plain = message(ChatKind.PRIVATE)
    threaded = replace(plain, thread_id="3")
    assert conversation_key(threaded) == "telegram:chat:100:thread:3"
    assert conversation_key(threaded) != conversation_key(plain)


def test_platforms_do_not_share_keys() -> None:
    telegram = message(platform="telegram")
    discord = replace(telegram, platform="discord")
    assert conversation_key(telegram) != conversation_key(discord)
    assert user_key(telegram) == "telegram:7"
    assert user_key(discord) == "discord:7"


def test_key_ignores_message_text_and_id() -> None:
    first = message(ChatKind.GROUP)
    later = replace(first, message_id="2", text="something else", addressed=False)
    assert conversation_key(first) == conversation_key(later)
