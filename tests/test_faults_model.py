"""Model faults end to end: the real openai client, with its retries, against FakeOpenAI, through the
core (a RecordingSink) and the HTTP API; and the circuit breaker, alone on a fake clock and in the core.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import openai._base_client
import pytest

from bot.breaker import CircuitBreaker
from bot.core import BotCore, Reply
from bot.errors import ErrorKind, ModelError
from bot.messages import ChatKind, IncomingMessage
from bot.streaming import TYPING_MARKER
from bot.texts import render
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.openai_server import (
    CutStreamReply,
    EmptyStreamReply,
    ErrorReply,
    FakeOpenAI,
    HangReply,
    MalformedChunkReply,
    ResetReply,
    TextReply,
)
from tests.fakes.openai_server import Reply as FakeReply
from tests.fakes.sink import RecordingSink
from tests.helpers import running_relay
from tests.test_core import query

CHAT_PATH = "/v1/chat/completions"
SHORT_TIMEOUT_S = 0.3
# The openai client's first backoff is 0.5 s less up to 25 % jitter; Retry-After overrides it.
FIRST_BACKOFF_S = (0.375, 0.5)
# Its backoff in the tests that only count retries (the real one is checked once, below).
FAST_BACKOFF_S = 0.02
# Slack for scheduling on a loaded two-core machine.
SLACK_S = 0.6
# The upstream's own words, which must never reach a user.
UPSTREAM_WORDS = (
    "Rate limit reached",
    "server had an error",
    "overloaded",
    "Invalid request",
    "does not exist",
)

_message_ids = itertools.count(1)


def message(text: str, user_id: str = "7") -> IncomingMessage:
    """A message in user `user_id`'s private chat."""
    return IncomingMessage(
        platform="test",
        chat_id=user_id,
        chat_kind=ChatKind.PRIVATE,
        user_id=user_id,
        user_name=f"user{user_id}",
        message_id=f"fault-{next(_message_ids)}",
        text=text,
        addressed=True,
    )


async def ask(core: BotCore, text: str, sink: RecordingSink | None = None) -> tuple[Reply, RecordingSink]:
    """Submit `text` and wait for the reply; return it with what the user saw."""
    sink = sink or RecordingSink()
    future = await core.submit(message(text), sink)
    assert future is not None
    return await future, sink


def chat_requests(fake: FakeOpenAI) -> list[float]:
    """When each chat completion request reached the fake."""
    return [r.at for r in fake.requests if r.path == CHAT_PATH]


def stored(db_path: Path) -> list[tuple[str, str, str]]:
    """Every stored message as (role, content, status), in order."""
    rows = query(db_path, "SELECT role, content, status FROM messages ORDER BY seq")
    return [(str(role), str(content), str(status)) for role, content, status in rows]


def inbox_statuses(db_path: Path) -> list[str]:
    """The status of every inbox entry, in arrival order."""
    return [row[0] for row in query(db_path, "SELECT status FROM inbox ORDER BY id")]


def everything_shown(sink: RecordingSink) -> list[str]:
    """Every text the user was ever shown: sends and edits."""
    return [*sink.sent, *(text for _, text in sink.edits)]


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the openai client's exponential backoff (Retry-After is still honoured as sent)."""
    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", FAST_BACKOFF_S)


# ---------------------------------------------------------------- faults that end in an error reply


@dataclass(frozen=True)
class Fault:
    """One kind of model failure and what the bot must make of it."""

    replies: tuple[FakeReply, ...]
    kind: ErrorKind
    requests: int  # how many reached the fake: 1 + the retries it deserves
    partial: str = ""
    retries: int = 1
    max_elapsed_s: float = 1.0


