"""The conversation-management settings: read from the environment, validated, documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings
from bot.texts import Lang

README = Path(__file__).resolve().parents[1] / "README.md"
NEW_SETTINGS = (
    "default_language",
    "context_overflow",
    "summary_model",
    "summary_max_tokens",
    "idle_reset_minutes",
    "personas",
    "daily_token_limit",
    "monthly_token_limit",
    "user_messages_per_minute",
    "chat_messages_per_minute",
    "burst_window_s",
    "burst_wait",
    "burst_platforms",
)


def test_defaults_change_nothing_for_existing_bots() -> None:
    settings = load_settings(env_file=None)
    assert settings.default_language is Lang.EN
    assert settings.context_overflow == "summarize"
    assert settings.idle_reset_minutes is None
    assert settings.personas == {}
    assert (settings.daily_token_limit, settings.monthly_token_limit) == (None, None)
    assert (settings.user_messages_per_minute, settings.chat_messages_per_minute) == (None, None)
    assert (settings.burst_wait, settings.burst_platforms) == ("split", ["telegram", "discord"])


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTRELAY_DEFAULT_LANGUAGE", "zh")
    monkeypatch.setenv("GPTRELAY_PERSONAS", '{"Pirate": "You are a pirate."}')
    monkeypatch.setenv("GPTRELAY_DAILY_TOKEN_LIMIT", "5000")
    monkeypatch.setenv("GPTRELAY_BURST_PLATFORMS", '["telegram"]')

    settings = load_settings(env_file=None)

    assert settings.default_language is Lang.ZH
    assert settings.personas == {"pirate": "You are a pirate."}
    assert settings.daily_token_limit == 5000
    assert settings.burst_platforms == ["telegram"]


def test_bad_values_are_all_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTRELAY_DEFAULT_LANGUAGE", "fr")
    monkeypatch.setenv("GPTRELAY_CONTEXT_OVERFLOW", "forget")
    monkeypatch.setenv("GPTRELAY_USER_MESSAGES_PER_MINUTE", "0")
    monkeypatch.setenv("GPTRELAY_BURST_WAIT", "never")

    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)

    named = {problem.split(":", 1)[0] for problem in caught.value.problems}
    assert named == {
        "GPTRELAY_DEFAULT_LANGUAGE",
        "GPTRELAY_CONTEXT_OVERFLOW",
        "GPTRELAY_USER_MESSAGES_PER_MINUTE",
        "GPTRELAY_BURST_WAIT",
    }


@pytest.mark.parametrize("name", NEW_SETTINGS)
def test_every_setting_is_in_the_readme_table(name: str) -> None:
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    assert any(f"`GPTRELAY_{name.upper()}`" in row.split(" | ")[0] for row in rows)
