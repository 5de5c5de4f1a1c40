"""Shared fixtures: the fake OpenAI server, settings on tmp_path, a real store, model and core."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir

from bot.app import build_model
from bot.config import Settings
from bot.core import BotCore
from bot.logsetup import NOISY_LOGGERS
from bot.model import ModelClient, OpenAIModel
from storage.sqlite import SqliteStore
from tests.fakes.openai_server import FakeOpenAI

TEST_API_KEY = "sk-test"
# Enough for any answer the fake gives; tests about timeouts set their own.
TEST_TIMEOUT_S = 5.0
# Seconds core.close() may wait at teardown before cancelling what is still running.
TEARDOWN_CLOSE_S = 1.0
# Environment variables Settings or the openai client would read.
ENV_PREFIXES = ("GPTRELAY_", "OPENAI_", "AZURE_OPENAI_")

SettingsFactory = Callable[..., Settings]

# Property tests: bounded and reproducible by default (CI); `pytest --hypothesis-profile=dev` explores more.
hypothesis_settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.register_profile(
    "dev", max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("ci")
# Hypothesis keeps caches in ./.hypothesis by default; keep the working directory clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gptrelay-hypothesis")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's model keys and gptrelay settings out of every test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo what a test's call of the CLI (setup_logging) did to global logging state."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A running fake OpenAI-compatible server on 127.0.0.1."""
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
def make_settings(tmp_path: Path, fake_openai: FakeOpenAI) -> SettingsFactory:
    """Build Settings pointed at the fake, stored on tmp_path, with no .env file and no retries."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "openai_base_url": fake_openai.base_url,
            "openai_api_key": TEST_API_KEY,
            "data_dir": tmp_path,
            "model_max_retries": 0,
            "request_timeout_s": TEST_TIMEOUT_S,
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    """Default test settings."""
    return make_settings()


@pytest.fixture
async def make_model() -> AsyncIterator[Callable[[Settings], OpenAIModel]]:
    """Build real OpenAIModels from settings; every one is closed at teardown."""
    models: list[OpenAIModel] = []

    def build(settings: Settings) -> OpenAIModel:
        model = OpenAIModel.from_settings(settings)
        models.append(model)
        return model

    yield build
    for model in models:
        await model.aclose()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[SqliteStore]:
    """A real SQLite store at the settings' database path."""
    opened = await SqliteStore.open(settings.db_path)
    yield opened
    await opened.close()


@dataclass
class Harness:
    """A core with the real store and model it runs on."""

    settings: Settings
    store: SqliteStore
    model: ModelClient
    core: BotCore
    closed: bool = False

    async def close(self) -> None:
        """Stop the core, then release the model and the database (idempotent)."""
        if self.closed:
            return
        self.closed = True
        await self.core.close(TEARDOWN_CLOSE_S)
        await self.model.aclose()
        await self.store.close()


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_core(make_settings: SettingsFactory) -> AsyncIterator[HarnessFactory]:
    """Open store, model and core from settings overrides; all are closed at teardown."""
    harnesses: list[Harness] = []

    async def build(settings: Settings | None = None, **overrides: Any) -> Harness:
        chosen = settings or make_settings(**overrides)
        store = await SqliteStore.open(chosen.db_path)
        model = build_model(chosen)
        core = BotCore(chosen, store, model)
        await core.start()
        harness = Harness(chosen, store, model, core)
        harnesses.append(harness)
        return harness

    yield build
    for harness in reversed(harnesses):
        await harness.close()
