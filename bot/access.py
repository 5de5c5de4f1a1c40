"""Who may use the bot and who administers it: one place for every platform's lists and bans."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from bot.config import Settings
from bot.conversation import user_key
from bot.messages import IncomingMessage

logger = logging.getLogger(__name__)

# The terminal chat is the operator at the machine; HTTP callers are never admins (their
# bearer key admits them to the API, not to other users' settings).
OPERATOR_PLATFORMS = frozenset({"console"})


def _ids(values: Iterable[int]) -> frozenset[str]:
    """Platform ids as the strings the neutral message carries."""
    return frozenset(str(v) for v in values)


@dataclass(frozen=True, slots=True)
class PlatformRules:
    """One platform's allow lists (empty = everyone) and admins."""

    users: frozenset[str] = frozenset()
    chats: frozenset[str] = frozenset()
    guilds: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    admin_roles: frozenset[str] = frozenset()

    def allows(self, message: IncomingMessage) -> bool:
        """Every non-empty list must admit the message; a role list admits any listed role."""
        chat_ids = {message.chat_id, message.thread_id}
        return (
            (not self.users or message.user_id in self.users)
            and (not self.chats or bool(chat_ids & self.chats))
            and (not self.guilds or message.guild_id in self.guilds)
            and (not self.roles or not self.roles.isdisjoint(message.role_ids))
        )

    def is_admin(self, message: IncomingMessage) -> bool:
        """Listed by id, or holding a listed admin role."""
        return message.user_id in self.admins or not self.admin_roles.isdisjoint(message.role_ids)


def rules_from(settings: Settings) -> dict[str, PlatformRules]:
    """Each platform's rules from the settings."""
    s = settings
    return {
        "telegram": PlatformRules(
            users=_ids(s.telegram_allowed_user_ids),
            chats=_ids(s.telegram_allowed_chat_ids),
            admins=_ids(s.telegram_admin_ids),
        ),
        "discord": PlatformRules(
            users=_ids(s.discord_allowed_user_ids),
            chats=_ids(s.discord_allowed_channel_ids),
            guilds=_ids(s.discord_allowed_guild_ids),
            roles=_ids(s.discord_allowed_role_ids),
            admins=_ids(s.discord_admin_ids),
            admin_roles=_ids(s.discord_admin_role_ids),
        ),
    }


class Access:
    """Allow lists and admins from the settings, bans from the store (kept here in memory)."""

    def __init__(self, settings: Settings, banned: Iterable[str] = ()) -> None:
        self._rules = rules_from(settings)
        self._banned = set(banned)

    def allows(self, message: IncomingMessage) -> bool:
        """Whether the platform's allow lists admit the message's author in that chat."""
        rules = self._rules.get(message.platform)
        return rules is None or rules.allows(message)

    def is_admin(self, message: IncomingMessage) -> bool:
        """Admin by the platform's identity (id or role), never by anything in the text."""
        if message.platform in OPERATOR_PLATFORMS:
            return True
        rules = self._rules.get(message.platform)
        return rules is not None and rules.is_admin(message)

    def has_admins(self, platform: str) -> bool:
        """Whether the operator named any admin for the platform."""
        rules = self._rules.get(platform)
        if platform in OPERATOR_PLATFORMS:
            return True
        return rules is not None and bool(rules.admins or rules.admin_roles)

    def is_banned(self, message: IncomingMessage) -> bool:
        """Banned users get nothing at all."""
        return bool(self._banned) and user_key(message) in self._banned

    def set_banned(self, key: str, banned: bool) -> None:
        """Record a ban or unban made by an admin command (the store keeps it across restarts)."""
        if banned:
            self._banned.add(key)
        else:
            self._banned.discard(key)

    @property
    def banned(self) -> frozenset[str]:
        """User keys currently banned."""
        return frozenset(self._banned)
