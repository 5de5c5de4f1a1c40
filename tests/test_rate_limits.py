"""Rate limits: one short notice when over, then silence, and recovery once the window clears."""

from __future__ import annotations

import pytest

import bot.core
from bot.errors import LimitExceeded
from bot.limits import WINDOW_S, RateLimits, SlidingWindow, Verdict
from bot.messages import ChatKind
from bot.texts import render
from tests.chat_helpers import answer_bodies, incoming, say
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.sink import RecordingSink
from tests.helpers import Relay, running_relay

CHAT_PATH = "/v1/chat/completions"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the sliding window


def test_window_admits_the_limit_then_tells_once_until_it_clears() -> None:
    clock = FakeClock()
    window = SlidingWindow(2, clock)

    assert window.hit("alice") is None
    clock.now += 10
    assert window.hit("alice") is None
    clock.now += 5
    assert window.hit("alice") == Verdict(retry_after=WINDOW_S - 15, notify=True)
    clock.now += 1
    assert window.hit("alice") == Verdict(retry_after=WINDOW_S - 16, notify=False)
    assert window.hit("bob") is None  # keys are independent

    # The first hit leaves the window: one message may go, the next is refused and told again.
    clock.now = 1000.0 + WINDOW_S
    assert window.hit("alice") is None
    verdict = window.hit("alice")
    assert verdict is not None
    assert verdict.notify
    assert verdict.retry_after == pytest.approx(10.0)


def test_refused_messages_do_not_count() -> None:
    clock = FakeClock()
    window = SlidingWindow(1, clock)
    assert window.hit("alice") is None
    for _ in range(5):
        clock.now += 10
        assert window.hit("alice") is not None
    clock.now = 1000.0 + WINDOW_S
    assert window.hit("alice") is None


def test_rate_limits_check_the_user_first_then_the_chat() -> None:
    clock = FakeClock()
    limits = RateLimits(per_user=2, per_chat=3, clock=clock)

    assert limits.check("u1", "chat") is None
    assert limits.check("u1", "chat") is None
    limited = limits.check("u1", "chat")
    assert limited is not None
    assert limited[0] == "user"
    assert limits.check("u2", "chat") is None  # the chat's third message
    limited = limits.check("u3", "chat")
    assert limited is not None
    assert limited[0] == "chat"
    assert RateLimits(None, None, clock).check("u1", "chat") is None


# ---------------------------------------------------------------- through the core


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The clock of the cores' rate limits, moved by the test instead of waited for."""
    fake = FakeClock()

    def limits_on_fake_clock(per_user: int | None, per_chat: int | None) -> RateLimits:
        return RateLimits(per_user, per_chat, clock=fake)

    monkeypatch.setattr(bot.core, "RateLimits", limits_on_fake_clock)
    return fake


async def test_user_limit_notice_then_silence_then_recovery(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, clock: FakeClock
) -> None:
    h = await make_core(user_messages_per_minute=2)

    for text in ("one", "two"):
        reply, _ = await say(h.core, text)
        assert reply.text == f"echo: {text}"
    third, third_sink = await say(h.core, "three")
    fourth, fourth_sink = await say(h.core, "four")

    assert isinstance(third.error, LimitExceeded)
    assert third_sink.final_texts == [third.text]
    assert third.text.startswith("You are sending messages too fast. Please wait ")
    assert isinstance(fourth.error, LimitExceeded)
    assert fourth_sink.events == []  # silence: no reply, not even typing
    assert [b["messages"][-1]["content"] for b in answer_bodies(fake_openai)] == ["one", "two"]
    # Another user is not affected.
    other, _ = await say(h.core, "me too", user_id="8")
    assert other.text == "echo: me too"

    clock.now += WINDOW_S
    recovered, _ = await say(h.core, "five")
    assert recovered.text == "echo: five"


async def test_chat_limit_counts_everyone_in_the_group(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, clock: FakeClock
) -> None:
    h = await make_core(chat_messages_per_minute=2)

    def in_group(user_id: str) -> dict[str, object]:
        return {"user_id": user_id, "chat_id": "-500", "kind": ChatKind.GROUP}

    await say(h.core, "from 1", **in_group("1"))
    await say(h.core, "from 2", **in_group("2"))
    third, third_sink = await say(h.core, "from 3", **in_group("3"))
    fourth, fourth_sink = await say(h.core, "from 4", **in_group("4"))
    elsewhere, _ = await say(h.core, "in private", user_id="3")

    assert isinstance(third.error, LimitExceeded)
    assert third_sink.final_texts == [render("chat_rate_limited", wait=third.error.params["wait"])]
    assert fourth_sink.events == []
    assert isinstance(fourth.error, LimitExceeded)
    assert elsewhere.text == "echo: in private"
    assert len(answer_bodies(fake_openai)) == 3

    clock.now += WINDOW_S
    recovered, _ = await say(h.core, "again", **in_group("4"))
    assert recovered.text == "echo: again"


async def test_admins_are_not_rate_limited(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(user_messages_per_minute=1, telegram_admin_ids=[42])
    for text in ("one", "two", "three"):
        reply, _ = await say(h.core, text, user_id="42")
        assert reply.text == f"echo: {text}"


async def test_each_message_of_a_limited_stretch_closes_its_inbox_entry(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(user_messages_per_minute=1)
    for text in ("one", "two", "three"):
        future = await h.core.submit(incoming(text), RecordingSink())
        assert future is not None
        await future
    assert await h.store.inbox_pending() == []


# ---------------------------------------------------------------- over HTTP


async def post(relay: Relay, path: str, body: dict[str, object]) -> tuple[int, str | None, dict[str, object]]:
    """POST JSON; the status, the Retry-After header and the JSON body."""
    async with relay.session.post(path, json=body) as response:
        return response.status, response.headers.get("Retry-After"), await response.json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/ask_gpt", {"prompt": "hi"}),
        ("/ask_gpt", {"prompt": "hi", "user": "alice"}),
        (CHAT_PATH, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    ],
    ids=["ask_gpt", "ask_gpt_with_user", "chat_completions"],
)
async def test_http_answers_429_with_retry_after(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI, path: str, body: dict[str, object]
) -> None:
    settings = make_settings(user_messages_per_minute=2, http_port=0)
    async with running_relay(settings) as relay:
        results = [await post(relay, path, body) for _ in range(4)]

    assert [status for status, _, _ in results] == [200, 200, 429, 429]
    for _, retry_after, answer in results[2:]:
        assert retry_after is not None
        assert 1 <= int(retry_after) <= WINDOW_S
        assert "too fast" in answer["error"]["message"]  # type: ignore[index]
    assert len([r for r in fake_openai.requests if r.path == CHAT_PATH]) == 2
