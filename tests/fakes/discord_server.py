"""A fake Discord gateway (websocket) and REST API on 127.0.0.1 that a real ``discord.Client`` runs against.

Usage::

    async with FakeDiscord() as fake:
        fake.patch_discord(monkeypatch)  # Route.BASE and DiscordWebSocket.DEFAULT_GATEWAY -> the fake
        client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
        async with client:
            await client.login(fake.token)
            task = asyncio.create_task(client.connect(reconnect=False))
            await client.wait_until_ready()
            await fake.dispatch("MESSAGE_CREATE", fake.guild_message(GENERAL_ID, ALICE_ID, "hi"))
            await fake.wait_for(lambda: fake.texts(GENERAL_ID))
            await client.close()
            await task

The identities (bot/application 1100000000000000001, guild, channels, users) are those of
``tests/payloads/discord/``: after IDENTIFY the fake sends READY (``_ready.json``, with a fresh
``session_id`` and ``resume_gateway_url`` pointing back at the fake) then GUILD_CREATE
(``_guild_create.json`` plus the channels and threads added since).

Scripting: ``dispatch(event, data)`` (it learns the messages, interactions and channels it carries;
events dispatched while no client is connected are delivered to the next one after its READY or
RESUMED), ``dispatch_file(path_or_sample_name)``, the ``d`` builders ``guild_message``, ``dm_message``
(``reply_to=`` a known message id) and ``interaction_ask``/``interaction_command`` (fresh snowflakes
that encode the current time, fresh tokens), ``add_channel``, ``fail_next``, ``request_reconnect``.
Reading: ``calls``/``calls_to`` (``Call(method, path, json, at, status, query)``, ``path`` without
``/api/v10``), ``messages``/``texts`` (the bot's messages in a channel as they are now, interaction
responses included), ``message(id)``, ``interaction_callbacks``, ``interaction_messages(token)``,
``commands(guild_id)``, ``threads``, ``identify_payload``/``intents``, ``identify_count``,
``resume_count``, ``heartbeats``, ``rate_limit_errors``; ``await wait_ready()``, ``await wait_for(pred)``.

Gateway: HELLO, heartbeat ACK, IDENTIFY (a wrong token closes with 4004), RESUME (RESUMED, or INVALID
SESSION for an unknown session), REQUEST_GUILD_MEMBERS (one GUILD_MEMBERS_CHUNK), plain-text JSON frames,
sequence numbers increasing per session. Intents are applied as Discord does: guild messages need
GUILD_MESSAGES, DMs need DIRECT_MESSAGES, and without MESSAGE_CONTENT a guild message that neither mentions
the bot (user or managed role) nor comes from it arrives with empty ``content``/``embeds``/``attachments``/
``components`` (``enforce_content_intent=False`` turns that off).

REST (``/api/v10``; bot routes need ``Authorization: Bot <token>``, interaction and webhook routes need
none, as on Discord): users/@me, users/{id}, users/@me/channels (open a DM), oauth2/applications/@me,
gateway(/bot), channels/{id} (GET), messages (create, get, list, edit, delete), typing, threads (with and
without a starter message; THREAD_CREATE is dispatched), interaction callbacks, interaction webhooks
(followups, ``@original``), application commands (global and guild, GET and bulk PUT). A callback
after ``interaction_ack_timeout_s`` (3 s) or a second one gets Discord's 10062/40060; a followup before
the callback 10015. A repeated ``nonce`` with ``enforce_nonce`` returns the first message. Answers carry
``Content-Type: application/json`` exactly and ``Via: 1.1 google`` (discord.py treats a 429 without
``Via`` as a Cloudflare ban and raises instead of retrying). Errors use Discord's body
``{"code": N, "message": "..."}`` (50035 adds ``errors``). The bot's own messages are dispatched back as
MESSAGE_CREATE/MESSAGE_UPDATE/MESSAGE_DELETE (``echo_own``), ephemeral interaction messages excepted.

Rate limits (``DiscordRateLimits``, on by default, ``rate_limits=None`` disables them and their headers):
message create and edit in one channel share one bucket (5 per 5 s); every other route has a bucket per
route and major parameter (channel, guild or webhook token); bot routes share a global limit (50/s).
Buckets are fixed windows starting at their first request. Every answer carries ``X-RateLimit-Limit``,
``-Remaining``, ``-Reset`` (epoch s), ``-Reset-After`` (s) and ``-Bucket``; the bucket id is per route like
Discord's (one for all channels; the channel is the major parameter, which discord.py adds itself).
A request over a limit is answered 429 ``{"message": "You are being rate limited.", "retry_after": s,
"global": bool}`` with ``Retry-After`` and ``X-RateLimit-Scope`` (``X-RateLimit-Global: true`` for the
global one), is not applied, and adds 1 to ``rate_limit_errors`` (as do scripted 429s).

What discord.py 2.7.1 does with these answers:

* It waits out a bucket pre-emptively: the request that gets ``Remaining: 0`` returns only after
  ``Reset-After``. Six quick sends in one channel therefore take one window longer and get no 429.
* On a 429 it sleeps ``retry_after`` and retries (up to 5 tries); on 500/502/504 it retries after
  1, 3, 5... s. Interaction webhooks (followups) retry the same way.
* ``InteractionResponse.defer()`` posts the callback with ``?with_response=1`` and parses the
  ``InteractionCallbackResponse`` body; without that query the fake answers 204 as Discord does.
* ``Messageable.send`` always sends a random ``nonce`` with ``enforce_nonce: true``.
* The bucket id must be the same for every channel: discord.py keys its buckets by route -> bucket id,
  and a per-channel id makes it re-key on every channel switch and forget the other channels' state.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import functools
import hashlib
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from aiohttp import WSMsgType, web

from tests.fakes.local_server import HOST, LocalServer

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
JSON_CONTENT_TYPE = "application/json"
PAYLOADS_DIR = Path(__file__).resolve().parent.parent / "payloads" / "discord"
DISCORD_EPOCH_MS = 1420070400000
HEARTBEAT_INTERVAL_MS = 41250
INTERACTION_ACK_TIMEOUT_S = 3.0
DEFAULT_TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.GfakeX.fake-token-for-gptrelay-tests-0000000000"

# Identities of the payload samples.
BOT_ID = 1100000000000000001
APPLICATION_ID = BOT_ID
BOT_ROLE_ID = 1100000000000000099
GUILD_ID = 1180000000000000000
CATEGORY_ID = 1180000000000000010
GENERAL_ID = 1180000000000000011
RANDOM_ID = 1180000000000000012
WELCOME_ID = 1180000000000000013
THREAD_ID = 1180000000000000020
ALICE_ID = 1190000000000000001
BOB_ID = 1190000000000000002
CAROL_ID = 1190000000000000003
HELPER_BOT_ID = 1190000000000000050
ALICE_DM_ID = 1190000000000000101
ASK_COMMAND_ID = 1100000000000000201

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_CHARS = 6000
MAX_THREAD_NAME = 100
MAX_NONCES = 10000
WRITE_BUCKET = "message_write"

# Gateway opcodes and intents.
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME = 0, 1, 2, 6
OP_RECONNECT, OP_REQUEST_MEMBERS, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 7, 8, 9, 10, 11
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
CLOSE_AUTHENTICATION_FAILED = 4004

# Channel, message and interaction types.
GUILD_TEXT, DM, GUILD_CATEGORY, GUILD_ANNOUNCEMENT = 0, 1, 4, 5
PUBLIC_THREAD, PRIVATE_THREAD, ANNOUNCEMENT_THREAD = 11, 12, 10
THREAD_TYPES = frozenset({ANNOUNCEMENT_THREAD, PUBLIC_THREAD, PRIVATE_THREAD})
TEXT_TYPES = frozenset({GUILD_TEXT, DM, GUILD_ANNOUNCEMENT, 2, 13, 15, 16}) | THREAD_TYPES
MESSAGE_DEFAULT, MESSAGE_REPLY, MESSAGE_CHAT_INPUT_COMMAND = 0, 19, 20
FLAG_EPHEMERAL, FLAG_LOADING = 64, 128
CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE = 4, 5
CALLBACK_TYPES = frozenset({1, 4, 5, 6, 7, 8, 9, 10, 12})
OPTION_TYPES: Mapping[type, int] = {str: 3, int: 4, bool: 5, float: 10}

# Discord's error codes and wording.
UNKNOWN_CHANNEL = (10003, "Unknown Channel")
UNKNOWN_MESSAGE = (10008, "Unknown Message")
UNKNOWN_USER = (10013, "Unknown User")
UNKNOWN_WEBHOOK = (10015, "Unknown Webhook")
UNKNOWN_APPLICATION = (10002, "Unknown Application")
UNKNOWN_INTERACTION = (10062, "Unknown interaction")
CANNOT_EDIT_OTHERS = (50005, "Cannot edit a message authored by another user")
EMPTY_MESSAGE = (50006, "Cannot send an empty message")
NON_TEXT_CHANNEL = (50008, "Cannot send messages in a non-text channel")
WRONG_CHANNEL_TYPE = (50024, "Cannot execute action on this channel type")
ALREADY_ACKNOWLEDGED = (40060, "Interaction has already been acknowledged.")
THREAD_ALREADY_CREATED = (160004, "A thread has already been created for this message")
INVALID_FORM_BODY = (50035, "Invalid Form Body")
RATE_LIMITED_MESSAGE = "You are being rate limited."
STATUS_PHRASES: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
BASE_HEADERS: Mapping[str, str] = {"Via": "1.1 google"}
MENTION_RE = re.compile(r"<@!?(\d+)>|<@&(\d+)>|@(everyone|here)\b")
COMMAND_NAME_RE = re.compile(r"^[-_'\w]{1,32}$")

T = TypeVar("T")


@dataclass(frozen=True)
class DiscordRateLimits:
    """Discord-like rate limits: message writes per channel, every other route, global (``None``: off)."""

    per_channel_writes: int = 5
    per_seconds: float = 5.0
    global_per_s: int | None = 50
    per_route: int = 50
    per_route_seconds: float = 1.0


DEFAULT_RATE_LIMITS = DiscordRateLimits()


@dataclass(slots=True)
class Call:
    """One REST request: method, path below ``/api/v10``, JSON body (or ``payload_json``), when, status."""

    method: str
    path: str
    json: Any
    at: float
    status: int = 200
    query: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class InteractionCallback:
    """One accepted interaction callback."""

    interaction_id: int
    token: str
    type: int
    data: dict[str, Any]
    at: float


class ApiError(Exception):
    """An error answer of the REST API."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        self.body = body if body is not None else {"code": code, "message": message}
        if errors is not None:
            self.body["errors"] = errors

    @classmethod
    def of(cls, status: int, error: tuple[int, str]) -> ApiError:
        """An error from one of the ``(code, message)`` constants."""
        return cls(status, error[0], error[1])

    @classmethod
    def form(cls, path: str, code: str, message: str) -> ApiError:
        """Discord's 400/50035 "Invalid Form Body" with one field error (``path`` dotted)."""
        errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
        for part in reversed(path.split(".")):
            errors = {part: errors}
        return cls(400, *INVALID_FORM_BODY, errors=errors)

    @classmethod
    def generic(cls, status: int) -> ApiError:
        """Discord's body for errors without a specific code: ``{"code": 0, "message": "404: Not Found"}``."""
        return cls(status, 0, f"{status}: {STATUS_PHRASES.get(status, 'Error')}")


