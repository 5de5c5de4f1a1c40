"""One pure function from a Telegram Update to the neutral message."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from telegram import Message, MessageEntity, Update
from telegram.constants import ChatType

from bot.messages import ChatKind, IncomingMessage, well_formed

logger = logging.getLogger(__name__)

PLATFORM = "telegram"
# Telegram's fixed service accounts: anonymous group admins and channel forwards.
GROUP_ANONYMOUS_BOT_ID = 1087968824
TELEGRAM_SERVICE_ID = 777000


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is, from getMe."""

    id: int
    username: str


def to_incoming(update: Update, me: BotIdentity) -> IncomingMessage | None:
    """Translate an update; None (with a DEBUG log) for anything gptrelay does not answer."""
    try:
        return well_formed(_translate(update, me))
    except (AttributeError, TypeError, ValueError, LookupError):
        # python-telegram-bot does not check field types: a field of the wrong kind, or an entity
        # outside its text, must not stop the updates after this one.
        logger.warning("update %s ignored: malformed", update.update_id, exc_info=True)
        return None


def _translate(update: Update, me: BotIdentity) -> IncomingMessage | None:
    """to_incoming, trusting the update's shape."""
    message = update.message
    if message is None:
        logger.debug("update %s ignored: not a new message (edit, channel post, ...)", update.update_id)
        return None
    user = message.from_user
    if user is None or user.is_bot or message.sender_chat is not None:
        # Anonymous admins and channels speak as a chat, other bots as bots: not people to answer.
        logger.debug("update %s ignored: sender is not a person", update.update_id)
        return None
    if message.text is None and message.caption is None and message.effective_attachment is None:
        # Members joined, a title changed, a message was pinned...: nothing was said to anyone.
        logger.debug("update %s ignored: service message", update.update_id)
        return None
    private = message.chat.type == ChatType.PRIVATE
    text, entities = _text_and_entities(message)
    command = _leading_command(message, text, entities)
    if command is not None and not _command_is_ours(command, me):
        logger.debug("update %s ignored: command for another bot", update.update_id)
        return None
    mentions = [e for e in entities if _mentions_us(message, e, me)]
    replied = _real_reply(message)
    to_us = replied is not None and replied.from_user is not None and replied.from_user.id == me.id
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=_id(message.chat.id),
        chat_kind=ChatKind.PRIVATE if private else ChatKind.GROUP,
        user_id=_id(user.id),
        user_name=user.full_name or user.username or str(user.id),
        message_id=_id(message.message_id),
        text=_prompt(text, mentions, command, me),
        addressed=private or bool(mentions) or to_us or command is not None,
        thread_id=_id(message.message_thread_id) if message.is_topic_message else None,
        reply_to_id=_id(replied.message_id) if replied is not None else None,
        reply_to_text=None if replied is None or to_us else _quoted_text(message, replied),
        language=user.language_code,
        raw=update,
    )


def _id(value: object) -> str:
    """A chat, user or message id as text; TypeError unless it is an integer (the sink needs int())."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"id {value!r} is not an integer")
    return str(value)


def _text_and_entities(message: Message) -> tuple[str, list[MessageEntity]]:
    """The text or caption and its entities (photos carry the prompt in the caption)."""
    if message.text is not None:
        return message.text, list(message.entities)
    return message.caption or "", list(message.caption_entities)


def _leading_command(message: Message, text: str, entities: list[MessageEntity]) -> str | None:
    """`/cmd` or `/cmd@bot` when the message starts with a command."""
    for entity in entities:
        if entity.type == MessageEntity.BOT_COMMAND and entity.offset == 0:
            return _slice(text, entity)
    return None


def _command_is_ours(command: str, me: BotIdentity) -> bool:
    """A bare command is for every bot; `/cmd@name` only for `name`."""
    _, at, target = command.partition("@")
    return not at or target.lower() == me.username.lower()


def _mentions_us(message: Message, entity: MessageEntity, me: BotIdentity) -> bool:
    """An @username mention of the bot, or a text mention of its user."""
    if entity.type == MessageEntity.TEXT_MENTION:
        return entity.user is not None and entity.user.id == me.id
    if entity.type == MessageEntity.MENTION:
        return _slice(_text_and_entities(message)[0], entity).lower() == f"@{me.username.lower()}"
    return False


def _prompt(text: str, mentions: list[MessageEntity], command: str | None, me: BotIdentity) -> str:
    """The text without the bot's mentions, and `/cmd@bot` as plain `/cmd`."""
    for entity in sorted(mentions, key=lambda e: e.offset, reverse=True):
        text = _cut(text, entity.offset, entity.length)
    if command is not None and "@" in command:
        text = command.partition("@")[0] + text[len(command) :]
    return " ".join(text.split()) if "\n" not in text else text.strip()


def _real_reply(message: Message) -> Message | None:
    """The replied-to message, unless it is a forum topic's implicit creation message."""
    replied = message.reply_to_message
    if replied is None or replied.forum_topic_created is not None:
        return None
    return replied


def _quoted_text(message: Message, replied: Message) -> str | None:
    """The part of someone else's message the user quoted, else all of it."""
    if message.quote is not None and message.quote.text:
        return message.quote.text
    return replied.text or replied.caption


def _slice(text: str, entity: MessageEntity) -> str:
    """An entity's text; offsets count UTF-16 code units, not Python characters."""
    units = text.encode("utf-16-le")
    return units[entity.offset * 2 : (entity.offset + entity.length) * 2].decode("utf-16-le")


def _cut(text: str, offset: int, length: int) -> str:
    """`text` without the UTF-16 range [offset, offset + length)."""
    units = text.encode("utf-16-le")
    return (units[: offset * 2] + units[(offset + length) * 2 :]).decode("utf-16-le")
