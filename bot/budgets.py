"""Daily and monthly token budgets: defaults from the settings, per-user limits from the store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta

from bot.config import Settings
from bot.errors import LimitExceeded
from bot.texts import Lang, duration, render
from storage import Store, UserPolicy


@dataclass(frozen=True, slots=True)
class Period:
    """A budget period: its first day, and when the next one starts."""

    name: str  # "day" or "month"
    since: date
    resets_at: datetime


def periods(now: datetime) -> tuple[Period, Period]:
    """Today and this month, in UTC."""
    today = now.date()
    tomorrow = datetime.combine(today + timedelta(days=1), time(), UTC)
    first = today.replace(day=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    return (
        Period("day", today, tomorrow),
        Period("month", first, datetime.combine(next_month, time(), UTC)),
    )


class Budgets:
    """Refuses a user at their limit before the model is called; admins are exempt."""

    def __init__(self, settings: Settings, store: Store, policies: Iterable[UserPolicy] = ()) -> None:
        self._settings = settings
        self._store = store
        self._policies = {p.user_key: p for p in policies}

    def policy(self, key: str) -> UserPolicy:
        """A user's stored controls (a blank one if none)."""
        return self._policies.get(key) or UserPolicy(key)

    def remember(self, policy: UserPolicy) -> None:
        """Keep a policy an admin command just stored."""
        self._policies[policy.user_key] = policy

    def limits(self, key: str) -> dict[str, int | None]:
        """The user's daily and monthly token limits (None: unlimited)."""
        p = self._policies.get(key)
        day = p.daily_tokens if p and p.daily_tokens is not None else self._settings.daily_token_limit
        month = p.monthly_tokens if p and p.monthly_tokens is not None else self._settings.monthly_token_limit
        return {"day": day, "month": month}

    async def check(self, key: str, exempt: bool, lang: Lang, now: datetime | None = None) -> None:
        """Raise a UserError saying when the budget resets if the user is at a limit."""
        limits = self.limits(key)
        if exempt or (limits["day"] is None and limits["month"] is None):
            return  # no store round trip for the common unlimited case
        for period in periods(now or datetime.now(UTC)):
            limit = limits[period.name]
            if limit is None:
                continue
            used = await self._store.usage(key, period.since.isoformat())
            if used.total_tokens >= limit:
                wait = (period.resets_at - (now or datetime.now(UTC))).total_seconds()
                raise LimitExceeded(
                    "budget_exceeded",
                    wait,
                    period=render(f"period_{period.name}", lang),
                    limit=limit,
                    wait=duration(wait, lang),
                    at=period.resets_at.strftime("%Y-%m-%d %H:%M"),
                )

    async def set_limit(self, key: str, period: str, tokens: int | None) -> UserPolicy:
        """Store a user's own limit for 'day' or 'month' (None: back to the default)."""
        field = "daily_tokens" if period == "day" else "monthly_tokens"
        policy = replace(self.policy(key), **{field: tokens})
        await self._store.save_user_policy(policy)
        self.remember(policy)
        return policy