@dataclass(frozen=True)
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: float | None
    code: int | None
    message: str | None
    is_global: bool


@dataclass(slots=True)
class _Channel:
    """A channel the fake knows: its object and the ids of its messages, in order."""

    data: dict[str, Any]
    id: int
    type: int
    guild_id: int | None
    message_ids: dict[int, None] = field(default_factory=dict)


@dataclass(slots=True)
class _Interaction:
    id: int
    token: str
    channel_id: int
    guild_id: int | None
    user: dict[str, Any]
    name: str
    created_at: float
    response_type: int | None = None
    original_id: int | None = None
    message_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Session:
    session_id: str
    intents: int
    seq: int = 0


@dataclass(slots=True, eq=False)
class _Connection:
    ws: web.WebSocketResponse
    session: _Session | None = None


@dataclass(slots=True)
class _Req:
    """What a REST handler gets: path parameters, decoded body, query, uploaded files."""

    params: dict[str, str]
    body: Any
    query: Mapping[str, str]
    files: list[dict[str, Any]]

    def int(self, name: str) -> int:
        return int(self.params[name])

    @property
    def payload(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


Handler = Callable[[_Req], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    template: str
    regex: re.Pattern[str]
    handler: Handler
    bucket: str
    auth: bool
    major: str | None


# ---------------------------------------------------------------- snowflakes and samples


def snowflake_ms(snowflake: int) -> int:
    """The Unix time in ms a snowflake encodes."""
    return (snowflake >> 22) + DISCORD_EPOCH_MS


def iso_timestamp(ms: int) -> str:
    """Discord's timestamp format: ``2026-11-24T09:15:00.123000+00:00``."""
    return dtm.datetime.fromtimestamp(ms / 1000, dtm.UTC).isoformat(timespec="microseconds")


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _read_frame(path: Path) -> dict[str, Any]:
    if not path.is_file():
        path = PAYLOADS_DIR / (path.name if path.suffix else f"{path.name}.json")
    return json.loads(_read_text(path))


@functools.cache
def _sample_text(name: str) -> str:
    return _read_text(PAYLOADS_DIR / name)


def load_frame(name: str) -> dict[str, Any]:
    """A fresh copy of one frame of ``tests/payloads/discord/`` (``name`` with or without ``.json``)."""
    return json.loads(_sample_text(name if name.endswith(".json") else f"{name}.json"))


@functools.cache
def _sample_people() -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Users and guild members (without ``user``) seen in the samples, by user id."""
    users: dict[int, dict[str, Any]] = {}
    members: dict[int, dict[str, Any]] = {}

    def learn(user: Mapping[str, Any] | None, member: Mapping[str, Any] | None) -> None:
        if not user:
            return
        user_id = int(user["id"])
        users.setdefault(user_id, {k: v for k, v in user.items() if k != "member"})
        if member:
            members.setdefault(user_id, {k: v for k, v in member.items() if k not in ("user", "permissions")})

    for path in sorted(PAYLOADS_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))["d"]
        for message in (data, data.get("referenced_message") or {}):
            learn(message.get("author"), message.get("member") if message is data else None)
            for mention in message.get("mentions", ()):
                learn(mention, mention.get("member"))
        member = data.get("member")
        if isinstance(member, dict) and "user" in member:
            learn(member["user"], member)
        for member in data.get("members", ()):
            learn(member["user"], member)
    return users, members


def _referenced(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as ``referenced_message`` carries it: no nesting, no ``member``/``guild_id``/``nonce``."""
    dropped = ("referenced_message", "member", "guild_id", "nonce", "channel_type")
    found = {k: v for k, v in message.items() if k not in dropped}
    found["mentions"] = [{k: v for k, v in m.items() if k != "member"} for m in message.get("mentions", ())]
    return found


def _public_user(user: Mapping[str, Any]) -> dict[str, Any]:
    """A user as it appears in messages (no ``verified``/``email``/``mfa_enabled``/``flags``)."""
    private = ("verified", "email", "mfa_enabled", "flags", "locale")
    return {k: v for k, v in user.items() if k not in private}


# ---------------------------------------------------------------- rate limits


class _RateLimiter:
    """Fixed-window buckets per (group, major parameter) and a sliding 1 s global window."""

    def __init__(self, limits: DiscordRateLimits) -> None:
        self.limits = limits
        self._buckets: dict[tuple[str, str], list[float]] = {}
        self._global: deque[float] = deque(maxlen=limits.global_per_s or 1)
        self._hashes: dict[str, str] = {}

    def bucket_hash(self, group: str) -> str:
        found = self._hashes.get(group)
        if found is None:
            found = self._hashes[group] = hashlib.md5(group.encode(), usedforsecurity=False).hexdigest()
        return found

    def admit_global(self, now: float) -> float | None:
        """Count one request against the global limit, or return the seconds to wait."""
        per_s = self.limits.global_per_s
        if not per_s:
            return None
        recent = self._global
        if len(recent) == per_s and recent[0] > now - 1.0:
            return recent[0] + 1.0 - now
        recent.append(now)
        return None

    def admit(self, group: str, major: str, now: float) -> tuple[dict[str, str], float | None]:
        """Count one request in its bucket: the headers, and the seconds to wait when it is refused."""
        limits = self.limits
        if group == WRITE_BUCKET:
            limit, window = limits.per_channel_writes, limits.per_seconds
        else:
            limit, window = limits.per_route, limits.per_route_seconds
        state = self._buckets.get((group, major))
        if state is None or state[0] <= now:
            state = self._buckets[(group, major)] = [now + window, float(limit)]
        reset_after = state[0] - now
        refused = state[1] <= 0
        if not refused:
            state[1] -= 1
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(int(state[1])),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": self.bucket_hash(group),
        }
        return headers, (reset_after if refused else None)


def _rate_limited(retry_after: float, *, is_global: bool, headers: Mapping[str, str]) -> ApiError:
    body = {"message": RATE_LIMITED_MESSAGE, "retry_after": round(retry_after, 3), "global": is_global}
    extra = {"Retry-After": str(max(1, math.ceil(retry_after))), **headers}
    extra["X-RateLimit-Scope"] = "global" if is_global else "user"
    if is_global:
        extra["X-RateLimit-Global"] = "true"
    return ApiError(429, 0, RATE_LIMITED_MESSAGE, headers=extra, body=body)


def _json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers={**BASE_HEADERS, **(headers or {})},
    )


# ---------------------------------------------------------------- message validation


