"""Summaries instead of forgetting: a conversation far longer than the window keeps answering."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from bot.context import SUMMARY_PREFIX, context_budget
from bot.core import BotCore
from bot.summary import SUMMARY_INSTRUCTIONS
from bot.tokens import message_tokens
from tests.chat_helpers import (
    answer_bodies,
    chat_bodies,
    is_summary_request,
    last_user,
    query,
    say,
    summary_bodies,
    system_of,
)
from tests.conftest import HarnessFactory
from tests.fakes.openai_server import ErrorReply, FakeOpenAI, Reply, TextReply, count_words, prompt_text

WINDOW = 600
MAX_TOKENS = 100
BUDGET = context_budget(WINDOW, MAX_TOKENS)
SMALL_WINDOW = {"context_windows": {"gpt-4o-mini": WINDOW}, "max_tokens": MAX_TOKENS}
FILLER = "the quick brown fox jumps over the lazy dog while we keep talking about it "
SYSTEM_PROMPT = "You are a helpful assistant."

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SummarizingFake(FakeOpenAI):
    """FakeOpenAI that answers summary requests with `summary_reply` (default: a short summary)."""

    def __init__(self) -> None:
        super().__init__()
        self.summary_reply: Reply | None = None
        self._numbers = itertools.count(1)

    def build_app(self) -> web.Application:
        """The fake's routes, with summaries scripted before the chat handler takes its reply."""
        app = super().build_app()

        @web.middleware
        async def summaries(request: web.Request, handler: Handler) -> web.StreamResponse:
            raw = await request.read()  # aiohttp keeps the body for the handler
            if request.path.endswith("/chat/completions") and raw and is_summary_request(_json(raw)):
                assert self.pending == 0, "a summary request arrived while a chat reply was queued"
                self.enqueue(self.summary_reply or TextReply((f"summary {next(self._numbers)}",)))
            return await handler(request)

        app.middlewares.append(summaries)
        return app


def _json(raw: bytes) -> dict[str, Any]:
    """A request body as a dict (empty when it is not a JSON object)."""
    parsed = json.loads(raw)
    return parsed if isinstance(parsed, dict) else {}


@pytest.fixture
async def fake_openai() -> AsyncIterator[SummarizingFake]:
    """This module's model server: summaries get short scripted answers, chats the echo."""
    async with SummarizingFake() as server:
        yield server


def turn_text(number: int) -> str:
    """A user message of about 80 estimated tokens."""
    return f"turn {number}: " + (FILLER * 4).strip()


async def converse(core: BotCore, turns: range) -> None:
    """Send every turn; each must get its echo."""
    for number in turns:
        reply, sink = await say(core, turn_text(number))
        assert reply.error is None, (number, reply.text)
        assert sink.final_texts == [f"echo: {turn_text(number)}"]


def request_tokens(body: dict[str, Any]) -> int:
    """Estimated tokens of a request's messages, as the core counts them."""
    return sum(message_tokens(m["content"]) for m in body["messages"])


