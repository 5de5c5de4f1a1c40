"""Security: secrets stay out of logs, replies and the database; keys and secrets are checked; one user
never reaches another's conversation; admin rights come from platform ids; sizes are limited.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import itertools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters import discord_pacing, telegram_pacing, telegram_sink
from adapters.discord_sink import ChannelSink, InteractionSink
from adapters.telegram import SECRET_HEADER, WEBHOOK_PATH, TokenFilter
from bot.config import Settings
from bot.conversation import conversation_key, user_key
from bot.core import BotCore, Reply
from bot.logsetup import NOISY_LOGGERS, REDACTED, setup_logging
from bot.messages import ChatKind, IncomingMessage
from bot.texts import render
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.discord_server import ALICE_DM_ID, ALICE_ID, GENERAL_ID, FakeDiscord
from tests.fakes.openai_server import ErrorReply, FakeOpenAI, ResetReply
from tests.fakes.sink import RecordingSink
from tests.fakes.telegram_server import FakeTelegram
from tests.helpers import HOST, Relay, free_port, running_relay
from tests.test_core import query
from tests.test_discord import answered, discord_settings
from tests.test_discord import running_bot as running_discord
from tests.test_telegram import MENTION, nothing_pending, settled, telegram_settings, until
from tests.test_telegram import running_bot as running_telegram

# Long enough for the redacting formatter (it skips values under 8 characters).
OPENAI_KEY = "sk-proj-SecurityTestKey-0123456789abcdefABCDEF"
RELAY_KEY = "relay-bearer-key-0123456789abcdef"
ALICE = 5100000001
GROUP = -1002100000001
CHAT_PATH = "/v1/chat/completions"
FAST_INTERVAL_S = 0.05

_message_ids = itertools.count(1)


# ---------------------------------------------------------------- helpers


def message(
    text: str,
    *,
    user_id: str = "7",
    chat_id: str | None = None,
    kind: ChatKind = ChatKind.PRIVATE,
    platform: str = "telegram",
    **extra: Any,
) -> IncomingMessage:
    """A neutral message, addressed to the bot; by default in user 7's private Telegram chat."""
    return IncomingMessage(
        platform=platform,
        chat_id=user_id if chat_id is None else chat_id,
        chat_kind=kind,
        user_id=user_id,
        user_name=extra.pop("user_name", f"user{user_id}"),
        message_id=f"sec-{next(_message_ids)}",
        text=text,
        addressed=True,
        **extra,
    )


async def say(core: BotCore, text: str, **fields: Any) -> Reply:
    """Submit a message that must be accepted; return its reply."""
    future = await core.submit(message(text, **fields), RecordingSink())
    assert future is not None
    return await future


def upstream_texts(fake: FakeOpenAI) -> list[str]:
    """Every message content of the last chat request, joined per request."""
    return [json.dumps(r.body) for r in fake.requests if r.path == CHAT_PATH]


def last_context(fake: FakeOpenAI) -> list[tuple[str, str]]:
    """The (role, content) pairs of the last chat request, after the system prompt."""
    return [(m["role"], m["content"]) for m in fake.last_body["messages"][1:]]


def database_dump(settings: Settings) -> str:
    """Every table of the SQLite file as SQL text (schema and rows)."""
    with closing(sqlite3.connect(settings.db_path)) as db:
        return "\n".join(db.iterdump())


def data_bytes(settings: Settings) -> bytes:
    """The raw bytes of every file in the data directory (the database, its WAL and SHM)."""
    return b"".join(p.read_bytes() for p in sorted(settings.data_dir.rglob("*")) if p.is_file())


def secret_forms(secret: str) -> list[str]:
    """A secret, and the part of it that must stay secret on its own (a bot token's after the ':')."""
    forms = [secret]
    if ":" in secret:
        forms.append(secret.split(":", 1)[1])
    return forms


def assert_nowhere(secrets: list[str], *, logs: str, dump: str, raw: bytes, replies: list[str]) -> None:
    """None of `secrets` (nor their secret parts) in the log output, the database, or what users saw."""
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in logs, f"{form[:6]}... in the log output"
            assert form not in dump, f"{form[:6]}... in the database"
            assert form.encode() not in raw, f"{form[:6]}... in the data files"
            assert not [r for r in replies if form in r], f"{form[:6]}... in a reply"


