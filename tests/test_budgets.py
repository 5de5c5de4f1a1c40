"""Token budgets: a user at their daily or monthly limit is refused before the model is called."""

from __future__ import annotations

import logging
import math
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.budgets import periods
from bot.errors import LimitExceeded
from bot.texts import render
from tests.chat_helpers import answer_bodies, execute, say
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import running_relay

ADMIN = "42"


def move_usage(db_path: Path, user_key: str, day: date) -> None:
    """Pretend the user's usage so far happened on `day` (the store keeps one row per day)."""
    assert execute(db_path, "UPDATE usage SET day = ? WHERE user_key = ?", day.isoformat(), user_key) >= 1


def today() -> date:
    """Today in UTC, as budgets count days."""
    return datetime.now(UTC).date()


async def test_daily_limit_refuses_with_the_reset_time_until_the_next_day(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(daily_token_limit=1)

    first, _ = await say(h.core, "hello")
    refused, sink = await say(h.core, "hello again")

    assert first.text == "echo: hello"
    assert isinstance(refused.error, LimitExceeded)
    assert refused.error.key == "budget_exceeded"
    [text] = sink.final_texts
    tomorrow = datetime.combine(today() + timedelta(days=1), time(), UTC)
    assert text.startswith("You have used your daily token limit (1). It resets in ")
    assert text.endswith(f"({tomorrow:%Y-%m-%d} 00:00 UTC).")
    assert 0 < refused.error.retry_after <= 86_400
    assert len(answer_bodies(fake_openai)) == 1  # the refused message never reached the model

    usage, _ = await say(h.core, "/usage")
    assert "(limit 1)" in usage.text.splitlines()[0]

    move_usage(h.settings.db_path, "telegram:7", today() - timedelta(days=1))
    served, _ = await say(h.core, "a new day")
    assert served.text == "echo: a new day"
    assert len(answer_bodies(fake_openai)) == 2


async def test_monthly_limit_resets_with_the_month(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(monthly_token_limit=1)

    await say(h.core, "hello")
    refused, sink = await say(h.core, "more")

    _, month = periods(datetime.now(UTC))
    assert isinstance(refused.error, LimitExceeded)
    [text] = sink.final_texts
    assert text.startswith("You have used your monthly token limit (1). It resets in ")
    assert text.endswith(f"({month.resets_at:%Y-%m-%d} 00:00 UTC).")
    assert len(answer_bodies(fake_openai)) == 1
    usage, _ = await say(h.core, "/usage")
    assert "(limit 1)" in usage.text.splitlines()[1]

    # Usage of last month's last day no longer counts.
    move_usage(h.settings.db_path, "telegram:7", month.since - timedelta(days=1))
    served, _ = await say(h.core, "a new month")
    assert served.text == "echo: a new month"


async def test_admins_are_exempt(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(daily_token_limit=1, telegram_admin_ids=[int(ADMIN)])

    for text in ("one", "two", "three"):
        reply, _ = await say(h.core, text, user_id=ADMIN)
        assert reply.text == f"echo: {text}"
    usage, _ = await say(h.core, "/usage", user_id=ADMIN)

    assert len(answer_bodies(fake_openai)) == 3
    assert "limit" not in usage.text


async def test_admin_sets_a_users_own_limit_with_budget(
    make_core: HarnessFactory,
    fake_openai: FakeOpenAI,
    make_settings: SettingsFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(telegram_admin_ids=[int(ADMIN)])
    h = await make_core(settings)

    refused, _ = await say(h.core, "/budget 7 1")
    assert refused.text == render("admins_only", name="budget")
    done, _ = await say(h.core, "/budget 7 1", user_id=ADMIN)
    assert done.text == "telegram:7's daily limit is now 1 tokens."

    await say(h.core, "hello")
    limited, _ = await say(h.core, "hello again")
    other, _ = await say(h.core, "not limited", user_id="8")

    assert isinstance(limited.error, LimitExceeded)
    assert other.text == "echo: not limited"
    assert [b["messages"][-1]["content"] for b in answer_bodies(fake_openai)] == ["hello", "not limited"]

    # The limit is stored: a restarted bot still applies it, until the admin clears it.
    await h.close()
    caplog.set_level(logging.INFO, logger="bot.core")
    h = await make_core(settings)
    assert "loaded 1 user policies (0 banned)" in caplog.messages
    still, _ = await say(h.core, "after restart")
    assert isinstance(still.error, LimitExceeded)
    cleared, _ = await say(h.core, "/budget 7 default", user_id=ADMIN)
    assert cleared.text == "telegram:7's daily limit is back to the default (none)."
    served, _ = await say(h.core, "unlimited again")
    assert served.text == "echo: unlimited again"


async def test_http_user_at_the_budget_gets_429_with_retry_after(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(daily_token_limit=1, http_port=0)
    async with running_relay(settings) as relay:
        async with relay.session.post("/ask_gpt", json={"prompt": "hi", "user": "alice"}) as response:
            assert response.status == 200
        async with relay.session.post("/ask_gpt", json={"prompt": "again", "user": "alice"}) as response:
            status, headers, body = response.status, response.headers, await response.json()

    assert status == 429
    assert "daily token limit" in body["error"]["message"]
    midnight = datetime.combine(today() + timedelta(days=1), time(), UTC)
    left = (midnight - datetime.now(UTC)).total_seconds()
    assert abs(int(headers["Retry-After"]) - math.ceil(left)) <= 5
    assert len(answer_bodies(fake_openai)) == 1


async def test_budget_command_sets_monthly_limits_and_explains_its_usage(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(telegram_admin_ids=[int(ADMIN)])

    monthly, _ = await say(h.core, "/budget 8 5 month", user_id=ADMIN)
    wrong, _ = await say(h.core, "/budget 8 lots", user_id=ADMIN)
    usage, _ = await say(h.core, "/usage", user_id="8")

    assert monthly.text == "telegram:8's monthly limit is now 5 tokens."
    assert wrong.text == "Usage: /budget <user id> <tokens|default> [day|month]"
    day_line, month_line = usage.text.splitlines()
    assert "limit" not in day_line
    assert month_line.endswith("(limit 5)")
    assert answer_bodies(fake_openai) == []