FAULTS: dict[str, Fault] = {
    # Retried after the server's Retry-After, then given up.
    "429-retry-after": Fault(
        (ErrorReply.for_status(429, retry_after=1),) * 2, ErrorKind.RATE_LIMIT, 2, max_elapsed_s=2.0
    ),
    # Retried after the client's own backoff.
    "429-no-retry-after": Fault((ErrorReply.for_status(429),) * 3, ErrorKind.RATE_LIMIT, 3, retries=2),
    # A wait longer than the client accepts (2 min) is not waited for at all: the user hears at once.
    "429-retry-after-hour": Fault((ErrorReply.for_status(429, retry_after=3600),), ErrorKind.RATE_LIMIT, 1),
    "500": Fault((ErrorReply.for_status(500),) * 2, ErrorKind.SERVER, 2),
    "502": Fault((ErrorReply.for_status(502),) * 2, ErrorKind.SERVER, 2),
    "503": Fault((ErrorReply.for_status(503),) * 3, ErrorKind.SERVER, 3, retries=2),
    "timeout": Fault((HangReply(3.0),) * 2, ErrorKind.TIMEOUT, 2),
    "connection-reset": Fault((ResetReply(),) * 2, ErrorKind.CONNECTION, 2),
    # Once text has streamed, nothing is retried: the partial answer stays visible and stored.
    "stream-cut": Fault((CutStreamReply(("Half an ", "answer")),), ErrorKind.SERVER, 1, "Half an answer"),
    "malformed-chunk": Fault(
        (MalformedChunkReply(("Before the ", "garbage")),), ErrorKind.SERVER, 1, "Before the garbage"
    ),
    # A 200 with no text is the server's answer, not a transport failure: asking again gives the same.
    "empty-stream": Fault((EmptyStreamReply(),), ErrorKind.EMPTY, 1),
    # Refusals are never retried.
    "400": Fault((ErrorReply.for_status(400),), ErrorKind.BAD_REQUEST, 1),
    "404-model": Fault((ErrorReply.for_status(404),), ErrorKind.BAD_MODEL, 1),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_model_fault_reaches_the_user_sanitised_and_is_stored(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, fast_backoff: None, fault: Fault
) -> None:
    h = await make_core(model_max_retries=fault.retries, request_timeout_s=SHORT_TIMEOUT_S)
    fake_openai.enqueue(*fault.replies)

    started = time.monotonic()
    reply, sink = await ask(h.core, "doomed question")
    elapsed = time.monotonic() - started

    # What the user saw: the partial text (if any), then the sanitised explanation.
    error_text = render(f"model_error.{fault.kind.value}")
    assert isinstance(reply.error, ModelError)
    assert reply.error.kind is fault.kind
    assert reply.text == error_text
    assert sink.final_texts == [*([fault.partial] if fault.partial else []), error_text]
    for text in everything_shown(sink):
        assert text == error_text or fault.partial.startswith(text.removesuffix(TYPING_MARKER)), text
        assert not any(words in text for words in UPSTREAM_WORDS), text
    # What was stored: the question as failed, the partial answer as partial; the inbox entry closed.
    assert stored(h.settings.db_path) == [
        ("user", "doomed question", "failed"),
        *([("assistant", fault.partial, "partial")] if fault.partial else []),
    ]
    assert inbox_statuses(h.settings.db_path) == ["failed"]
    # Retried exactly as deserved, within a bounded time.
    assert len(chat_requests(fake_openai)) == fault.requests
    assert fake_openai.pending == 0
    assert elapsed < fault.max_elapsed_s + SLACK_S


async def test_retry_after_is_honoured_and_backoff_used_without_it(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(model_max_retries=1)
    fake_openai.enqueue(ErrorReply.for_status(429, retry_after=1), TextReply(("after the wait",)))
    await ask(h.core, "with Retry-After")
    fake_openai.enqueue(ErrorReply.for_status(429), TextReply(("after the backoff",)))
    await ask(h.core, "without Retry-After")

    first, retried, second, backed_off = chat_requests(fake_openai)
    assert retried - first >= 1.0 - 0.02  # the server said 1 s
    assert FIRST_BACKOFF_S[0] - 0.02 <= backed_off - second < FIRST_BACKOFF_S[1] + SLACK_S


TRANSIENT: dict[str, FakeReply] = {
    "429": ErrorReply.for_status(429),
    "500": ErrorReply.for_status(500),
    "502": ErrorReply.for_status(502),
    "503": ErrorReply.for_status(503),
    "timeout": HangReply(3.0),
    "connection-reset": ResetReply(),
}


@pytest.mark.parametrize("first", TRANSIENT.values(), ids=TRANSIENT.keys())
async def test_a_transient_fault_is_retried_and_the_user_never_notices(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, fast_backoff: None, first: FakeReply
) -> None:
    h = await make_core(model_max_retries=1, request_timeout_s=SHORT_TIMEOUT_S)
    fake_openai.enqueue(first, TextReply(("All ", "good.")))

    reply, sink = await ask(h.core, "question")

    assert reply.error is None
    assert sink.final_texts == ["All good."]
    assert len(chat_requests(fake_openai)) == 2
    assert stored(h.settings.db_path) == [("user", "question", "ok"), ("assistant", "All good.", "ok")]
    assert inbox_statuses(h.settings.db_path) == ["answered"]


async def test_a_failed_turn_is_left_out_of_the_next_context(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    fake_openai.enqueue(CutStreamReply(("secret half",)))
    await ask(h.core, "doomed")

    await ask(h.core, "next")

    messages = fake_openai.last_body["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [("user", "next")]


# ---------------------------------------------------------------- the HTTP API


async def test_http_stateless_request_survives_one_upstream_503(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI, fast_backoff: None
) -> None:
    fake_openai.enqueue(ErrorReply.for_status(503), TextReply(("fine",)))
    settings = make_settings(http_port=0, model_max_retries=1)
    async with (
        running_relay(settings) as relay,
        relay.session.post("/ask_gpt", json={"prompt": "hi"}) as response,
    ):
        assert (response.status, await response.json()) == (200, {"message": "fine"})
    assert len(chat_requests(fake_openai)) == 2


@pytest.mark.parametrize(
    ("replies", "status", "code", "requests", "partial"),
    [
        ((ErrorReply.for_status(502),) * 3, 502, "server", 3, ""),
        ((ResetReply(),) * 3, 503, "connection", 3, ""),
        ((MalformedChunkReply(("half",)),), 502, "server", 1, "half"),
    ],
    ids=["502", "connection-reset", "malformed-chunk"],
)
async def test_http_conversation_fault_is_a_sanitised_gateway_error(
    make_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    fast_backoff: None,
    replies: tuple[FakeReply, ...],
    status: int,
    code: str,
    requests: int,
    partial: str,
) -> None:
    settings = make_settings(http_port=0, model_max_retries=2)
    fake_openai.enqueue(*replies)
    ask = {"prompt": "hi", "user": "alice"}
    async with running_relay(settings) as relay, relay.session.post("/ask_gpt", json=ask) as response:
        body: dict[str, Any] = await response.json()
    assert response.status == status
    assert body["error"]["code"] == code
    assert body["error"]["message"] == render(f"model_error.{code}")
    assert len(chat_requests(fake_openai)) == requests
    assert stored(settings.db_path) == [
        ("user", "hi", "failed"),
        *([("assistant", partial, "partial")] if partial else []),
    ]
    assert inbox_statuses(settings.db_path) == ["failed"]


async def test_http_stream_before_first_token_retries_then_503(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI, fast_backoff: None
) -> None:
    fake_openai.enqueue(ResetReply(), ResetReply())
    async with running_relay(make_settings(http_port=0, model_max_retries=1)) as relay:
        client = relay.openai_client()
        try:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
                )
        finally:
            await client.close()
    assert caught.value.status_code == 503
    assert caught.value.code == "connection"
    assert caught.value.message.endswith(render("model_error.connection"))
    assert len(chat_requests(fake_openai)) == 2


# ---------------------------------------------------------------- the circuit breaker, on a fake clock


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


def failure(kind: ErrorKind) -> ModelError:
    """A model error of one kind."""
    return ModelError(kind, "scripted")


def refused_now(breaker: CircuitBreaker) -> bool:
    """Whether the breaker refuses a call right now (a call it admits is reported as abandoned)."""
    try:
        breaker.before_call()
    except ModelError as exc:
        refusal = exc
    else:
        breaker.abandoned()
        return False
    assert refusal.kind is ErrorKind.UNAVAILABLE
    assert refusal.user_text == render("model_error.unavailable")
    return True


@pytest.mark.parametrize(
    "kind", [ErrorKind.SERVER, ErrorKind.CONNECTION, ErrorKind.TIMEOUT, ErrorKind.RATE_LIMIT]
)
def test_breaker_opens_after_n_consecutive_backend_failures(kind: ErrorKind) -> None:
    breaker = CircuitBreaker(3, 30.0, FakeClock())
    for _ in range(2):
        assert not refused_now(breaker)
        breaker.failed(failure(kind))
    assert not breaker.is_open
    assert not refused_now(breaker)

    breaker.failed(failure(kind))

    assert breaker.is_open
    assert refused_now(breaker)


def test_breaker_counts_only_consecutive_failures() -> None:
    breaker = CircuitBreaker(3, 30.0, FakeClock())
    for _ in range(5):
        breaker.failed(failure(ErrorKind.SERVER))
        breaker.failed(failure(ErrorKind.SERVER))
        breaker.succeeded()
    assert not breaker.is_open
    assert not refused_now(breaker)


@pytest.mark.parametrize(
    "kind", [ErrorKind.BAD_REQUEST, ErrorKind.BAD_MODEL, ErrorKind.CONTEXT_TOO_LONG, ErrorKind.EMPTY]
)
def test_breaker_ignores_refused_requests(kind: ErrorKind) -> None:
    breaker = CircuitBreaker(2, 30.0, FakeClock())
    for _ in range(10):
        breaker.failed(failure(kind))
    assert not breaker.is_open
    assert not refused_now(breaker)


def test_breaker_lets_one_trial_through_after_the_cooldown_and_success_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 30.0, clock)
    breaker.failed(failure(ErrorKind.CONNECTION))

    clock.now += 29.9
    assert refused_now(breaker)
    clock.now += 0.1
    breaker.before_call()  # the trial
    assert refused_now(breaker)  # only one at a time
    breaker.succeeded()

    assert not breaker.is_open
    assert not refused_now(breaker)
    assert not refused_now(breaker)


def test_breaker_reopens_for_a_full_cooldown_when_the_trial_fails() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 30.0, clock)
    breaker.failed(failure(ErrorKind.SERVER))
    breaker.failed(failure(ErrorKind.SERVER))
    clock.now += 30.0
    breaker.before_call()

    breaker.failed(failure(ErrorKind.TIMEOUT))  # one more failure is enough once open

    assert breaker.is_open
    clock.now += 29.9
    assert refused_now(breaker)
    clock.now += 0.1
    breaker.before_call()
    breaker.succeeded()
    assert not breaker.is_open


def test_an_abandoned_trial_lets_the_next_call_be_the_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.failed(failure(ErrorKind.SERVER))
    clock.now += 5.0
    breaker.before_call()
    breaker.abandoned()  # the reader went away: no verdict

    breaker.before_call()  # admitted as the new trial
    assert refused_now(breaker)
    breaker.succeeded()
    assert not breaker.is_open


# ---------------------------------------------------------------- the circuit breaker in the core


COOLDOWN_S = 0.4


async def test_breaker_in_the_core_spares_a_dead_backend_then_recovers(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(breaker_failures=2, breaker_cooldown_s=COOLDOWN_S)
    fake_openai.enqueue(ErrorReply.for_status(503), ErrorReply.for_status(503))
    for _ in range(2):
        failed, _ = await ask(h.core, "is it up?")
        assert failed.text == render("model_error.server")

    # Open: the next messages are answered at once, without a request reaching the backend.
    for _ in range(3):
        refused, sink = await ask(h.core, "still down?")
        assert sink.final_texts == [render("model_error.unavailable")]
        assert isinstance(refused.error, ModelError)
        assert refused.error.kind is ErrorKind.UNAVAILABLE
    assert len(chat_requests(fake_openai)) == 2

    # After the cooldown one trial goes through; it fails, so the circuit opens again.
    await asyncio.sleep(COOLDOWN_S)
    fake_openai.enqueue(ErrorReply.for_status(502))
    trial, _ = await ask(h.core, "trial one")
    assert trial.text == render("model_error.server")
    reopened, _ = await ask(h.core, "right after")
    assert reopened.text == render("model_error.unavailable")
    assert len(chat_requests(fake_openai)) == 3

    # The next trial succeeds and closes it: every message reaches the backend again.
    await asyncio.sleep(COOLDOWN_S)
    answers = [(await ask(h.core, f"back {i}?"))[0].text for i in range(3)]
    assert answers == ["echo: back 0?", "echo: back 1?", "echo: back 2?"]
    assert len(chat_requests(fake_openai)) == 6
    assert inbox_statuses(h.settings.db_path) == ["failed"] * 7 + ["answered"] * 3
    assert [status for role, _, status in stored(h.settings.db_path) if role == "user"] == (
        ["failed"] * 7 + ["ok"] * 3
    )


async def test_refused_requests_never_trip_the_breaker(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(breaker_failures=2, model_max_retries=2)
    fake_openai.enqueue(
        ErrorReply.for_status(400),
        ErrorReply.for_status(404),
        ErrorReply.context_length_exceeded(),
        ErrorReply.for_status(400),
    )
    texts = [(await ask(h.core, f"refused {i}"))[0].text for i in range(4)]

    answered, _ = await ask(h.core, "and now?")

    assert texts == [
        render("model_error.bad_request"),
        render("model_error.bad_model"),
        render("model_error.context_too_long"),
        render("model_error.bad_request"),
    ]
    assert answered.text == "echo: and now?"
    assert len(chat_requests(fake_openai)) == 5  # each reached the backend once: no retry, no breaker


async def test_open_breaker_refuses_http_requests_without_calling_upstream(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.enqueue(ResetReply())
    settings = make_settings(http_port=0, breaker_failures=1, breaker_cooldown_s=60.0)
    async with running_relay(settings) as relay:
        async with relay.session.post("/ask_gpt", json={"prompt": "hi"}) as response:
            assert response.status == 503
        client = relay.openai_client()
        try:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
                )
        finally:
            await client.close()
        async with relay.session.post("/ask_gpt", json={"prompt": "hi", "user": "bob"}) as response:
            body = await response.json()
    assert caught.value.status_code == 503
    assert caught.value.code == "unavailable"
    assert caught.value.message.endswith(render("model_error.unavailable"))
    assert (response.status, body["error"]["code"]) == (503, "unavailable")
    assert len(chat_requests(fake_openai)) == 1