def record_text(record: logging.LogRecord) -> str:
    """A record's message and traceback, as any handler would render them."""
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    return text


@pytest.fixture
def log_output(caplog: pytest.LogCaptureFixture) -> Callable[[Settings], io.StringIO]:
    """Install the entry point's logging for `settings` at DEBUG, every library included; return its output.

    caplog keeps every record as well.
    """

    def install(settings: Settings) -> io.StringIO:
        assert settings.log_level == "DEBUG"
        setup_logging(settings)  # the root handler with the redacting formatter (restored by conftest)
        root = logging.getLogger()
        [handler] = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        output = io.StringIO()
        handler.setStream(output)
        root.addHandler(caplog.handler)
        caplog.set_level(logging.DEBUG)
        for name in (*NOISY_LOGGERS, "telegram.Bot", "telegram.ext", "discord.http", "discord.gateway"):
            caplog.set_level(logging.DEBUG, logger=name)
        return output

    return install


def model_failures() -> list[ErrorReply | ResetReply]:
    """A 401 whose message repeats the key in full (the worst an upstream can do), a 500, a reset."""
    echoed = ErrorReply(401, f"Incorrect API key provided: {OPENAI_KEY}.", "invalid_request_error")
    return [echoed, ErrorReply.for_status(500), ResetReply()]


def assert_key_only_in_upstream_echoes(caplog: pytest.LogCaptureFixture) -> None:
    """Our code never logs the configured key itself: only records quoting the upstream's 401 hold it."""
    holding = [record_text(r) for r in caplog.records if OPENAI_KEY in record_text(r)]
    assert holding, "the upstream's 401 detail should reach the records (and be redacted on output)"
    assert all("Incorrect API key provided" in text for text in holding), holding


# ---------------------------------------------------------------- secrets: Telegram, Discord, HTTP


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeTelegram]:
    """A fake Bot API without flood rules; the bot's pacing shortened."""
    monkeypatch.setenv("PTB_TIMEDELTA", "1")
    for module in (telegram_pacing, telegram_sink):
        monkeypatch.setattr(module, "PRIVATE_INTERVAL_S", FAST_INTERVAL_S)
        monkeypatch.setattr(module, "GROUP_INTERVAL_S", FAST_INTERVAL_S)
    async with FakeTelegram(flood=None) as server:
        yield server


@pytest.fixture
async def dc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fake Discord without rate limits; the bot's pacing shortened."""
    monkeypatch.setattr(discord_pacing, "WINDOW_S", 0.2)
    monkeypatch.setattr(ChannelSink, "edit_interval_s", FAST_INTERVAL_S)
    monkeypatch.setattr(InteractionSink, "edit_interval_s", FAST_INTERVAL_S)
    async with FakeDiscord(rate_limits=None) as server:
        yield server


async def test_telegram_token_and_model_key_stay_out_of_logs_replies_and_database(
    tg: FakeTelegram,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    log_output: Callable[[Settings], io.StringIO],
) -> None:
    # "three" and "four" arrive together and must fail separately: no burst merging here.
    settings = telegram_settings(
        make_settings, tg, openai_api_key=OPENAI_KEY, log_level="DEBUG", burst_window_s=0
    )
    output = log_output(settings)
    fake_openai.enqueue(*model_failures())
    tg.fail_next("sendMessage", status=429, retry_after=1)  # a flood error's log lines too
    async with running_telegram(settings):
        tg.push_update(tg.private_text(ALICE, "one"))
        await until(lambda: len(tg.texts(ALICE)) == 1, "the first answer")
        tg.push_update(tg.group_text(GROUP, ALICE, f"{MENTION} two"))
        await until(lambda: len(settled(tg, GROUP)) == 1, "the group answer")
        for text in ("three", "four"):
            tg.push_update(tg.private_text(ALICE, text))
        await until(lambda: len(settled(tg, ALICE)) == 3, "the last answers")

    assert tg.texts(ALICE) == [render("model_error.auth"), render("model_error.connection"), "echo: four"]
    assert tg.texts(GROUP) == [render("model_error.server")]
    assert all(r.api_key == OPENAI_KEY for r in fake_openai.requests)  # the key was really in use
    logs = output.getvalue()
    assert "getUpdates" in logs  # the libraries' DEBUG lines were captured
    assert REDACTED in logs  # the upstream's echo of the key, masked
    sent = [json.dumps(c.params, ensure_ascii=False) for c in tg.calls]
    dump = database_dump(settings)
    assert "echo: four" in dump
    assert_nowhere(
        [tg.token, OPENAI_KEY],
        logs=logs,
        dump=dump,
        raw=data_bytes(settings),
        replies=[*tg.texts(ALICE), *sent],
    )
    # The records themselves, before any formatter: no token (TokenFilter), the key only in echoes.
    # (aiohttp.access is FakeTelegram's own server logging the URLs it serves: Telegram's side.)
    bots_records = [r for r in caplog.records if r.name != "aiohttp.access"]
    assert not [r.name for r in bots_records for form in secret_forms(tg.token) if form in record_text(r)]
    assert_key_only_in_upstream_echoes(caplog)


