"""Open the store the settings choose: PostgreSQL for a database URL, else the SQLite file."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from storage.base import Store
from storage.postgres import PostgresStore
from storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from bot.config import Settings

logger = logging.getLogger(__name__)


async def open_store(settings: Settings) -> Store:
    """PostgresStore when GPTRELAY_DATABASE_URL is a postgresql:// URL, else SQLite at db_path."""
    url = settings.database_url
    if url and url.is_postgres:
        return await PostgresStore.open(url.get_secret_value(), settings.worker_id)
    logger.info("opening SQLite store at %s", settings.db_path)
    return await SqliteStore.open(settings.db_path)
