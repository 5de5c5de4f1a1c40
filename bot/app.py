"""Wiring: build the store, model and core from settings; run the adapters until stopped."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from adapters import Adapter
from adapters.discord import DiscordAdapter
from adapters.http import HttpAdapter
from adapters.telegram import TelegramAdapter
from bot.breaker import CircuitBreaker, GuardedModel
from bot.config import Backend, Settings
from bot.core import BotCore
from bot.local_model import LocalModel
from bot.model import ModelClient, OpenAIModel
from storage import Store
from storage.factory import open_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The long-lived objects one process shares."""

    settings: Settings
    store: Store
    model: ModelClient
    core: BotCore


def build_model(settings: Settings) -> ModelClient:
    """The model client the settings select."""
    if settings.backend is Backend.LOCAL:
        return LocalModel.from_settings(settings)
    # A remote backend can go down; the breaker stops every message from waiting out its retries.
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
    return GuardedModel(OpenAIModel.from_settings(settings), breaker)


# Requests answered only to a waiting caller: not worth answering after a restart.
EPHEMERAL_PLATFORMS = ("http", "console")


def settle_heap() -> None:
    """Move everything built at start-up out of the garbage collector's sight.

    Modules, settings and clients live until exit, yet every full collection walked them again:
    about a tenth of a bot's CPU per answer went to that under load.
    """
    gc.collect()
    gc.freeze()


class StartupError(Exception):
    """An adapter could not start (a wrong token, an unreachable platform); one line for the user."""


async def _start(adapter: Adapter) -> None:
    """Start one adapter, turning any failure into a StartupError after cleaning up."""
    try:
        await adapter.start()
    except Exception as exc:
        logger.debug("%s adapter failed to start", adapter.name, exc_info=True)
        with suppress(Exception):  # a half-started adapter may still hold connections
            await adapter.stop()
        raise StartupError(f"the {adapter.name} adapter could not start: {exc}") from exc


@asynccontextmanager
async def open_runtime(settings: Settings, model: ModelClient | None = None) -> AsyncIterator[Runtime]:
    """Open everything; on exit, finish in-flight answers (bounded), then close."""
    store = await open_store(settings)
    model = model or build_model(settings)
    core = BotCore(settings, store, model)
    await core.start()
    # Their callers are gone after a restart; platform messages are replayed by their adapters.
    await core.expire_pending(EPHEMERAL_PLATFORMS)
    try:
        yield Runtime(settings, store, model, core)
    finally:
        await core.close(settings.shutdown_timeout_s)
        await model.aclose()
        await store.close()


def enabled_adapters(runtime: Runtime) -> list[Adapter]:
    """Every adapter whose settings are present."""
    adapters: list[Adapter] = []
    if runtime.settings.http_enabled:
        adapters.append(HttpAdapter(runtime.core, runtime.settings))
    if runtime.settings.telegram_bot_token:
        adapters.append(TelegramAdapter(runtime.core, runtime.settings))
    if runtime.settings.discord_bot_token:
        adapters.append(DiscordAdapter(runtime.core, runtime.settings))
    return adapters


async def serve(
    settings: Settings, stop: asyncio.Event | None = None, model: ModelClient | None = None
) -> None:
    """Run every enabled adapter until SIGINT/SIGTERM (or `stop` is set); `model` for benchmarks."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with open_runtime(settings, model) as runtime:
        adapters = enabled_adapters(runtime)
        if not adapters:
            raise RuntimeError("no adapter is enabled: set GPTRELAY_HTTP_ENABLED=true or a bot token")
        started: list[Adapter] = []
        try:
            for adapter in adapters:
                await _start(adapter)
                started.append(adapter)
            settle_heap()
            logger.info(
                "gptrelay running: %s (event loop: %s)",
                ", ".join(a.name for a in started),
                type(loop).__module__.partition(".")[0],
            )
            await stop.wait()
            logger.info(
                "shutting down: finishing answers in flight (up to %.0f s)", settings.shutdown_timeout_s
            )
            await runtime.core.close(settings.shutdown_timeout_s)
        finally:
            for adapter in reversed(started):
                await adapter.stop()