async def test_discord_token_and_model_key_stay_out_of_logs_replies_and_database(
    dc: FakeDiscord,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    log_output: Callable[[Settings], io.StringIO],
) -> None:
    # "three" and "four" arrive together and must fail separately: no burst merging here.
    settings = discord_settings(
        make_settings, dc, openai_api_key=OPENAI_KEY, log_level="DEBUG", burst_window_s=0
    )
    output = log_output(settings)
    fake_openai.enqueue(*model_failures())
    async with running_discord(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "one"))
        await answered(dc, GENERAL_ID, [render("model_error.auth")])
        await dc.dispatch("MESSAGE_CREATE", dc.dm_message(ALICE_ID, "two"))
        await answered(dc, ALICE_DM_ID, [render("model_error.server")])
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "three"))
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "four"))
        await answered(
            dc, GENERAL_ID, [render("model_error.auth"), render("model_error.connection"), "echo: four"]
        )

    logs = output.getvalue()
    assert "IDENTIFY" in logs  # discord.py's DEBUG lines were captured
    sent = [json.dumps(c.json) for c in dc.calls if c.json is not None]
    dump = database_dump(settings)
    assert "echo: four" in dump
    assert_nowhere(
        [dc.token, OPENAI_KEY],
        logs=logs,
        dump=dump,
        raw=data_bytes(settings),
        replies=[*dc.texts(GENERAL_ID), *dc.texts(ALICE_DM_ID), *sent],
    )
    assert not [r.name for r in caplog.records if dc.token in record_text(r)]
    assert_key_only_in_upstream_echoes(caplog)


async def test_http_keys_stay_out_of_logs_responses_and_database(
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    log_output: Callable[[Settings], io.StringIO],
) -> None:
    settings = make_settings(http_port=0, openai_api_key=OPENAI_KEY, api_key=RELAY_KEY, log_level="DEBUG")
    output = log_output(settings)
    fake_openai.enqueue(*model_failures())
    bearer = {"Authorization": f"Bearer {RELAY_KEY}"}
    responses: list[str] = []
    async with running_relay(settings) as relay:
        for body in (
            {"prompt": "one", "user": "alice"},
            {"prompt": "two"},
            {"prompt": "three", "user": "bob"},
        ):
            async with relay.session.post("/ask_gpt", json=body, headers=bearer) as response:
                responses.append(f"{response.status} {dict(response.headers)} {await response.text()}")
        # A caller who sends the upstream key as the bearer: refused, and it is not echoed either.
        wrong = {"Authorization": f"Bearer {OPENAI_KEY}"}
        async with relay.session.post("/ask_gpt", json={"prompt": "four"}, headers=wrong) as response:
            responses.append(f"{response.status} {await response.text()}")
        async with relay.session.post(
            "/ask_gpt", json={"prompt": "five", "user": "alice"}, headers=bearer
        ) as response:
            responses.append(await response.text())

    assert [r[:3] for r in responses[:4]] == ["502", "502", "503", "401"]
    assert responses[4] == json.dumps({"message": "echo: five"})
    assert "HTTP Request: POST" in output.getvalue()  # the model client's DEBUG lines were captured
    dump = database_dump(settings)
    assert "echo: five" in dump
    assert_nowhere(
        [OPENAI_KEY, RELAY_KEY],
        logs=output.getvalue(),
        dump=dump,
        raw=data_bytes(settings),
        replies=responses,
    )
    assert not [r.name for r in caplog.records if RELAY_KEY in record_text(r)]
    assert_key_only_in_upstream_echoes(caplog)


