"""Telegram: our own long-poll loop (or a webhook) that records each update before confirming it."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import warnings

from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeAllGroupChats,
    BotCommandScopeAllPrivateChats,
    Update,
)
from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, ApplicationBuilder
from telegram.warnings import PTBUserWarning

from adapters.telegram_pacing import FloodGate
from adapters.telegram_sink import TelegramSink, retry_seconds
from adapters.telegram_translate import PLATFORM, BotIdentity, to_incoming
from bot.commands import COMMAND_DESCRIPTIONS
from bot.config import Settings
from bot.core import BotCore
from bot.errors import ShuttingDown
from bot.logsetup import REDACTED
from bot.messages import ChatKind, IncomingMessage

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 25
POLL_BACKOFF_S = 2.0
ALLOWED_UPDATES = ("message", "edited_message", "channel_post")
WEBHOOK_PATH = "/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Loggers that print Bot API URLs, which contain the token (httpx logs every request at INFO).
URL_LOGGERS = ("httpx", "telegram.Bot", "telegram.ext.ExtBot")


class TokenFilter(logging.Filter):
    """Masks a bot token in the records of URL_LOGGERS, whatever handler the operator configured."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.tokens = {token}

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message without the tokens; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the handler's problem, as usual
            return True
        if any(token in message for token in self.tokens):
            for token in self.tokens:
                message = message.replace(token, REDACTED)
            record.msg, record.args = message, None
        return True