def _embed_chars(embed: Mapping[str, Any]) -> int:
    total = len(str(embed.get("title") or "")) + len(str(embed.get("description") or ""))
    total += len(str((embed.get("footer") or {}).get("text") or ""))
    total += len(str((embed.get("author") or {}).get("name") or ""))
    for item in embed.get("fields") or ():
        total += len(str(item.get("name") or "")) + len(str(item.get("value") or ""))
    return total


def _check_message_fields(payload: Mapping[str, Any]) -> None:
    """Discord's 50035 checks on ``content`` and ``embeds``."""
    content = payload.get("content")
    if content is not None and not isinstance(content, str):
        raise ApiError.form("content", "BASE_TYPE_STRING", "Could not interpret input as a string.")
    if content and len(content) > MAX_CONTENT:
        raise ApiError.form("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length.")
    embeds = payload.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise ApiError.form("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    if sum(_embed_chars(embed) for embed in embeds) > MAX_EMBED_CHARS:
        raise ApiError.form("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")


def _is_empty(message: Mapping[str, Any]) -> bool:
    keys = ("embeds", "attachments", "sticker_ids", "sticker_items", "components", "poll")
    return not message.get("content") and not any(message.get(key) for key in keys)


# ---------------------------------------------------------------- the patch


class DiscordPatch:
    """Points discord.py at the fake (``Route.BASE``, ``DiscordWebSocket.DEFAULT_GATEWAY``); undo on exit."""

    def __init__(self, base: str, gateway: str, monkeypatch: Any | None) -> None:
        import discord.gateway
        import discord.http
        import yarl

        route, websocket = discord.http.Route, discord.gateway.DiscordWebSocket
        self._saved: tuple[str, Any] | None = None
        if monkeypatch is not None:
            monkeypatch.setattr(route, "BASE", base)
            monkeypatch.setattr(websocket, "DEFAULT_GATEWAY", yarl.URL(gateway))
            return
        self._saved = (route.BASE, websocket.DEFAULT_GATEWAY)
        route.BASE = base
        websocket.DEFAULT_GATEWAY = yarl.URL(gateway)

    def restore(self) -> None:
        """Put the original values back (a monkeypatch restores its own at teardown)."""
        if self._saved is None:
            return
        import discord.gateway
        import discord.http

        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved
        self._saved = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()


# ---------------------------------------------------------------- the server


class FakeDiscord(LocalServer):
    """A fake Discord gateway + REST API on ``127.0.0.1``: ``async with FakeDiscord() as fake``."""

    access_log = False  # benchmarks send it thousands of requests

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        rate_limits: DiscordRateLimits | None = DEFAULT_RATE_LIMITS,
        echo_own: bool = True,
        enforce_content_intent: bool = True,
        interaction_ack_timeout_s: float | None = INTERACTION_ACK_TIMEOUT_S,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
        clock: Callable[[], float] = time.monotonic,
        latency_s: float = 0.0,
    ) -> None:
        """Serve the sample bot under ``token``.

        Args:
            rate_limits: the limits, or ``None`` for none (and no rate-limit headers).
            echo_own: dispatch the bot's own created/edited/deleted messages back over the gateway.
            enforce_content_intent: blank guild message content the MESSAGE_CONTENT intent would hide.
            interaction_ack_timeout_s: a callback later than this after INTERACTION_CREATE gets 10062.
            clock: monotonic seconds for rate limits, the ack timeout and ``Call.at``.
            latency_s: sleep this long before answering each REST request.
        """
        super().__init__()
        self.token = token
        self.rate_limits = rate_limits
        self.echo_own = echo_own
        self.enforce_content_intent = enforce_content_intent
        self.interaction_ack_timeout_s = interaction_ack_timeout_s
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.latency_s = latency_s
        self.calls: list[Call] = []
        self.rate_limit_errors = 0
        self.heartbeats = 0
        self.identify_payload: dict[str, Any] | None = None
        self.identify_count = 0
        self.resume_count = 0
        self.interaction_callbacks: list[InteractionCallback] = []
        self.threads: list[dict[str, Any]] = []
        self._clock = clock
        self._limiter = _RateLimiter(rate_limits) if rate_limits is not None else None
        self._auth = f"Bot {token}"
        self._failures: list[_Failure] = []
        self._channels: dict[int, _Channel] = {}
        self._guild_channel_ids: list[int] = []
        self._thread_ids: list[int] = []
        self._dm_by_user: dict[int, int] = {}
        self._messages: dict[int, dict[str, Any]] = {}
        self._threads_from_messages: set[int] = set()
        self._nonces: dict[tuple[int, str], int] = {}
        self._interactions: dict[int, _Interaction] = {}
        self._interactions_by_token: dict[str, _Interaction] = {}
        self._commands: dict[int | None, list[dict[str, Any]]] = {}
        self._connections: set[_Connection] = set()
        self._sessions: dict[str, _Session] = {}
        self._backlog: list[tuple[str, dict[str, Any]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._ready = asyncio.Event()
        self._last_snowflake = 0
        self._patches: list[DiscordPatch] = []
        self._routes: dict[str, list[_Route]] = {}
        users, members = _sample_people()
        self._users: dict[int, dict[str, Any]] = dict(users)
        self._members: dict[int, dict[str, Any]] = dict(members)
        ready_user = load_frame("_ready")["d"]["user"]
        self.bot_user: dict[str, Any] = ready_user
        self._bot_public = _public_user(ready_user)
        self._bot_id_str = str(BOT_ID)
        self._load_guild()
        self._register_routes()

    # ------------------------------------------------------------ lifecycle

    def build_app(self) -> web.Application:
        """The gateway websocket, the REST API, and 404s in Discord's shape."""
        app = web.Application()
        app.router.add_route("GET", "/gateway", self._gateway)
        app.router.add_route("GET", "/gateway/", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def stop(self) -> None:
        """Close the gateway connections, stop serving and undo ``patch_discord``."""
        for connection in list(self._connections):
            await connection.ws.close(code=1001)
        await super().stop()
        while self._patches:
            self._patches.pop().restore()

    @property
    def api_base(self) -> str:
        """The value for ``discord.http.Route.BASE``."""
        return f"http://{HOST}:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """The value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (and READY's ``resume_gateway_url``)."""
        return f"ws://{HOST}:{self.port}/gateway"

    def patch_discord(self, monkeypatch: Any | None = None) -> DiscordPatch:
        """Point discord.py at the fake; undone by ``monkeypatch``, on ``with`` exit, or at ``stop()``."""
        patch = DiscordPatch(self.api_base, self.gateway_url, monkeypatch)
        self._patches.append(patch)
        return patch

    # ------------------------------------------------------------ what tests read

    def calls_to(self, pattern: str, method: str | None = None) -> list[Call]:
        """The calls whose path matches ``pattern`` (``re.search``), optionally of one method."""
        regex = re.compile(pattern)
        upper = method.upper() if method else None
        return [c for c in self.calls if (upper is None or c.method == upper) and regex.search(c.path)]

    def messages(self, channel_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a channel as they are now (after edits, without deleted ones), in order."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return []
        found = (self._messages[mid] for mid in channel.message_ids)
        return [dict(m) for m in found if m["author"]["id"] == self._bot_id_str]

    def texts(self, channel_id: int) -> list[str]:
        """The current content of each of the bot's messages in a channel."""
        return [message["content"] for message in self.messages(channel_id)]

    def message(self, message_id: int) -> dict[str, Any] | None:
        """Any message the fake knows (the bot's or dispatched), as it is now."""
        found = self._messages.get(message_id)
        return dict(found) if found is not None else None

    def interaction_messages(self, token: str) -> list[dict[str, Any]]:
        """The messages created through one interaction (original response first), as they are now."""
        interaction = self._interaction_by_token(token)
        if interaction is None:
            return []
        return [dict(self._messages[mid]) for mid in interaction.message_ids if mid in self._messages]

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """The application commands registered globally (``None``) or in one guild."""
        return [dict(command) for command in self._commands.get(guild_id, ())]

    @property
    def intents(self) -> int | None:
        """The intents of the last IDENTIFY."""
        return self.identify_payload.get("intents") if self.identify_payload else None

    async def wait_ready(self, timeout: float = 5.0) -> None:
        """Wait until a client has identified and been sent READY and GUILD_CREATE."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked after every request and gateway frame)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                waiter = loop.create_future()
                self._waiters.append(waiter)
                await waiter
        return result

    def _touch(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------ scripting

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 500,
        *,
        retry_after: float | None = None,
        code: int | None = None,
        message: str | None = None,
        is_global: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests (``re.search`` on the path) with an error.

        A 429 gets Discord's rate-limit body and headers (``retry_after`` defaults to 1 s); other
        statuses ``{"code": code or 0, "message": message or "<status>: <phrase>"}``.
        """
        failure = _Failure(
            method.upper(), re.compile(path_regex), status, retry_after, code, message, is_global
        )
        self._failures.extend([failure] * times)

    def new_snowflake(self, at_ms: int | None = None) -> int:
        """A fresh snowflake encoding now (or ``at_ms``), above every one handed out before."""
        ms = int(time.time() * 1000) if at_ms is None else at_ms
        value = (ms - DISCORD_EPOCH_MS) << 22
        if at_ms is None:
            value = max(value, self._last_snowflake + 1)
            self._last_snowflake = value
        return value

    def user(self, user_id: int) -> dict[str, Any]:
        """A user from the samples, or a plausible one for an unknown id."""
        found = self._users.get(user_id)
        if found is None:
            found = self._users[user_id] = {
                "username": f"user{user_id % 100000}",
                "public_flags": 0,
                "primary_guild": None,
                "id": str(user_id),
                "global_name": None,
                "display_name_styles": None,
                "discriminator": "0",
                "collectibles": None,
                "clan": None,
                "avatar_decoration_data": None,
                "avatar": None,
            }
        return found

    def member(self, user_id: int) -> dict[str, Any]:
        """A guild member (without ``user``) from the samples, or a plausible one."""
        found = self._members.get(user_id)
        if found is None:
            found = self._members[user_id] = {
                "roles": [],
                "premium_since": None,
                "pending": False,
                "nick": None,
                "mute": False,
                "joined_at": "2025-06-14T08:02:51.230000+00:00",
                "flags": 0,
                "deaf": False,
                "communication_disabled_until": None,
                "banner": None,
                "avatar": None,
            }
        return found

    def _user_with_member(self, user_id: int) -> dict[str, Any]:
        return {**self.user(user_id), "member": self.member(user_id)}

    def guild_message(
        self,
        channel_id: int = GENERAL_ID,
        author_id: int = ALICE_ID,
        content: str = "hello",
        *,
        mentions_bot: bool = True,
        reply_to: int | None = None,
        reply_ping: bool = True,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE ``d`` in a guild channel shaped like ``guild_mention_user.json``.

        ``mentions_bot`` puts ``<@BOT_ID>`` in front of the content (unless already there) and the bot in
        ``mentions``; ``reply_to`` makes it a reply (type 19) to a known message, whose author is
        pinged when ``reply_ping``. An unknown channel id becomes a text channel of the guild.
        """
        channel = self._channels.get(channel_id) or self._add_channel_now(channel_id, GUILD_TEXT)
        mid = message_id or self.new_snowflake()
        mentions: list[dict[str, Any]] = []
        if mentions_bot:
            tag = f"<@{BOT_ID}>"
            if tag not in content:
                content = f"{tag} {content}"
            mentions.append(self._user_with_member(BOT_ID))
        message: dict[str, Any] = {
            "type": MESSAGE_DEFAULT,
            "tts": False,
            "timestamp": iso_timestamp(snowflake_ms(mid)),
            "pinned": False,
            "nonce": str(mid + 1),
            "mentions": mentions,
            "mention_roles": [],
            "mention_everyone": False,
            "member": self.member(author_id),
            "id": str(mid),
            "flags": 0,
            "embeds": [],
            "edited_timestamp": None,
            "content": content,
            "components": [],
            "channel_type": channel.type,
            "channel_id": str(channel_id),
            "author": self.user(author_id),
            "attachments": [],
            "guild_id": str(channel.guild_id or GUILD_ID),
        }
        if reply_to is not None:
            self._attach_reply(message, reply_to, ping=reply_ping)
        return message

    def dm_message(
        self,
        author_id: int = ALICE_ID,
        content: str = "hello",
        *,
        reply_to: int | None = None,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """A MESSAGE_CREATE ``d`` in the DM between ``author_id`` and the bot, like ``dm_message.json``."""
        channel_id = self._dm_channel(author_id)
        mid = message_id or self.new_snowflake()
        message: dict[str, Any] = {
            "type": MESSAGE_DEFAULT,
            "tts": False,
            "timestamp": iso_timestamp(snowflake_ms(mid)),
            "pinned": False,
            "nonce": str(mid + 1),
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "id": str(mid),
            "flags": 0,
            "embeds": [],
            "edited_timestamp": None,
            "content": content,
            "components": [],
            "channel_type": DM,
            "channel_id": str(channel_id),
            "author": self.user(author_id),
            "attachments": [],
        }
        if reply_to is not None:
            self._attach_reply(message, reply_to, ping=False)
        return message

    def _attach_reply(self, message: dict[str, Any], reply_to: int, *, ping: bool) -> None:
        """Make an inbound message a reply (type 19) to a message the fake knows."""
        target = self._messages.get(reply_to)
        if target is None:
            raise KeyError(f"reply_to={reply_to}: the fake knows no such message")
        message["type"] = MESSAGE_REPLY
        reference = {"type": 0, "channel_id": target["channel_id"], "message_id": target["id"]}
        if "guild_id" in message:
            reference["guild_id"] = message["guild_id"]
        message["message_reference"] = reference
        message["referenced_message"] = _referenced(target)
        author_id = target["author"]["id"]
        if ping and all(m["id"] != author_id for m in message["mentions"]):
            message["mentions"].append(self._user_with_member(int(author_id)))

    def interaction_ask(
        self, prompt: str, *, guild: bool = True, user_id: int = ALICE_ID, channel_id: int | None = None
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE ``d`` for ``/ask prompt:<prompt>`` with a fresh id and token."""
        return self.interaction_command(
            "ask", {"prompt": prompt}, guild=guild, user_id=user_id, channel_id=channel_id
        )

    def interaction_command(
        self,
        name: str,
        options: Mapping[str, str | int | bool | float] | None = None,
        *,
        guild: bool = True,
        user_id: int = ALICE_ID,
        channel_id: int | None = None,
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE ``d`` for a slash command, shaped like ``interaction_slash_ask_*.json``."""
        data = load_frame("interaction_slash_ask_guild" if guild else "interaction_slash_ask_dm")["d"]
        interaction_id = self.new_snowflake()
        data["id"] = str(interaction_id)
        data["token"] = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        scopes = (GUILD_ID, None) if guild else (None,)
        command_id = next(
            (c["id"] for scope in scopes for c in self._commands.get(scope, ()) if c["name"] == name), None
        )
        data["data"] = {
            "type": 1,
            "options": [
                {"value": value, "type": OPTION_TYPES.get(type(value), 3), "name": key}
                for key, value in (options or {}).items()
            ],
            "name": name,
            "id": str(command_id or ASK_COMMAND_ID),
        }
        user = self.user(user_id)
        if guild:
            data["member"] = {**self.member(user_id), **data["member"], "user": user}
            if user_id != ALICE_ID:
                data["member"]["roles"] = self.member(user_id)["roles"]
            if channel_id is not None:
                channel = self._channels.get(channel_id) or self._add_channel_now(channel_id, GUILD_TEXT)
                data["channel_id"] = str(channel_id)
                data["channel"] = {
                    **channel.data,
                    "guild_id": str(GUILD_ID),
                    "permissions": "9007199254740991",
                }
        else:
            data["user"] = user
            dm_id = self._dm_channel(user_id)
            data["channel_id"] = str(dm_id)
            data["channel"] = {**data["channel"], "id": str(dm_id), "recipients": [user]}
        return data

    async def add_channel(
        self,
        channel_id: int,
        name: str | None = None,
        *,
        type: int = GUILD_TEXT,
        parent_id: int | None = None,
    ) -> dict[str, Any]:
        """Add a guild channel (dispatching CHANNEL_CREATE, or THREAD_CREATE for a thread type)."""
        channel = self._add_channel_now(channel_id, type, name=name, parent_id=parent_id)
        event = "THREAD_CREATE" if type in THREAD_TYPES else "CHANNEL_CREATE"
        await self._broadcast(event, {**channel.data, "guild_id": str(GUILD_ID)})
        return dict(channel.data)

    async def dispatch(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send a dispatch frame to every ready client (or to the next one, when none is connected).

        MESSAGE_CREATE teaches the fake the message (for replies, fetches, threads); INTERACTION_CREATE
        the interaction (for callbacks and followups); CHANNEL_CREATE/THREAD_CREATE the channel.
        """
        self._learn(event, data)
        await self._broadcast(event, data)
        return data

    async def dispatch_file(self, path: str | Path) -> dict[str, Any]:
        """Dispatch a frame file, or a sample by name (``"dm_message"``); ``s`` becomes the next sequence."""
        frame = _read_frame(Path(path))
        return await self.dispatch(frame["t"], frame["d"])

    async def request_reconnect(self) -> None:
        """Send op 7 RECONNECT to every client (discord.py then RESUMEs at ``resume_gateway_url``)."""
        for connection in list(self._connections):
            await self._send(connection, {"op": OP_RECONNECT, "d": None, "s": None, "t": None})

    # ------------------------------------------------------------ state

    def _load_guild(self) -> None:
        guild = load_frame("_guild_create")["d"]
        for channel in guild["channels"]:
            self._register_channel(channel, GUILD_ID)
            self._guild_channel_ids.append(int(channel["id"]))
        for thread in guild["threads"]:
            self._register_channel(thread, GUILD_ID)
            self._thread_ids.append(int(thread["id"]))
        self._register_channel(self._dm_object(ALICE_DM_ID, ALICE_ID), None)
        self._dm_by_user[ALICE_ID] = ALICE_DM_ID

    def _register_channel(self, data: dict[str, Any], guild_id: int | None) -> _Channel:
        channel_id = int(data["id"])
        known = self._channels.get(channel_id)
        if known is not None:
            known.data = data
            return known
        channel = _Channel(data, channel_id, int(data.get("type", GUILD_TEXT)), guild_id)
        self._channels[channel_id] = channel
        return channel

    def _add_channel_now(
        self, channel_id: int, type: int, *, name: str | None = None, parent_id: int | None = None
    ) -> _Channel:
        if type in THREAD_TYPES:
            data = self._thread_object(
                channel_id, parent_id or GENERAL_ID, name or f"thread-{channel_id}", type
            )
        else:
            data = {
                "version": 1764000000000,
                "type": type,
                "topic": None,
                "rate_limit_per_user": 0,
                "position": len(self._guild_channel_ids),
                "permission_overwrites": [],
                "parent_id": str(parent_id or CATEGORY_ID),
                "nsfw": False,
                "name": name or f"channel-{channel_id}",
                "last_message_id": None,
                "id": str(channel_id),
                "flags": 0,
            }
        channel = self._register_channel(data, GUILD_ID)
        (self._thread_ids if type in THREAD_TYPES else self._guild_channel_ids).append(channel_id)
        return channel

    def _dm_object(self, channel_id: int, user_id: int) -> dict[str, Any]:
        return {
            "type": DM,
            "recipients": [self.user(user_id)],
            "recipient_flags": 0,
            "last_message_id": None,
            "id": str(channel_id),
            "flags": 0,
        }

    def _dm_channel(self, user_id: int) -> int:
        channel_id = self._dm_by_user.get(user_id)
        if channel_id is None:
            channel_id = self._dm_by_user[user_id] = self.new_snowflake()
            self._register_channel(self._dm_object(channel_id, user_id), None)
        return channel_id

    def _thread_object(
        self, thread_id: int, parent_id: int, name: str, type: int, archive_min: int = 1440
    ) -> dict[str, Any]:
        now = iso_timestamp(int(time.time() * 1000))
        metadata: dict[str, Any] = {
            "archived": False,
            "auto_archive_duration": archive_min,
            "archive_timestamp": now,
            "locked": False,
            "create_timestamp": now,
        }
        if type == PRIVATE_THREAD:
            metadata["invitable"] = True
        return {
            "id": str(thread_id),
            "guild_id": str(GUILD_ID),
            "parent_id": str(parent_id),
            "owner_id": self._bot_id_str,
            "type": type,
            "name": name,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "total_message_sent": 0,
            "thread_metadata": metadata,
        }

    def _learn(self, event: str, data: dict[str, Any]) -> None:
        if event == "MESSAGE_CREATE":
            channel_id = int(data["channel_id"])
            channel = self._channels.get(channel_id)
            if channel is None:
                guild_id = data.get("guild_id")
                if guild_id is None:
                    author_id = int(data["author"]["id"])
                    self._register_channel(self._dm_object(channel_id, author_id), None)
                    self._dm_by_user.setdefault(author_id, channel_id)
                    channel = self._channels[channel_id]
                else:
                    channel = self._add_channel_now(channel_id, int(data.get("channel_type", GUILD_TEXT)))
            self._store(channel, data)
            self._users.setdefault(int(data["author"]["id"]), data["author"])
        elif event == "MESSAGE_UPDATE" and int(data.get("id", 0)) in self._messages:
            self._messages[int(data["id"])] = {**self._messages[int(data["id"])], **data}
        elif event == "MESSAGE_DELETE" and int(data.get("id", 0)) in self._messages:
            del self._messages[int(data["id"])]
            self._channels[int(data["channel_id"])].message_ids.pop(int(data["id"]), None)
        elif event == "INTERACTION_CREATE":
            user = data.get("user") or data.get("member", {}).get("user") or {}
            interaction = _Interaction(
                id=int(data["id"]),
                token=data["token"],
                channel_id=int(data["channel_id"]),
                guild_id=int(data["guild_id"]) if data.get("guild_id") else None,
                user=user,
                name=data.get("data", {}).get("name", ""),
                created_at=self._clock(),
            )
            self._interactions[interaction.id] = interaction
            self._interactions_by_token[interaction.token] = interaction
            if interaction.channel_id not in self._channels and isinstance(data.get("channel"), dict):
                self._register_channel(data["channel"], interaction.guild_id)
        elif event in ("CHANNEL_CREATE", "THREAD_CREATE"):
            guild_id = data.get("guild_id")
            self._register_channel(data, int(guild_id) if guild_id else None)

    def _store(self, channel: _Channel, message: dict[str, Any]) -> None:
        mid = int(message["id"])
        self._messages[mid] = message
        channel.message_ids[mid] = None

    def _interaction_by_token(self, token: str) -> _Interaction | None:
        return self._interactions_by_token.get(token)

    # ------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        connection = _Connection(ws)
        self._connections.add(connection)
        try:
            hello = {"heartbeat_interval": self.heartbeat_interval_ms, "_trace": ['["gateway-fake",{}]']}
            await self._send(connection, {"op": OP_HELLO, "d": hello, "s": None, "t": None})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(connection, json.loads(msg.data))
                    self._touch()
        finally:
            self._connections.discard(connection)
        return ws

    async def _send(self, connection: _Connection, frame: Mapping[str, Any]) -> None:
        try:
            await connection.ws.send_str(json.dumps(frame, ensure_ascii=False))
        except (ConnectionError, RuntimeError):
            logger.debug("gateway send to a closing socket dropped")
            connection.session = None

    async def _send_event(self, connection: _Connection, event: str, data: Mapping[str, Any]) -> None:
        session = connection.session
        if session is None:
            return
        session.seq += 1
        await self._send(connection, {"op": OP_DISPATCH, "s": session.seq, "t": event, "d": data})

    async def _on_frame(self, connection: _Connection, frame: Mapping[str, Any]) -> None:
        op = frame.get("op")
        data = frame.get("d")
        if op == OP_HEARTBEAT:
            self.heartbeats += 1
            await self._send(connection, {"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
        elif op == OP_IDENTIFY and isinstance(data, dict):
            await self._identify(connection, data)
        elif op == OP_RESUME and isinstance(data, dict):
            await self._resume(connection, data)
        elif op == OP_REQUEST_MEMBERS and isinstance(data, dict) and connection.session is not None:
            members = [{**self.member(uid), "user": self.user(uid)} for uid in self._members]
            chunk = {
                "guild_id": str(data.get("guild_id") or GUILD_ID),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce"):
                chunk["nonce"] = data["nonce"]
            await self._send_event(connection, "GUILD_MEMBERS_CHUNK", chunk)
        else:
            logger.debug("gateway op %s ignored", op)

    async def _identify(self, connection: _Connection, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await connection.ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        self.identify_payload = data
        self.identify_count += 1
        session = _Session(uuid.uuid4().hex, int(data.get("intents") or 0))
        self._sessions[session.session_id] = session
        connection.session = session
        ready = load_frame("_ready")["d"]
        ready["session_id"] = session.session_id
        ready["resume_gateway_url"] = self.gateway_url
        if data.get("shard"):
            ready["shard"] = data["shard"]
        await self._send_event(connection, "READY", ready)
        await self._send_event(connection, "GUILD_CREATE", self._guild_payload())
        await self._flush_backlog(connection)
        self._ready.set()

    async def _resume(self, connection: _Connection, data: dict[str, Any]) -> None:
        session = self._sessions.get(str(data.get("session_id")))
        if data.get("token") != self.token:
            await connection.ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        if session is None:
            await self._send(connection, {"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        self.resume_count += 1
        for other in self._connections:
            if other.session is session:
                other.session = None
        connection.session = session
        await self._flush_backlog(connection)
        await self._send_event(connection, "RESUMED", {"_trace": ['["gateway-fake",{}]']})

    async def _flush_backlog(self, connection: _Connection) -> None:
        backlog, self._backlog = self._backlog, []
        for event, data in backlog:
            await self._deliver(connection, event, data)

    def _guild_payload(self) -> dict[str, Any]:
        guild = load_frame("_guild_create")["d"]
        guild["channels"] = [self._channels[cid].data for cid in self._guild_channel_ids]
        guild["threads"] = [
            {**self._channels[tid].data, "guild_id": str(GUILD_ID)} for tid in self._thread_ids
        ]
        return guild

    async def _broadcast(self, event: str, data: dict[str, Any]) -> None:
        ready = [c for c in self._connections if c.session is not None]
        if not ready:
            self._backlog.append((event, data))
            return
        for connection in ready:
            await self._deliver(connection, event, data)

    async def _deliver(self, connection: _Connection, event: str, data: dict[str, Any]) -> None:
        """Send one event as Discord would to this session's intents."""
        session = connection.session
        if session is None:
            return
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"):
            needed = INTENT_GUILD_MESSAGES if data.get("guild_id") else INTENT_DIRECT_MESSAGES
            if not session.intents & needed:
                return
            if event != "MESSAGE_DELETE" and self._hides_content(session, data):
                data = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
        await self._send_event(connection, event, data)

    def _hides_content(self, session: _Session, data: Mapping[str, Any]) -> bool:
        if not self.enforce_content_intent or session.intents & INTENT_MESSAGE_CONTENT:
            return False
        if not data.get("guild_id") or data.get("author", {}).get("id") == self._bot_id_str:
            return False
        if any(m.get("id") == self._bot_id_str for m in data.get("mentions", ())):
            return False
        return str(BOT_ROLE_ID) not in data.get("mention_roles", ())

    # ------------------------------------------------------------ REST plumbing

    def _register_routes(self) -> None:
        write = WRITE_BUCKET
        channel, message = "/channels/{channel_id}", "/channels/{channel_id}/messages/{message_id}"
        webhook = "/webhooks/{application_id}/{token}"
        commands, guild_commands = (
            "/applications/{application_id}",
            "/applications/{application_id}/guilds/{guild_id}",
        )
        table: list[tuple[str, str, Handler, str | None]] = [
            ("GET", "/gateway", self._get_gateway, None),
            ("GET", "/gateway/bot", self._get_gateway_bot, None),
            ("GET", "/users/@me", self._get_me, None),
            ("GET", "/users/{user_id}", self._get_user, None),
            ("POST", "/users/@me/channels", self._create_dm, None),
            ("GET", "/oauth2/applications/@me", self._get_application, None),
            ("GET", "/applications/@me", self._get_application, None),
            ("GET", channel, self._get_channel, None),
            ("GET", channel + "/messages", self._list_messages, None),
            ("POST", channel + "/messages", self._create_message, write),
            ("GET", message, self._get_message, None),
            ("PATCH", message, self._edit_message, write),
            ("DELETE", message, self._delete_message, None),
            ("POST", channel + "/typing", self._typing, None),
            ("POST", channel + "/threads", self._create_thread, None),
            ("POST", message + "/threads", self._thread_from_message, None),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, None),
            ("POST", webhook, self._followup, None),
            ("GET", webhook + "/messages/{message_id}", self._get_webhook_message, None),
            ("PATCH", webhook + "/messages/{message_id}", self._edit_webhook_message, None),
            ("DELETE", webhook + "/messages/{message_id}", self._delete_webhook_message, None),
            ("GET", commands + "/commands", self._get_commands, None),
            ("PUT", commands + "/commands", self._put_commands, None),
            ("GET", guild_commands + "/commands", self._get_commands, None),
            ("PUT", guild_commands + "/commands", self._put_commands, None),
        ]
        for method, template, handler, bucket in table:
            # Interaction and webhook routes are authorized by their token, as on Discord.
            auth = template != "/gateway" and not template.startswith(("/interactions/", "/webhooks/"))
            pattern = re.sub(r"\{(\w+)\}", _param_regex, template)
            major = next((p for p in ("channel_id", "guild_id", "token") if "{" + p + "}" in template), None)
            bucket_name = bucket or f"{method} {template}"
            route = _Route(method, template, re.compile(pattern + "$"), handler, bucket_name, auth, major)
            self._routes.setdefault(template.split("/")[1], []).append(route)

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        allowed = False
        for route in self._routes.get(path.split("/", 2)[1], ()):
            found = route.regex.match(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict()
            allowed = True
        raise ApiError.generic(405 if allowed else 404)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _json_response(ApiError.generic(404).body, 404)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[dict[str, Any]]]:
        if not request.body_exists:
            return None, []
        if request.content_type == JSON_CONTENT_TYPE:
            try:
                return await request.json(), []
            except ValueError:
                raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        if request.content_type.startswith("multipart/"):
            body: Any = None
            files: list[dict[str, Any]] = []
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    size = len(value.file.read())
                    files.append({"field": key, "filename": value.filename, "size": size})
                elif key == "payload_json":
                    body = json.loads(str(value))
            return body, files
        return None, []

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path[len(API_PREFIX) :] or "/"
        method = request.method
        now = self._clock()
        call = Call(method, path, None, now, query=dict(request.query))
        self.calls.append(call)
        headers: dict[str, str] = {}
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        try:
            call.json, files = await self._read_body(request)
            route, params = self._match(method, path)
            if route.auth and request.headers.get("Authorization") != self._auth:
                raise ApiError.generic(401)
            headers = self._admit(route, params, method, path, now)
            result = await route.handler(_Req(params, call.json, request.query, files))
        except ApiError as error:
            call.status = error.status
            if error.status == 429:
                self.rate_limit_errors += 1
            logger.debug("%s %s -> %s", method, path, error.status)
            self._touch()
            return _json_response(error.body, error.status, {**headers, **error.headers})
        self._touch()
        if result is None:
            call.status = 204
            return web.Response(status=204, headers={**BASE_HEADERS, **headers})
        return _json_response(result, 200, headers)

    def _admit(
        self, route: _Route, params: dict[str, str], method: str, path: str, now: float
    ) -> dict[str, str]:
        """Scripted failures, then the global and bucket limits; the rate-limit headers to send."""
        limiter = self._limiter
        major = params.get(route.major, "") if route.major else ""
        for index, failure in enumerate(self._failures):
            if failure.method == method and failure.pattern.search(path):
                del self._failures[index]
                raise self._scripted(failure, route)
        if limiter is None:
            return {}
        if route.auth and route.template != "/gateway":
            wait = limiter.admit_global(now)
            if wait is not None:
                raise _rate_limited(wait, is_global=True, headers={})
        headers, wait = limiter.admit(route.bucket, major, now)
        if wait is not None:
            raise _rate_limited(wait, is_global=False, headers=headers)
        return headers

    def _scripted(self, failure: _Failure, route: _Route) -> ApiError:
        if failure.status != 429:
            error = ApiError.generic(failure.status)
            if failure.code is not None or failure.message is not None:
                error = ApiError(failure.status, failure.code or 0, failure.message or error.body["message"])
            return error
        retry_after = 1.0 if failure.retry_after is None else failure.retry_after
        headers: dict[str, str] = {}
        if self._limiter is not None and not failure.is_global:
            headers = {
                "X-RateLimit-Limit": "1",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": self._limiter.bucket_hash(route.bucket),
            }
        return _rate_limited(retry_after, is_global=failure.is_global, headers=headers)

    # ------------------------------------------------------------ REST: identity

    async def _get_gateway(self, req: _Req) -> dict[str, Any]:
        return {"url": self.gateway_url}

    async def _get_gateway_bot(self, req: _Req) -> dict[str, Any]:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}
        return {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}

    async def _get_me(self, req: _Req) -> dict[str, Any]:
        return self.bot_user

    async def _get_user(self, req: _Req) -> dict[str, Any]:
        user = self._users.get(req.int("user_id"))
        if user is None:
            raise ApiError.of(404, UNKNOWN_USER)
        return user

    async def _create_dm(self, req: _Req) -> dict[str, Any]:
        recipient = req.payload.get("recipient_id")
        if not str(recipient or "").isdigit():
            raise ApiError.form("recipient_id", "BASE_TYPE_REQUIRED", "This field is required")
        return dict(self._channels[self._dm_channel(int(recipient))].data)

    async def _get_application(self, req: _Req) -> dict[str, Any]:
        return {
            "id": str(APPLICATION_ID),
            "name": self.bot_user["username"],
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.user(ALICE_ID),
            "team": None,
            "flags": 8912896,
            "bot": self._bot_public,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "integration_types_config": {"0": {}, "1": {}},
        }

    # ------------------------------------------------------------ REST: channels and messages

    def _channel(self, req: _Req) -> _Channel:
        channel = self._channels.get(req.int("channel_id"))
        if channel is None:
            raise ApiError.of(404, UNKNOWN_CHANNEL)
        return channel

    def _message_in(self, channel: _Channel, message_id: int) -> dict[str, Any]:
        if message_id not in channel.message_ids:
            raise ApiError.of(404, UNKNOWN_MESSAGE)
        return self._messages[message_id]

    async def _get_channel(self, req: _Req) -> dict[str, Any]:
        channel = self._channel(req)
        data = dict(channel.data)
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        return data

    async def _list_messages(self, req: _Req) -> list[dict[str, Any]]:
        channel = self._channel(req)
        limit = max(1, min(100, int(req.query.get("limit", 50))))
        before = int(req.query.get("before", 0)) or None
        after = int(req.query.get("after", 0)) or None
        ids = sorted(channel.message_ids, reverse=True)
        ids = [m for m in ids if (before is None or m < before) and (after is None or m > after)]
        return [self._messages[m] for m in ids[:limit]]

    async def _get_message(self, req: _Req) -> dict[str, Any]:
        return self._message_in(self._channel(req), req.int("message_id"))

    async def _create_message(self, req: _Req) -> dict[str, Any]:
        channel = self._channel(req)
        if channel.type not in TEXT_TYPES:
            raise ApiError.of(400, NON_TEXT_CHANNEL)
        return await self._new_bot_message(channel, req.payload, req.files)

    async def _edit_message(self, req: _Req) -> dict[str, Any]:
        channel = self._channel(req)
        current = self._message_in(channel, req.int("message_id"))
        if current["author"]["id"] != self._bot_id_str:
            raise ApiError.of(403, CANNOT_EDIT_OTHERS)
        return await self._apply_edit(channel, current, req.payload)

    async def _delete_message(self, req: _Req) -> None:
        channel = self._channel(req)
        self._message_in(channel, req.int("message_id"))
        await self._remove_message(channel, req.int("message_id"))

    async def _typing(self, req: _Req) -> None:
        self._channel(req)

    async def _new_bot_message(
        self,
        channel: _Channel,
        payload: Mapping[str, Any],
        files: list[dict[str, Any]],
        *,
        message_type: int = MESSAGE_DEFAULT,
        extra: Mapping[str, Any] | None = None,
        allow_empty: bool = False,
    ) -> dict[str, Any]:
        """Validate, store and echo a message authored by the bot; the REST message object."""
        _check_message_fields(payload)
        nonce = payload.get("nonce")
        nonce_key = (channel.id, str(nonce))
        if nonce is not None and payload.get("enforce_nonce"):
            # Discord answers a repeated nonce with the message it already created (discord.py 2.7
            # sends a random nonce with enforce_nonce on every Messageable.send).
            known = self._nonces.get(nonce_key)
            if known is not None and known in self._messages:
                return self._messages[known]
        attachments = [
            {
                "id": str(self.new_snowflake()),
                "filename": f["filename"],
                "size": f["size"],
                "url": f"https://cdn.discordapp.com/attachments/{channel.id}/{f['filename']}",
                "proxy_url": f"https://media.discordapp.net/attachments/{channel.id}/{f['filename']}",
            }
            for f in files
        ]
        if not allow_empty and _is_empty({**payload, "attachments": attachments}):
            raise ApiError.of(400, EMPTY_MESSAGE)
        reference = self._reference_for(payload.get("message_reference"))
        mid = self.new_snowflake()
        content = payload.get("content") or ""
        message: dict[str, Any] = {
            "type": MESSAGE_REPLY
            if reference is not None and message_type == MESSAGE_DEFAULT
            else message_type,
            "content": content,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": list(payload.get("embeds") or []),
            "timestamp": iso_timestamp(snowflake_ms(mid)),
            "edited_timestamp": None,
            "flags": int(payload.get("flags") or 0),
            "components": list(payload.get("components") or []),
            "id": str(mid),
            "channel_id": str(channel.id),
            "author": self._bot_public,
            "pinned": False,
            "mention_everyone": False,
            "tts": bool(payload.get("tts")),
        }
        if nonce is not None:
            message["nonce"] = nonce
            self._nonces[nonce_key] = mid
            if len(self._nonces) > MAX_NONCES:
                del self._nonces[next(iter(self._nonces))]
        if extra:
            message.update(extra)
        self._apply_mentions(message, channel, payload.get("allowed_mentions"), reference)
        if reference is not None:
            message["message_reference"] = {
                "type": 0,
                "channel_id": reference["channel_id"],
                "message_id": reference["id"],
                **({"guild_id": str(channel.guild_id)} if channel.guild_id else {}),
            }
            message["referenced_message"] = _referenced(reference)
        self._store(channel, message)
        if self.echo_own and not message["flags"] & FLAG_EPHEMERAL:
            await self._broadcast("MESSAGE_CREATE", self._gateway_form(channel, message))
        return message

    def _reference_for(self, reference: Any) -> dict[str, Any] | None:
        if not isinstance(reference, dict) or reference.get("message_id") is None:
            return None
        found = self._messages.get(int(reference["message_id"]))
        if found is not None:
            return found
        if reference.get("fail_if_not_exists", True) is False:
            return None
        raise ApiError.form("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")

    def _apply_mentions(
        self,
        message: dict[str, Any],
        channel: _Channel,
        allowed: Any,
        reference: Mapping[str, Any] | None,
    ) -> None:
        """Fill ``mentions``/``mention_roles``/``mention_everyone`` as ``allowed_mentions`` permits."""
        if isinstance(allowed, dict):
            parse = set(allowed.get("parse") or ())
            users = {str(u) for u in allowed.get("users") or ()}
            roles = {str(r) for r in allowed.get("roles") or ()}
            replied = bool(allowed.get("replied_user", False))
        else:
            parse, users, roles, replied = {"users", "roles", "everyone"}, set(), set(), True
        in_guild = channel.guild_id is not None
        mentioned: dict[str, dict[str, Any]] = {}
        for user_id, role_id, everyone in MENTION_RE.findall(message["content"]):
            if user_id and ("users" in parse or user_id in users) and int(user_id) in self._users:
                user = self._users[int(user_id)]
                mentioned[user_id] = self._user_with_member(int(user_id)) if in_guild else user
            elif role_id and ("roles" in parse or role_id in roles):
                message["mention_roles"].append(role_id)
            elif everyone and "everyone" in parse:
                message["mention_everyone"] = True
        if reference is not None and replied:
            author_id = reference["author"]["id"]
            if author_id != self._bot_id_str and author_id not in mentioned:
                user_id = int(author_id)
                mentioned[author_id] = self._user_with_member(user_id) if in_guild else self.user(user_id)
        message["mentions"] = list(mentioned.values())

    def _gateway_form(self, channel: _Channel, message: Mapping[str, Any]) -> dict[str, Any]:
        """A stored message as MESSAGE_CREATE/UPDATE carries it (``guild_id`` and ``member`` in guilds)."""
        if channel.guild_id is None:
            return {**message, "channel_type": channel.type}
        return {
            **message,
            "channel_type": channel.type,
            "guild_id": str(channel.guild_id),
            "member": self.member(int(message["author"]["id"])),
        }

    async def _apply_edit(
        self, channel: _Channel, current: dict[str, Any], payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        _check_message_fields(payload)
        edited = dict(current)
        for key in ("content", "embeds", "components", "attachments"):
            if key in payload:
                edited[key] = payload[key] if payload[key] is not None else ("" if key == "content" else [])
        if "flags" in payload and payload["flags"] is not None:
            edited["flags"] = int(payload["flags"]) | (current["flags"] & FLAG_EPHEMERAL)
        edited["flags"] &= ~FLAG_LOADING
        if _is_empty(edited):
            raise ApiError.of(400, EMPTY_MESSAGE)
        if "content" in payload:
            edited["mentions"], edited["mention_roles"], edited["mention_everyone"] = [], [], False
            reference = (
                self._messages.get(int(current["message_reference"]["message_id"]))
                if ("message_reference" in current)
                else None
            )
            self._apply_mentions(edited, channel, payload.get("allowed_mentions"), reference)
        edited["edited_timestamp"] = iso_timestamp(int(time.time() * 1000))
        self._messages[int(current["id"])] = edited
        if self.echo_own and not edited["flags"] & FLAG_EPHEMERAL:
            await self._broadcast("MESSAGE_UPDATE", self._gateway_form(channel, edited))
        return edited

    async def _remove_message(self, channel: _Channel, message_id: int) -> None:
        removed = self._messages.pop(message_id)
        channel.message_ids.pop(message_id, None)
        if self.echo_own and not removed["flags"] & FLAG_EPHEMERAL:
            data = {"id": str(message_id), "channel_id": str(channel.id)}
            if channel.guild_id is not None:
                data["guild_id"] = str(channel.guild_id)
            await self._broadcast("MESSAGE_DELETE", data)

    # ------------------------------------------------------------ REST: threads

    def _thread_params(self, payload: Mapping[str, Any]) -> tuple[str, int]:
        name = payload.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_THREAD_NAME:
            raise ApiError.form("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        return name, int(payload.get("auto_archive_duration") or 1440)

    async def _open_thread(
        self, parent: _Channel, thread_id: int, name: str, kind: int, archive: int
    ) -> dict[str, Any]:
        data = self._thread_object(thread_id, parent.id, name, kind, archive)
        self._register_channel(data, GUILD_ID)
        self._thread_ids.append(thread_id)
        self.threads.append(data)
        await self._broadcast("THREAD_CREATE", {**data, "newly_created": True})
        now = iso_timestamp(int(time.time() * 1000))
        return {
            **data,
            "member": {"id": str(thread_id), "user_id": self._bot_id_str, "join_timestamp": now, "flags": 1},
        }

    async def _create_thread(self, req: _Req) -> dict[str, Any]:
        parent = self._channel(req)
        if parent.type not in (GUILD_TEXT, GUILD_ANNOUNCEMENT):
            raise ApiError.of(400, WRONG_CHANNEL_TYPE)
        name, archive = self._thread_params(req.payload)
        kind = int(req.payload.get("type") or PRIVATE_THREAD)
        if kind not in THREAD_TYPES:
            raise ApiError.form("type", "BASE_TYPE_CHOICES", f"Value must be one of {sorted(THREAD_TYPES)}.")
        return await self._open_thread(parent, self.new_snowflake(), name, kind, archive)

    async def _thread_from_message(self, req: _Req) -> dict[str, Any]:
        parent = self._channel(req)
        message_id = req.int("message_id")
        self._message_in(parent, message_id)
        if parent.type not in (GUILD_TEXT, GUILD_ANNOUNCEMENT):
            raise ApiError.of(400, WRONG_CHANNEL_TYPE)
        if message_id in self._threads_from_messages:
            raise ApiError.of(400, THREAD_ALREADY_CREATED)
        name, archive = self._thread_params(req.payload)
        self._threads_from_messages.add(message_id)
        kind = ANNOUNCEMENT_THREAD if parent.type == GUILD_ANNOUNCEMENT else PUBLIC_THREAD
        return await self._open_thread(parent, message_id, name, kind, archive)

    # ------------------------------------------------------------ REST: interactions

    def _live_interaction(self, interaction_id: int, token: str) -> _Interaction:
        interaction = self._interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            raise ApiError.of(404, UNKNOWN_INTERACTION)
        return interaction

    async def _callback(self, req: _Req) -> dict[str, Any] | None:
        interaction = self._live_interaction(req.int("interaction_id"), req.params["token"])
        now = self._clock()
        timeout = self.interaction_ack_timeout_s
        if interaction.response_type is not None:
            raise ApiError.of(400, ALREADY_ACKNOWLEDGED)
        if timeout is not None and now - interaction.created_at > timeout:
            raise ApiError.of(404, UNKNOWN_INTERACTION)
        payload = req.payload
        kind = payload.get("type")
        if kind not in CALLBACK_TYPES:
            raise ApiError.form(
                "type", "BASE_TYPE_CHOICES", f"Value must be one of {sorted(CALLBACK_TYPES)}."
            )
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        channel = self._channels[interaction.channel_id]
        message: dict[str, Any] | None = None
        if kind == CALLBACK_MESSAGE:
            message = await self._interaction_message(interaction, channel, data, req.files, original=True)
        elif kind == CALLBACK_DEFERRED_MESSAGE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = await self._interaction_message(
                interaction, channel, {"content": "", "flags": flags}, [], original=True
            )
        interaction.response_type = kind
        self.interaction_callbacks.append(
            InteractionCallback(interaction.id, interaction.token, kind, data, now)
        )
        if req.query.get("with_response") not in ("1", "true", "True"):
            return None
        result: dict[str, Any] = {"id": str(interaction.id), "type": 2}
        if message is not None:
            result["response_message_id"] = message["id"]
            result["response_message_loading"] = bool(message["flags"] & FLAG_LOADING)
            result["response_message_ephemeral"] = bool(message["flags"] & FLAG_EPHEMERAL)
        resource: dict[str, Any] = {"type": kind}
        if message is not None:
            resource["message"] = message
        return {"interaction": result, "resource": resource}

    async def _interaction_message(
        self,
        interaction: _Interaction,
        channel: _Channel,
        payload: Mapping[str, Any],
        files: list[dict[str, Any]],
        *,
        original: bool,
    ) -> dict[str, Any]:
        metadata = {
            "id": str(interaction.id),
            "type": 2,
            "user": interaction.user,
            "authorizing_integration_owners": {"0": str(interaction.guild_id or 0)},
            "name": interaction.name,
        }
        extra = {"webhook_id": str(APPLICATION_ID), "application_id": str(APPLICATION_ID)}
        extra["interaction_metadata"] = metadata
        message = await self._new_bot_message(
            channel,
            payload,
            files,
            message_type=MESSAGE_CHAT_INPUT_COMMAND if original else MESSAGE_DEFAULT,
            extra=extra,
            allow_empty=original and bool(int(payload.get("flags") or 0) & FLAG_LOADING),
        )
        if original:
            interaction.original_id = int(message["id"])
        interaction.message_ids.append(int(message["id"]))
        return message

    def _webhook_interaction(self, req: _Req) -> _Interaction:
        interaction = self._interaction_by_token(req.params["token"])
        if req.int("application_id") != APPLICATION_ID or interaction is None:
            raise ApiError.of(404, UNKNOWN_WEBHOOK)
        if interaction.response_type is None:
            raise ApiError.of(404, UNKNOWN_WEBHOOK)
        return interaction

    def _webhook_message_id(self, interaction: _Interaction, raw: str) -> int:
        message_id = interaction.original_id if raw == "@original" else int(raw)
        if (
            message_id is None
            or message_id not in interaction.message_ids
            or message_id not in self._messages
        ):
            raise ApiError.of(404, UNKNOWN_MESSAGE)
        return message_id

    async def _followup(self, req: _Req) -> dict[str, Any] | None:
        interaction = self._webhook_interaction(req)
        channel = self._channels[interaction.channel_id]
        message = await self._interaction_message(
            interaction, channel, req.payload, req.files, original=False
        )
        return message if req.query.get("wait") in ("1", "true", "True") else None

    async def _get_webhook_message(self, req: _Req) -> dict[str, Any]:
        interaction = self._webhook_interaction(req)
        return self._messages[self._webhook_message_id(interaction, req.params["message_id"])]

    async def _edit_webhook_message(self, req: _Req) -> dict[str, Any]:
        interaction = self._webhook_interaction(req)
        message_id = self._webhook_message_id(interaction, req.params["message_id"])
        channel = self._channels[interaction.channel_id]
        return await self._apply_edit(channel, self._messages[message_id], req.payload)

    async def _delete_webhook_message(self, req: _Req) -> None:
        interaction = self._webhook_interaction(req)
        message_id = self._webhook_message_id(interaction, req.params["message_id"])
        await self._remove_message(self._channels[interaction.channel_id], message_id)

    # ------------------------------------------------------------ REST: application commands

    def _command_scope(self, req: _Req) -> int | None:
        if req.int("application_id") != APPLICATION_ID:
            raise ApiError.of(404, UNKNOWN_APPLICATION)
        return int(req.params["guild_id"]) if "guild_id" in req.params else None

    async def _get_commands(self, req: _Req) -> list[dict[str, Any]]:
        return list(self._commands.get(self._command_scope(req), ()))

    async def _put_commands(self, req: _Req) -> list[dict[str, Any]]:
        scope = self._command_scope(req)
        if not isinstance(req.body, list):
            raise ApiError.form("_root", "BASE_TYPE_ARRAY", "Must be an array.")
        existing = {(c["name"], c["type"]): c["id"] for c in self._commands.get(scope, ())}
        seen: set[tuple[str, int]] = set()
        stored = []
        for index, command in enumerate(req.body):
            name, kind = str(command.get("name") or ""), int(command.get("type") or 1)
            description = str(command.get("description") or "")
            if not COMMAND_NAME_RE.match(name) or (kind == 1 and name != name.lower()):
                raise ApiError.form(
                    f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
                )
            if kind == 1 and not 1 <= len(description) <= 100:
                raise ApiError.form(
                    f"{index}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                )
            if (name, kind) in seen:
                raise ApiError.form(
                    f"{index}.name",
                    "APPLICATION_COMMANDS_DUPLICATE_NAME",
                    "Application command names must be unique",
                )
            seen.add((name, kind))
            stored.append({
                "id": existing.get((name, kind)) or str(self.new_snowflake()),
                "application_id": str(APPLICATION_ID),
                "version": str(self.new_snowflake()),
                "default_member_permissions": command.get("default_member_permissions"),
                "type": kind,
                "name": name,
                "name_localizations": command.get("name_localizations"),
                "description": description,
                "description_localizations": command.get("description_localizations"),
                **({"guild_id": str(scope)} if scope is not None else {}),
                "options": command.get("options") or [],
                "dm_permission": command.get("dm_permission", True),
                "contexts": command.get("contexts"),
                "integration_types": command.get("integration_types") or [0],
                "nsfw": bool(command.get("nsfw", False)),
            })  # fmt: skip
        self._commands[scope] = stored
        return stored


def _param_regex(match: re.Match[str]) -> str:
    name = match.group(1)
    if name == "token":
        return r"(?P<token>[^/]+)"
    if name == "message_id":
        return r"(?P<message_id>\d+|@original)"
    return rf"(?P<{name}>\d+)"


def iter_sample_frames() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every case frame of ``tests/payloads/discord/`` (context files excluded): ``(name, frame)``."""
    for path in sorted(PAYLOADS_DIR.glob("*.json")):
        if not path.name.startswith("_"):
            yield path.stem, json.loads(path.read_text(encoding="utf-8"))