# ---------------------------------------------------------------- Telegram URLs embed the token


def test_token_filter_masks_bot_api_and_file_urls_in_records(caplog: pytest.LogCaptureFixture) -> None:
    token = "7000000001:AAFakeTokenForFilterTests000000000000"
    api_url = f"https://api.telegram.org/bot{token}/getUpdates"
    file_url = f"https://api.telegram.org/file/bot{token}/photos/file_7.jpg"
    token_filter = TokenFilter(token)
    logger = logging.getLogger("httpx")
    logger.addFilter(token_filter)
    caplog.set_level(logging.DEBUG, logger="httpx")
    try:
        logger.info('HTTP Request: GET %s "HTTP/1.1 200 OK"', file_url)
        logger.debug("request to " + api_url)
        logger.warning("%s then %s", api_url, file_url)
    finally:
        logger.removeFilter(token_filter)
    logger.info("after stop: %s", "nothing secret")

    messages = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    masked_file_url = f"https://api.telegram.org/file/bot{REDACTED}/photos/file_7.jpg"
    assert messages[0] == f'HTTP Request: GET {masked_file_url} "HTTP/1.1 200 OK"'
    assert messages[1] == f"request to https://api.telegram.org/bot{REDACTED}/getUpdates"
    assert messages[2].count(REDACTED) == 2
    assert not [m for m in messages for form in secret_forms(token) if form in m]


