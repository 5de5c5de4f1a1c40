"""The HTTP API: POST /ask_gpt, the OpenAI-compatible /v1 routes, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from adapters.http_schemas import (
    ApiError,
    AskRequest,
    client_id,
    error_response,
    model_error_response,
    parse_body,
    read_json_object,
)
from adapters.openai_api import add_openai_routes
from bot.config import Settings
from bot.core import BotCore, Reply
from bot.errors import LimitExceeded, ModelError, ShuttingDown, UserError
from bot.messages import ChatKind, IncomingMessage
from bot.model import Turn

logger = logging.getLogger(__name__)

PLATFORM = "http"
# Answers are returned whole, so the sink never needs to split them.
HTTP_MAX_MESSAGE_LEN = 10_000_000
# aiohttp's default of 128 drops connections when a thousand clients arrive at once.
LISTEN_BACKLOG = 1024
# Probes for load balancers and orchestrators stay open; /metrics needs the key when one is set.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CollectingSink:
    """A reply sink that keeps what the core says, for returning in one response."""

    max_message_len = HTTP_MAX_MESSAGE_LEN
    can_stream = False
    edit_interval_s = 0.0

    def __init__(self) -> None:
        self.messages: list[str] = []

    async def send(self, text: str) -> str:
        """Keep a message."""
        self.messages.append(text)
        return str(len(self.messages) - 1)

    async def edit(self, message_id: str, text: str) -> None:
        """Replace a kept message."""
        self.messages[int(message_id)] = text

    @asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        """Nothing to show over HTTP."""
        yield


def _error_middleware(api_key: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Bearer check, then every failure as a JSON error; never a traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if api_key and request.path not in OPEN_PATHS and not _authorized(request, api_key):
            return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.code)
        except LimitExceeded as exc:
            response = error_response(429, str(exc))
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            return response
        except UserError as exc:
            return error_response(400, str(exc))
        except ModelError as exc:
            logger.warning("model failed for HTTP %s: %s", request.path, exc)
            return model_error_response(exc)
        except ShuttingDown:
            return error_response(503, "the bot is shutting down; retry shortly")
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, "request body is too large")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason)
            if "Allow" in exc.headers:  # a 405 must say which methods are allowed (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except ConnectionResetError:
            # The client hung up (e.g. stopped reading a stream): nothing went wrong here.
            logger.info("client disconnected during HTTP %s", request.path)
            return error_response(499, "client closed the connection")
        except Exception:
            logger.exception("unhandled error on HTTP %s", request.path)
            return error_response(500, "internal error; see the bot's log")

    return middleware


def _authorized(request: web.Request, api_key: str) -> bool:
    """Constant-time comparison of the bearer token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # surrogateescape: a header that is not UTF-8 is compared as the bytes sent (a 401), not a crash.
    given = token.strip().encode(errors="surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given, api_key.encode())


def create_app(core: BotCore, settings: Settings) -> web.Application:
    """The aiohttp application with every route."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app = web.Application(client_max_size=settings.http_max_body_bytes, middlewares=[_error_middleware(key)])
    routes = _Routes(core)
    app.router.add_post("/ask_gpt", routes.ask_gpt)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/metrics", routes.metrics)
    add_openai_routes(app, core)
    return app


class _Routes:
    """Handlers of the plain API."""

    def __init__(self, core: BotCore) -> None:
        self._core = core

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process serves requests."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: the store answers, the model backend answers, and the bot is not stopping."""
        checks = await self._core.readiness()
        ready = all(value == "ok" for value in checks.values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus metrics in the text exposition format."""
        response = web.Response(body=self._core.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def ask_gpt(self, request: web.Request) -> web.Response:
        """Answer one prompt; with `user`, inside that user's stored conversation."""
        ask = parse_body(AskRequest, await read_json_object(request))
        logger.info("ask_gpt: %d chars, user %s", len(ask.prompt), "set" if ask.user else "none")
        if ask.user is None:
            self._core.admit(PLATFORM, client_id(request))
            system = self._core.settings.system_prompt
            completion = await self._core.complete(
                [Turn("system", system), Turn("user", ask.prompt)], ask.overrides()
            )
            return _answer(completion.choices)
        reply = await self._converse(ask)
        if isinstance(reply.error, ModelError | UserError):
            raise reply.error
        if reply.error is not None:
            raise ApiError(500, "internal error; see the bot's log")
        return _answer(reply.choices or (reply.text,))

    async def _converse(self, ask: AskRequest) -> Reply:
        """Run the prompt through the core as a message of the user's private chat."""
        assert ask.user is not None
        message = IncomingMessage(
            platform=PLATFORM,
            chat_id=ask.user,
            chat_kind=ChatKind.PRIVATE,
            user_id=ask.user,
            user_name=ask.user,
            message_id=uuid.uuid4().hex,
            text=ask.prompt,
            addressed=True,
        )
        future = await self._core.submit(message, CollectingSink(), ask.overrides())
        if future is None:  # a fresh id in a private chat: only a banned user's message is refused
            raise ApiError(403, "this user may not use the bot")
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if future.cancelled() and task is not None and not task.cancelling():
                # The core gave up on it at the shutdown deadline; the inbox keeps it for later.
                raise ShuttingDown from None
            raise


def _answer(choices: tuple[str, ...]) -> web.Response:
    """The /ask_gpt response: `message`, plus `messages` when several were asked for."""
    body: dict[str, object] = {"message": choices[0]}
    if len(choices) > 1:
        body["messages"] = list(choices)
    return web.json_response(body)


class HttpAdapter:
    """Serves the API on the configured host and port."""

    name = "http"

    def __init__(self, core: BotCore, settings: Settings) -> None:
        self._core = core
        self._settings = settings
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._runner is not None
        for address in self._runner.addresses:
            return int(address[1])
        raise RuntimeError("not listening")

    async def start(self) -> None:
        """Bind and serve."""
        self._runner = web.AppRunner(
            create_app(self._core, self._settings), access_log=None, shutdown_timeout=5
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._settings.http_host, self._settings.http_port, backlog=LISTEN_BACKLOG
        )
        await site.start()
        logger.info("HTTP API listening on http://%s:%d", self._settings.http_host, self.port)

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