class TelegramAdapter:
    """Receives updates, records them through the core, and answers through TelegramSinks."""

    name = "telegram"

    def __init__(self, core: BotCore, settings: Settings) -> None:
        assert settings.telegram_bot_token is not None
        # Each adapter masks its own token, from construction until stop().
        self._token_filter = TokenFilter(settings.telegram_bot_token.get_secret_value())
        for name in URL_LOGGERS:
            logging.getLogger(name).addFilter(self._token_filter)
        self._core = core
        self._settings = settings
        self._app: Application = _build_application(settings)
        self._gate = FloodGate()
        self._me = BotIdentity(0, "")
        self._poller: asyncio.Task[None] | None = None
        self._webhook: web.AppRunner | None = None

    @property
    def bot(self) -> Bot:
        """python-telegram-bot's Bot, pointed at the configured Bot API server."""
        return self._app.bot

    async def start(self) -> None:
        """Identify the bot, register commands, then poll or serve the webhook."""
        await self._app.initialize()  # getMe
        self._me = BotIdentity(self.bot.id, self.bot.username)
        await self._register_commands()
        # Messages recorded before a crash or stop but never answered go first.
        replayed = await self._core.replay(PLATFORM, self._sink_for)
        if replayed:
            logger.info("answering %d Telegram messages received before the restart", len(replayed))
        if self._settings.telegram_mode == "webhook":
            await self._start_webhook()
        else:
            await self.bot.delete_webhook()
            self._poller = asyncio.create_task(self._poll(), name="telegram poll")
        logger.info("Telegram bot @%s started (%s)", self._me.username, self._settings.telegram_mode)

    async def stop(self) -> None:
        """Stop receiving; answers in flight belong to the core's shutdown."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._webhook is not None:
            await self._webhook.cleanup()
        await self._app.shutdown()
        for name in URL_LOGGERS:
            logging.getLogger(name).removeFilter(self._token_filter)

    async def _register_commands(self) -> None:
        """The command menu, for private chats and groups."""
        commands = [BotCommand(name, text) for name, text in COMMAND_DESCRIPTIONS.items()]
        for scope in (BotCommandScopeAllPrivateChats(), BotCommandScopeAllGroupChats()):
            try:
                await self.bot.set_my_commands(commands, scope=scope)
            except TelegramError as exc:  # the menu is a convenience; answering matters more
                logger.warning("setMyCommands failed: %s", exc)

    async def _poll(self) -> None:
        """getUpdates in a loop; the offset moves past an update only once the inbox has it."""
        offset: int | None = None
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=offset,
                    timeout=POLL_TIMEOUT_S,
                    allowed_updates=ALLOWED_UPDATES,
                    read_timeout=POLL_TIMEOUT_S + 10,
                )
            except InvalidToken:
                logger.error("Telegram rejected the bot token: check TELEGRAM_BOT_TOKEN")
                raise
            except RetryAfter as exc:
                await asyncio.sleep(retry_seconds(exc))
                continue
            except TelegramError as exc:  # the network, or a 409 while another instance still polls
                logger.warning("getUpdates failed (%s); retrying in %.0f s", exc, POLL_BACKOFF_S)
                await asyncio.sleep(POLL_BACKOFF_S)
                continue
            except Exception:  # the library could not parse the batch: take it apart update by update
                logger.warning("getUpdates returned an update the library cannot parse", exc_info=True)
                offset = await self._salvage(offset)
                continue
            if updates:
                offset = await self._accept(updates)

    async def _salvage(self, offset: int | None) -> int | None:
        """Fetch the batch as raw JSON, skip what cannot be parsed, record the rest; the new offset."""
        with warnings.catch_warnings():
            # PTB warns that get_updates exists; the raw result is the point. One short request.
            warnings.simplefilter("ignore", PTBUserWarning)
            raw = await self.bot.do_api_request("getUpdates", api_kwargs={"offset": offset, "timeout": 0})
        items = [item for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []
        ids = [item["update_id"] for item in items if isinstance(item.get("update_id"), int)]
        if not ids:
            return offset
        parsed = []
        for item in items:
            try:
                parsed.append(Update.de_json(item, self.bot))
            except Exception:  # this update alone is malformed: confirm it without answering
                logger.warning("update %s cannot be parsed; skipped", item.get("update_id"), exc_info=True)
        return await self._accept(tuple(parsed), max(ids) + 1)

    async def _accept(self, updates: tuple[Update, ...], next_offset: int | None = None) -> int:
        """Record a batch (in order, concurrently); return the offset that confirms what was kept."""
        results = await asyncio.gather(*(self.receive(u) for u in updates), return_exceptions=True)
        for update, result in zip(updates, results, strict=True):
            if isinstance(result, BaseException):
                # Not recorded: leave it (and what follows) unconfirmed, so Telegram sends it again.
                if not isinstance(result, ShuttingDown):
                    logger.error("could not record update %s: %r", update.update_id, result)
                    await asyncio.sleep(POLL_BACKOFF_S)
                return update.update_id
        return next_offset if next_offset is not None else updates[-1].update_id + 1

    async def receive(self, update: Update) -> None:
        """Translate one update and hand it to the core; returns once it is recorded."""
        migrated = update.message.migrate_to_chat_id if update.message else None
        if migrated is not None and update.message is not None:
            old = getattr(update.message.chat, "id", None)
            # python-telegram-bot does not check types: a bad id would fail in the store, and an
            # update that fails is never confirmed, so it would block every update after it.
            if isinstance(old, int) and isinstance(migrated, int):
                await self._core.move_chat(PLATFORM, str(old), str(migrated))
            else:
                logger.warning("update %s ignored: malformed chat migration", update.update_id)
            return
        try:
            message = to_incoming(update, self._me)
        except Exception:  # a malformed update must not block the ones after it
            logger.exception("could not translate update %s; skipped", update.update_id)
            return
        if message is None:
            return
        await self._core.submit(message, self._sink_for(message))

    def _sink_for(self, message: IncomingMessage) -> TelegramSink:
        """Where the answer to `message` goes."""
        private = message.chat_kind is ChatKind.PRIVATE
        return TelegramSink(
            self.bot,
            self._gate,
            int(message.chat_id),
            private=private,
            thread_id=int(message.thread_id) if message.thread_id else None,
            reply_to=None if private else int(message.message_id),
        )

    async def _start_webhook(self) -> None:
        """Serve the webhook and tell Telegram where it is."""
        secret = self._settings.telegram_webhook_secret
        assert secret is not None
        assert self._settings.telegram_webhook_url
        app = web.Application(client_max_size=1_048_576)
        app.router.add_post(WEBHOOK_PATH, self._on_webhook)
        self._webhook = web.AppRunner(app, access_log=None)
        await self._webhook.setup()
        site = web.TCPSite(
            self._webhook, self._settings.telegram_webhook_listen, self._settings.telegram_webhook_port
        )
        await site.start()
        await self.bot.set_webhook(
            self._settings.telegram_webhook_url,
            secret_token=secret.get_secret_value(),
            allowed_updates=ALLOWED_UPDATES,
        )

    async def _on_webhook(self, request: web.Request) -> web.Response:
        """One update from Telegram: 200 only once it is recorded, so a failure means redelivery."""
        secret = self._settings.telegram_webhook_secret
        assert secret is not None
        given = request.headers.get(SECRET_HEADER, "")
        # surrogateescape: a header that is not UTF-8 is compared as the bytes sent (a 401), not a crash.
        sent = given.encode(errors="surrogateescape")
        if not hmac.compare_digest(sent, secret.get_secret_value().encode()):
            return web.json_response({"error": "wrong secret token"}, status=401)
        try:
            update = Update.de_json(json.loads(await request.read()), self.bot)
        except Exception:  # not JSON, not an object, too deep, or a date out of range (OverflowError)
            return web.json_response({"error": "not a Telegram update"}, status=400)
        try:
            await self.receive(update)
        except ShuttingDown:
            return web.json_response({"error": "shutting down"}, status=503)
        return web.json_response({"ok": True})


def _build_application(settings: Settings) -> Application:
    """PTB's Application without its Updater: we own the poll loop (see _poll)."""
    assert settings.telegram_bot_token is not None
    base = settings.telegram_api_base_url.rstrip("/")
    file_base = base[: -len("/bot")] + "/file/bot" if base.endswith("/bot") else base + "/file"
    return (
        ApplicationBuilder()
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(base)
        .base_file_url(file_base)
        .updater(None)
        # More connections cost httpcore bookkeeping on every request; writes are paced anyway.
        .connection_pool_size(16)
        .build()
    )