async def test_a_conversation_ten_windows_long_keeps_answering(
    make_core: HarnessFactory, fake_openai: SummarizingFake
) -> None:
    h = await make_core(**SMALL_WINDOW)
    turns = range(1, 41)

    await converse(h.core, turns)

    # Every raw turn is still stored, in order, and the history is over 10 windows long.
    stored = query(h.settings.db_path, "SELECT role, content, status FROM messages ORDER BY seq")
    expected = [
        row
        for n in turns
        for row in (("user", turn_text(n), "ok"), ("assistant", f"echo: {turn_text(n)}", "ok"))
    ]
    assert stored == expected
    [(total,)] = query(h.settings.db_path, "SELECT SUM(tokens) FROM messages")
    assert total > 10 * WINDOW

    # Overflowing turns were folded into a running summary by the model.
    summaries = summary_bodies(fake_openai)
    assert len(summaries) >= 5
    assert {b["model"] for b in summaries} == {"gpt-4o-mini"}
    assert {b["messages"][0]["content"] for b in summaries} == {SUMMARY_INSTRUCTIONS}
    assert turn_text(1) in summaries[0]["messages"][1]["content"]
    assert "Summary so far:\nsummary 1" in summaries[1]["messages"][1]["content"]

    # The last answer's request leads with the newest summary and fits the window.
    last = answer_bodies(fake_openai)[-1]
    assert last["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert last["messages"][1] == {"role": "system", "content": f"{SUMMARY_PREFIX}summary {len(summaries)}"}
    assert last_user(last) == turn_text(turns[-1])
    assert request_tokens(last) <= BUDGET
    assert all(request_tokens(b) <= BUDGET for b in answer_bodies(fake_openai))
    [(summary, summary_seq)] = query(h.settings.db_path, "SELECT summary, summary_seq FROM conversations")
    assert summary == f"summary {len(summaries)}"
    assert 0 < summary_seq < 2 * len(turns)

    # The user is charged for the summaries too (the fake counts words as tokens).
    [(prompt_tokens, requests)] = query(
        h.settings.db_path,
        "SELECT SUM(prompt_tokens), SUM(requests) FROM usage WHERE user_key = ?",
        "telegram:7",
    )
    assert requests == len(turns)
    assert prompt_tokens == sum(count_words(prompt_text(b, legacy=False)) for b in chat_bodies(fake_openai))


async def test_summary_model_setting_is_used_for_summaries_only(
    make_core: HarnessFactory, fake_openai: SummarizingFake
) -> None:
    h = await make_core(summary_model="gpt-4o-summarizer", **SMALL_WINDOW)

    await converse(h.core, range(1, 9))

    assert summary_bodies(fake_openai)
    assert {b["model"] for b in summary_bodies(fake_openai)} == {"gpt-4o-summarizer"}
    assert {b["model"] for b in answer_bodies(fake_openai)} == {"gpt-4o-mini"}
    assert all(b["max_tokens"] <= h.settings.summary_max_tokens for b in summary_bodies(fake_openai))


async def test_drop_mode_never_asks_for_a_summary(
    make_core: HarnessFactory, fake_openai: SummarizingFake
) -> None:
    h = await make_core(context_overflow="drop", **SMALL_WINDOW)

    await converse(h.core, range(1, 13))

    assert summary_bodies(fake_openai) == []
    last = answer_bodies(fake_openai)[-1]
    assert not any(m["content"].startswith(SUMMARY_PREFIX) for m in last["messages"])
    assert request_tokens(last) <= BUDGET
    # Only the newest turns are sent: the first one was dropped.
    assert all(turn_text(1) != m["content"] for m in last["messages"])
    assert query(h.settings.db_path, "SELECT summary FROM conversations") == [(None,)]


async def test_a_failing_summary_falls_back_to_dropping(
    make_core: HarnessFactory, fake_openai: SummarizingFake
) -> None:
    fake_openai.summary_reply = ErrorReply.for_status(500)
    h = await make_core(**SMALL_WINDOW)

    await converse(h.core, range(1, 9))

    assert len(summary_bodies(fake_openai)) >= 2  # tried again at the next overflow
    last = answer_bodies(fake_openai)[-1]
    assert not any(m["content"].startswith(SUMMARY_PREFIX) for m in last["messages"])
    assert request_tokens(last) <= BUDGET
    assert query(h.settings.db_path, "SELECT summary, summary_seq FROM conversations") == [(None, 0)]


async def test_reset_clears_the_summary(make_core: HarnessFactory, fake_openai: SummarizingFake) -> None:
    h = await make_core(**SMALL_WINDOW)
    await converse(h.core, range(1, 9))
    [(summary,)] = query(h.settings.db_path, "SELECT summary FROM conversations")
    assert summary is not None
    assert summary.startswith("summary ")

    reply, _ = await say(h.core, "/reset")
    reply, _ = await say(h.core, "fresh start")

    assert reply.text == "echo: fresh start"
    assert answer_bodies(fake_openai)[-1]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "fresh start"},
    ]
    assert query(h.settings.db_path, "SELECT summary, summary_seq FROM conversations") == [(None, 0)]
    assert system_of(answer_bodies(fake_openai)[-1]) == SYSTEM_PROMPT
