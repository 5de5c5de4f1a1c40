"""One pure function from a discord.py Message to the neutral message."""

from __future__ import annotations

import logging
import re

import discord

from bot.messages import ChatKind, IncomingMessage, well_formed

logger = logging.getLogger(__name__)

PLATFORM = "discord"
# Ordinary user messages; joins, pins, boosts and other system messages are not prompts.
CONVERSATION_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})


def to_incoming(message: discord.Message, me: discord.abc.User) -> IncomingMessage | None:
    """Translate a message; None (with a DEBUG log) for anything gptrelay does not answer."""
    try:
        return well_formed(_translate(message, me))
    except (AttributeError, TypeError, ValueError, LookupError):
        # discord.py does not check field types (`content` may be null or a list): a malformed
        # message is skipped with a warning, not an exception in the event handler.
        logger.warning("message %s ignored: malformed", message.id, exc_info=True)
        return None


def _translate(message: discord.Message, me: discord.abc.User) -> IncomingMessage | None:
    """to_incoming, trusting the message's shape."""
    if message.author.bot or message.author.id == me.id:
        logger.debug("message %s ignored: from a bot", message.id)
        return None
    if message.type not in CONVERSATION_TYPES:
        logger.debug("message %s ignored: system message %s", message.id, message.type)
        return None
    private = message.guild is None
    replied = _replied_message(message)
    to_us = replied is not None and replied.author.id == me.id
    mentioned = _mentions_user(message, me) or bool(_our_roles(message, me))
    chat_id, thread_id = _chat_and_thread(message.channel)
    return IncomingMessage(
        platform=PLATFORM,
        chat_id=str(chat_id),
        chat_kind=ChatKind.PRIVATE if private else ChatKind.GROUP,
        user_id=str(message.author.id),
        user_name=message.author.display_name,
        message_id=str(message.id),
        text=_strip_mentions(message, me),
        addressed=private or mentioned or to_us,
        thread_id=str(thread_id) if thread_id is not None else None,
        reply_to_id=str(replied.id) if replied is not None else None,
        reply_to_text=None if replied is None or to_us else (replied.content or None),
        # Messages carry no user locale; a server's preferred locale is the best guess.
        language=str(message.guild.preferred_locale) if message.guild is not None else None,
        guild_id=str(message.guild.id) if message.guild is not None else None,
        role_ids=role_ids(message.author),
        raw=message,
    )


def role_ids(user: discord.abc.User) -> tuple[str, ...]:
    """A member's role ids, for the core's access rules (none in DMs)."""
    return tuple(str(role.id) for role in getattr(user, "roles", ()))


def _replied_message(message: discord.Message) -> discord.Message | None:
    """The message this one replies to, when Discord sent it along."""
    reference = message.reference
    if reference is None or not isinstance(reference.resolved, discord.Message):
        return None
    return reference.resolved


def _mentions_user(message: discord.Message, me: discord.abc.User) -> bool:
    """An explicit <@bot> in the text (a reply's automatic ping alone does not count)."""
    return f"<@{me.id}>" in message.content or f"<@!{me.id}>" in message.content


def _our_roles(message: discord.Message, me: discord.abc.User) -> list[discord.Role]:
    """Mentioned roles that are the bot's own managed role (what "@Bot" in the role list pings)."""
    return [
        role
        for role in message.role_mentions
        if role.tags is not None and role.tags.bot_id == me.id and f"<@&{role.id}>" in message.content
    ]


def _strip_mentions(message: discord.Message, me: discord.abc.User) -> str:
    """The content without the bot's user and role mentions."""
    pattern = rf"<@!?{me.id}>"
    roles = "|".join(str(role.id) for role in _our_roles(message, me))
    if roles:
        pattern += rf"|<@&(?:{roles})>"
    return re.sub(r"[ \t]{2,}", " ", re.sub(pattern, "", message.content)).strip()


def _chat_and_thread(channel: object) -> tuple[int, int | None]:
    """A thread belongs to its parent channel but keeps a context of its own."""
    if isinstance(channel, discord.Thread):
        return channel.parent_id, channel.id
    return getattr(channel, "id", 0), None
