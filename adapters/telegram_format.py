"""The model's Markdown as Telegram text + entities, so nothing can fail to parse."""

from __future__ import annotations

import logging

import telegramify_markdown
from telegram import MessageEntity

logger = logging.getLogger(__name__)

# Telegram's limit, counted in UTF-16 code units after entity parsing.
TELEGRAM_MAX_UTF16 = 4096

Chunk = tuple[str, tuple[MessageEntity, ...]]


def utf16_len(text: str) -> int:
    """Length as Telegram counts it."""
    return len(text.encode("utf-16-le")) // 2


def render(markdown: str, limit: int = TELEGRAM_MAX_UTF16) -> list[Chunk]:
    """Convert Markdown to entity-formatted chunks, each within `limit` UTF-16 units.

    Falls back to plain text if the converter fails or produces nothing.
    """
    try:
        text, entities = telegramify_markdown.convert(markdown)
        if not text.strip():
            raise ValueError("conversion produced no text")
        pieces = telegramify_markdown.split_entities(text, entities, limit)
        return [(piece, tuple(_entity(e) for e in found)) for piece, found in pieces]
    except Exception:
        logger.warning("Markdown conversion failed; sending plain text", exc_info=True)
        return plain(markdown, limit)


def plain(text: str, limit: int = TELEGRAM_MAX_UTF16) -> list[Chunk]:
    """Unformatted chunks within `limit` UTF-16 units (a rare fallback, so a simple loop)."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for char in text:
        width = 2 if ord(char) > 0xFFFF else 1  # astral characters are surrogate pairs
        if size + width > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    pieces.append("".join(current))
    return [(piece, ()) for piece in pieces if piece.strip()] or [(text or "…", ())]


def _entity(entity: telegramify_markdown.MessageEntity) -> MessageEntity:
    """telegramify's entity as python-telegram-bot's."""
    return MessageEntity(
        type=entity.type,
        offset=entity.offset,
        length=entity.length,
        url=entity.url,
        language=entity.language,
        custom_emoji_id=entity.custom_emoji_id,
    )
