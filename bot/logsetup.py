"""Logging for the entry point: levels, quiet HTTP clients, secrets redacted from every line."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from bot.config import Settings

REDACTED = "[REDACTED]"
# Shorter values would redact ordinary words; real tokens and keys are far longer.
MIN_SECRET_LEN = 8
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "openai", "aiohttp.access", "telegram", "discord")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Replaces every known secret in the formatted line, tracebacks included."""

    def __init__(self, secrets: Iterable[str], fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        """Format, then redact."""
        line = super().format(record)
        for secret in self._secrets:
            line = line.replace(secret, REDACTED)
        return line


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold."""
    values = [
        settings.openai_api_key,
        settings.api_key,
        settings.telegram_bot_token,
        settings.telegram_webhook_secret,
        settings.discord_bot_token,
    ]
    return [v.get_secret_value() for v in values if v is not None]


def setup_logging(settings: Settings) -> None:
    """Configure the root logger once, in the entry point."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(secrets_of(settings)))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