def test_redacting_formatter_masks_the_token_in_any_logger_and_traceback(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "7000000001:AAFakeTokenForFormatterTests0000000000"
    settings = make_settings(telegram_bot_token=token, openai_api_key=OPENAI_KEY, log_level="DEBUG")
    setup_logging(settings)
    logger = logging.getLogger("bot.some_module")  # no TokenFilter here: the formatter must catch it
    file_url = f"https://api.telegram.org/file/bot{token}/documents/file_3.pdf"
    logger.info("downloading %s", file_url)
    try:
        raise ConnectionError(f"GET {file_url} failed with key {OPENAI_KEY}")
    except ConnectionError:
        logger.exception("download failed")

    err = capsys.readouterr().err
    assert f"/file/bot{REDACTED}/documents/file_3.pdf" in err
    assert "Traceback" in err
    assert err.count(REDACTED) == 3  # the line, and the exception's message in the traceback
    for form in [*secret_forms(token), OPENAI_KEY]:
        assert form not in err


# ---------------------------------------------------------------- the HTTP API's bearer key


@pytest.fixture
def digest_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every hmac.compare_digest call (arguments as bytes), still compared for real."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.fixture
async def keyed_relay(make_settings: SettingsFactory) -> AsyncIterator[Relay]:
    """A relay that demands RELAY_KEY."""
    async with running_relay(make_settings(http_port=0, api_key=RELAY_KEY)) as relay:
        yield relay


async def post_status(relay: Relay, headers: dict[str, str]) -> int:
    """POST /ask_gpt with `headers`; the status."""
    async with relay.session.post("/ask_gpt", json={"prompt": "hi"}, headers=headers) as response:
        return response.status


async def test_bearer_key_is_compared_in_constant_time_and_exactly(
    keyed_relay: Relay, fake_openai: FakeOpenAI, digest_calls: list[tuple[bytes, bytes]]
) -> None:
    key = RELAY_KEY.encode()
    cases = {
        "wrong": ("Bearer not-the-key", 401),
        "prefix": (f"Bearer {RELAY_KEY[:-1]}", 401),
        "longer": (f"Bearer {RELAY_KEY}x", 401),
        "other-case": (f"Bearer {RELAY_KEY.upper()}", 401),
        "right": (f"Bearer {RELAY_KEY}", 200),
    }
    for name, (header, expected) in cases.items():
        before = len(digest_calls)
        assert await post_status(keyed_relay, {"Authorization": header}) == expected, name
        assert digest_calls[before:] == [(header.removeprefix("Bearer ").encode(), key)], name
    assert len([r for r in fake_openai.requests if r.path == CHAT_PATH]) == 1


async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one HTTP/1.1 request as raw bytes (headers a client library would refuse); status and body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        response = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_a_bearer_key_that_is_not_utf8_is_a_401_not_a_crash(
    keyed_relay: Relay, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'{"prompt": "hi"}'
    head = (
        b"POST /ask_gpt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer cl\xe9\xff\r\n"
    )

    status, answer = await raw_request(keyed_relay.port, head, body)

    assert status == 401
    assert "Bearer" in json.loads(answer)["error"]["message"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert fake_openai.requests == []


@pytest.mark.parametrize(
    ("host", "exposed"),
    [
        ("0.0.0.0", True),
        ("::", True),
        ("", True),  # asyncio binds every interface for an empty host
        ("192.168.1.20", True),
        ("bot.example.com", True),  # a name may resolve anywhere
        ("127.0.0.1", False),
        ("127.0.0.53", False),
        ("::1", False),
        ("localhost", False),
    ],
)
def test_a_reachable_http_host_needs_an_api_key(tmp_path: Path, host: str, exposed: bool) -> None:
    base: dict[str, Any] = {
        "openai_base_url": "http://127.0.0.1:9/v1",
        "data_dir": tmp_path,
        "_env_file": None,
    }
    bare = Settings(**base, http_host=host)
    keyed = Settings(**base, http_host=host, api_key=RELAY_KEY)
    disabled = Settings(**base, http_host=host, http_enabled=False, telegram_bot_token="123:" + "a" * 35)

    assert any("GPTRELAY_API_KEY" in p for p in bare.problems()) is exposed
    assert keyed.problems() == []
    assert disabled.problems() == []


# ---------------------------------------------------------------- the Telegram webhook secret


async def test_webhook_refuses_a_missing_or_wrong_secret_and_records_nothing(
    tg: FakeTelegram,
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    digest_calls: list[tuple[bytes, bytes]],
) -> None:
    port = free_port()
    secret = "webhook-secret_0123456789"
    settings = telegram_settings(
        make_settings,
        tg,
        telegram_mode="webhook",
        telegram_webhook_url="https://example.invalid/telegram",
        telegram_webhook_secret=secret,
        telegram_webhook_listen=HOST,
        telegram_webhook_port=port,
    )
    update = tg.private_text(ALICE, "let me in")
    update["update_id"] = 77
    body = json.dumps(update).encode()
    head = f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    async with running_telegram(settings) as bot:
        sent_secrets = {
            "missing": None,
            "wrong": b"wrong",
            "other-case": secret.upper().encode(),
            "prefix": secret[:-1].encode(),
            "not-utf8": b"s\xe9cret\xff",
        }
        statuses = {}
        for name, sent in sent_secrets.items():
            header = b"" if sent is None else SECRET_HEADER.encode() + b": " + sent + b"\r\n"
            statuses[name], _ = await raw_request(port, head + header, body)
        recorded = query(settings.db_path, "SELECT COUNT(*) FROM inbox")[0][0]
        compared = list(digest_calls)
        url = f"http://{HOST}:{port}{WEBHOOK_PATH}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers={SECRET_HEADER: secret}) as response,
        ):
            accepted = response.status
        await until(lambda: tg.texts(ALICE) == ["echo: let me in"], "the answer to the real update")
        await until(lambda: nothing_pending(bot), "the update answered and closed")

    assert statuses == dict.fromkeys(statuses, 401)
    assert recorded == 0
    assert accepted == 200
    assert len(compared) == len(statuses)  # every refused request went through compare_digest
    assert all(b == secret.encode() for _, b in compared)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert len([r for r in fake_openai.requests if r.path == CHAT_PATH]) == 1


# ---------------------------------------------------------------- one user's conversation is theirs


ADVERSARIAL_IDS = ("1", "2", "1:user:2", "1%3Auser%3A2", "1:thread:2", "%", "%25", ":", "%3A", "")


def test_conversation_keys_cannot_be_forged_with_separators() -> None:
    keys: dict[str, tuple[object, ...]] = {}
    for chat, thread, user in itertools.product(ADVERSARIAL_IDS, (None, *ADVERSARIAL_IDS), ADVERSARIAL_IDS):
        for kind in ChatKind:
            incoming = message("x", chat_id=chat, user_id=user, kind=kind, thread_id=thread)
            # Who the key must stand for: private chats have one context, groups one per user.
            identity = (kind is ChatKind.GROUP, chat, thread, user if kind is ChatKind.GROUP else None)
            key = conversation_key(incoming, "per_user")
            assert keys.setdefault(key, identity) == identity, f"{key!r} stands for two conversations"
    users = {
        user_key(message("x", user_id=u, platform=p)) for u in ADVERSARIAL_IDS for p in ("http", "telegram")
    }
    assert len(users) == 2 * len(ADVERSARIAL_IDS)


async def test_group_members_and_topics_cannot_read_or_reset_each_other(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    alice = {"user_id": "1", "chat_id": "-500", "kind": ChatKind.GROUP}
    bob = {"user_id": "2", "chat_id": "-500", "kind": ChatKind.GROUP}

    await say(h.core, "alice's group secret", **alice)
    await say(h.core, "what do you know?", **bob)
    assert last_context(fake_openai) == [("user", "what do you know?")]
    await say(h.core, "/reset", **bob)
    await say(h.core, "remind me", **alice)
    assert ("user", "alice's group secret") in last_context(fake_openai)

    await say(h.core, "topic 42 secret", **alice, thread_id="42")
    await say(h.core, "and here?", **alice, thread_id="43")
    assert last_context(fake_openai) == [("user", "and here?")]
    await say(h.core, "what was said in this topic?", **bob, thread_id="42")
    assert last_context(fake_openai) == [("user", "what was said in this topic?")]
    await say(h.core, "/reset", **alice, thread_id="43")
    await say(h.core, "/reset", **bob, thread_id="42")
    await say(h.core, "remind me", **alice, thread_id="42")
    assert ("user", "topic 42 secret") in last_context(fake_openai)
    await say(h.core, "and the group?", **alice)
    assert ("user", "alice's group secret") in last_context(fake_openai)


VICTIM = "alice:thread:1"
ATTACKERS = ("alice%3Athread%3A1", "alice%253Athread%253A1", "alice", "alice:thread", "alice%3Athread:1")


async def test_http_user_ids_with_separators_reach_only_their_own_conversation(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    async with running_relay(make_settings(http_port=0)) as relay:

        async def ask(user: str, prompt: str) -> int:
            async with relay.session.post("/ask_gpt", json={"prompt": prompt, "user": user}) as response:
                return response.status

        assert await ask(VICTIM, "the victim's secret") == 200
        for attacker in ATTACKERS:
            assert await ask(attacker, "what did the last user say?") == 200
            assert "the victim's secret" not in upstream_texts(fake_openai)[-1], attacker
            assert await ask(attacker, "/reset") == 200
        assert await ask(VICTIM, "remind me") == 200

    assert last_context(fake_openai) == [
        ("user", "the victim's secret"),
        ("assistant", "echo: the victim's secret"),
        ("user", "remind me"),
    ]
    keys = [row[0] for row in query(relay.runtime.settings.db_path, "SELECT key FROM conversations")]
    assert len(keys) == len(set(keys)) == 1 + len(ATTACKERS)


# ---------------------------------------------------------------- admin rights come from platform ids


ADMIN_COMMANDS = ("/ban 7", "/unban 7", "/budget 7 100", "/budget 7 default month", "/stats")


@pytest.mark.parametrize("command", ADMIN_COMMANDS)
async def test_a_message_claiming_to_be_an_admin_gets_no_admin_rights(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, command: str
) -> None:
    h = await make_core(telegram_admin_ids=[42], discord_admin_ids=[42])
    name = command.split()[0].removeprefix("/")
    claims = [
        {"user_id": "8", "user_name": "42"},  # named like the admin
        {"user_id": "8", "reply_to_text": "admin 42 says: grant user 8 admin"},  # quoting the admin
        {"user_id": "telegram:42", "platform": "http"},  # an HTTP user id shaped like the admin's key
        {"user_id": "42", "platform": "http"},  # the admin's number on a platform without admins
        {"user_id": "8", "platform": "discord", "role_ids": ("42",)},  # a role whose id is the admin's
    ]

    replies = [await say(h.core, f"{command} (I am admin 42, trust me)", **claim) for claim in claims]

    assert [reply.text for reply in replies] == [render("admins_only", name=name)] * len(claims)
    assert query(h.settings.db_path, "SELECT * FROM user_policies") == []
    assert (await say(h.core, "still answered?", user_id="7")).text == "echo: still answered?"
    done = await say(h.core, command, user_id="42")  # the real admin, by platform id
    assert done.text != render("admins_only", name=name)


async def test_http_caller_cannot_use_admin_commands_by_user_field(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(http_port=0, telegram_admin_ids=[42])
    async with running_relay(settings) as relay:
        answers = []
        for user in ("42", "telegram:42", "console"):
            async with relay.session.post("/ask_gpt", json={"prompt": "/ban 7", "user": user}) as response:
                answers.append((response.status, (await response.json())["error"]["message"]))
    assert answers == [(400, render("admins_only", name="ban"))] * 3
    assert query(settings.db_path, "SELECT * FROM user_policies") == []


# ---------------------------------------------------------------- sizes


SMALL_BODY_LIMIT = 2048


@pytest.mark.parametrize("path", ["/ask_gpt", CHAT_PATH])
async def test_a_body_over_the_configured_limit_is_413(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI, path: str
) -> None:
    settings = make_settings(http_port=0, http_max_body_bytes=SMALL_BODY_LIMIT)

    def body(text: str) -> dict[str, Any]:
        if path == CHAT_PATH:
            return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
        return {"prompt": text}

    bodies = [body("x" * (SMALL_BODY_LIMIT // 2)), body("x" * SMALL_BODY_LIMIT)]
    async with running_relay(settings) as relay:
        statuses = []
        for body in bodies:
            async with relay.session.post(path, json=body) as response:
                statuses.append((response.status, (await response.json()).get("error", {}).get("message")))
    assert statuses[0] == (200, None)
    assert statuses[1] == (413, "request body is too large")
    assert len([r for r in fake_openai.requests if r.path == CHAT_PATH]) == 1


async def test_a_prompt_too_long_for_the_model_is_a_clear_400_and_never_sent(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(http_port=0, context_windows={"gpt-4o-mini": 1024}, max_tokens=256)
    prompt = "words " * 2000
    ask = {"prompt": prompt, "user": "alice"}
    async with running_relay(settings) as relay, relay.session.post("/ask_gpt", json=ask) as response:
        status, body = response.status, await response.json()
    assert status == 400
    assert body["error"]["message"].startswith("That message is too long for this model")
    assert "Please shorten it." in body["error"]["message"]
    assert fake_openai.requests == []
    assert query(settings.db_path, "SELECT status FROM inbox") == [("refused",)]
    assert query(settings.db_path, "SELECT COUNT(*) FROM messages") == [(0,)]


async def test_a_prompt_the_upstream_finds_too_long_is_a_clear_400(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(ErrorReply.context_length_exceeded())
    ask = {"prompt": "long " * 100}
    async with (
        running_relay(make_settings(http_port=0)) as relay,
        relay.session.post("/ask_gpt", json=ask) as response,
    ):
        status, body = response.status, await response.json()
    assert status == 400
    assert body["error"]["message"] == render("model_error.context_too_long")
    assert "128000" not in json.dumps(body)  # the upstream's wording stays in the log


async def test_a_too_long_platform_message_gets_the_explanation(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(context_windows={"gpt-4o-mini": 1024}, max_tokens=256)
    sink = RecordingSink()
    future = await h.core.submit(message("words " * 2000), sink)
    assert future is not None
    reply = await future
    assert sink.final_texts == [reply.text]
    assert reply.text.startswith("That message is too long for this model")
    assert fake_openai.requests == []
