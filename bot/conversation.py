"""The conversation key: the one place that decides which messages share a context."""

from __future__ import annotations

from typing import Literal

from bot.messages import ChatKind, IncomingMessage

GroupContext = Literal["per_user", "shared"]


def conversation_key(message: IncomingMessage, group_context: GroupContext = "per_user") -> str:
    """Key of the conversation a message belongs to.

    Private chats have one context; in groups each user has their own per chat and thread,
    unless `group_context` is "shared", when the chat (or thread) has one for everybody.
    """
    parts = [chat_prefix(message.platform, message.chat_id)]
    if message.thread_id is not None:
        parts += ["thread", _escape(message.thread_id)]
    if message.chat_kind is ChatKind.GROUP and group_context == "per_user":
        parts += ["user", _escape(message.user_id)]
    return ":".join(parts)


def chat_prefix(platform: str, chat_id: str) -> str:
    """The part of every conversation key of one chat (threads and users follow it after ':')."""
    return f"{platform}:chat:{_escape(chat_id)}"


def _escape(part: str) -> str:
    """Keep ':' inside an id (an HTTP `user`, say) from forging another conversation's key."""
    return part.replace("%", "%25").replace(":", "%3A")


def user_key(message: IncomingMessage) -> str:
    """Key of the person who sent a message, for usage accounting."""
    return f"{message.platform}:{_escape(message.user_id)}"
