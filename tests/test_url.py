"""The database URL setting: validated at start-up, never printed with its password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, describe, load_settings
from storage.url import DatabaseUrl, mask_password

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bot@db/gptrelay", "postgresql://bot@db/gptrelay"),
        (f"postgresql://bot:{SECRET}@db:5432/gptrelay", "postgresql://bot:****@db:5432/gptrelay"),
        (f"postgres://bot:{SECRET}@h1:5432,h2:5433/g", "postgres://bot:****@h1:5432,h2:5433/g"),
        (f"postgresql://bot:{SECRET}@x@db/g", "postgresql://bot:****@db/g"),
        (f"postgresql:///g?host=/run/pg&password={SECRET}", "postgresql:///g?host=/run/pg&password=****"),
        (f"postgresql://db/g?sslpassword={SECRET}&user=bot", "postgresql://db/g?sslpassword=****&user=bot"),
        (f"postgresql://bot:{SECRET}@[::1/g", "postgresql://****"),
    ],
)
def test_mask_password(url: str, shown: str) -> None:
    assert mask_password(url) == shown


def test_database_url_prints_masked_but_hands_out_the_real_url(tmp_path: Path) -> None:
    real = f"postgresql://bot:{SECRET}@db/gptrelay"
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=real)  # type: ignore[call-arg]
    url = settings.database_url
    assert url is not None
    assert url.is_postgres
    assert url.get_secret_value() == real
    for printed in (str(url), repr(url), repr(settings), settings.model_dump_json(), str(describe(settings))):
        assert SECRET not in printed
    assert describe(settings)["database_url"] == "postgresql://bot:****@db/gptrelay"
    assert json.loads(settings.model_dump_json())["database_url"] == "postgresql://bot:****@db/gptrelay"


def test_database_url_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTRELAY_DATABASE_URL", " postgres://bot@db/g ")
    url = load_settings(env_file=None).database_url
    assert url == DatabaseUrl("postgres://bot@db/g")


@pytest.mark.parametrize("blank", ["", "  "])
def test_blank_database_url_means_sqlite(monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("GPTRELAY_DATABASE_URL", blank)
    url = load_settings(env_file=None).database_url
    assert not url


def test_unsupported_database_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTRELAY_DATABASE_URL", f"mysql://bot:{SECRET}@db/g")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    [problem] = caught.value.problems
    assert problem.startswith("GPTRELAY_DATABASE_URL:")
    assert "postgresql://" in problem
    assert SECRET not in str(caught.value)
