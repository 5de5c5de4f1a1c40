"""BotCore end to end: real SQLite store, real OpenAIModel against the fake server, a recording sink."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bot.conversation import conversation_key
from bot.core import MAX_QUOTE_CHARS, BotCore, Reply
from bot.errors import ErrorKind, ModelError, ShuttingDown, UserError
from bot.messages import ChatKind, IncomingMessage
from bot.streaming import TYPING_MARKER
from bot.texts import render
from bot.tokens import message_tokens
from tests.conftest import HarnessFactory, SettingsFactory
from tests.fakes.openai_server import (
    CutStreamReply,
    EmptyStreamReply,
    ErrorReply,
    FakeOpenAI,
    HangReply,
    TextReply,
)
from tests.fakes.openai_server import Reply as FakeReply
from tests.fakes.sink import RecordingSink

DEFAULT_SYSTEM = ("system", "You are a helpful assistant.")
SHORT_TIMEOUT_S = 0.3
SLOW_CHUNK_S = 0.3
SECRET = "sk-secret-123"

_message_ids = itertools.count(1)


def message(
    text: str,
    *,
    chat_id: str = "100",
    user_id: str = "7",
    kind: ChatKind = ChatKind.PRIVATE,
    addressed: bool = False,
    message_id: str | None = None,
    **extra: Any,
) -> IncomingMessage:
    """A neutral message; private chat 100 from user 7 unless told otherwise."""
    return IncomingMessage(
        platform="test",
        chat_id=chat_id,
        chat_kind=kind,
        user_id=user_id,
        user_name=f"user{user_id}",
        message_id=message_id or str(next(_message_ids)),
        text=text,
        addressed=addressed,
        **extra,
    )


def group(text: str, *, user_id: str = "7", addressed: bool = True) -> IncomingMessage:
    """A message in group chat -500."""
    return message(text, chat_id="-500", user_id=user_id, kind=ChatKind.GROUP, addressed=addressed)


async def ask(core: BotCore, incoming: IncomingMessage, sink: RecordingSink | None = None) -> Reply:
    """Submit a message that must be accepted and wait for its reply."""
    future = await core.submit(incoming, sink or RecordingSink())
    assert future is not None
    return await future


def messages_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, content) of every message of a chat request."""
    return [(m["role"], m["content"]) for m in body["messages"]]


def query(db_path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the database directly, behind the store's back."""
    with closing(sqlite3.connect(db_path)) as db:
        return db.execute(sql, params).fetchall()


# --- whether to answer -------------------------------------------------------------------------


async def test_private_message_is_answered(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    sink = RecordingSink()

    reply = await ask(h.core, message("hello"), sink)

    assert reply.text == "echo: hello"
    assert reply.error is None
    assert sink.final_texts == ["echo: hello"]
    assert messages_of(fake_openai.last_body) == [DEFAULT_SYSTEM, ("user", "hello")]


async def test_unaddressed_group_message_is_ignored(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    sink = RecordingSink()

    future = await h.core.submit(group("chatting among ourselves", addressed=False), sink)

    assert future is None
    assert fake_openai.request_count == 0
    assert sink.events == []


async def test_addressed_group_message_is_answered(make_core: HarnessFactory) -> None:
    h = await make_core()
    sink = RecordingSink()

    reply = await ask(h.core, group("what time is it?"), sink)

    assert reply.text == "echo: what time is it?"
    assert sink.final_texts == ["echo: what time is it?"]


async def test_group_answer_all_answers_unaddressed(make_core: HarnessFactory) -> None:
    h = await make_core(group_answer_all=True)
    sink = RecordingSink()

    reply = await ask(h.core, group("anyone?", addressed=False), sink)

    assert reply.text == "echo: anyone?"
    assert sink.final_texts == ["echo: anyone?"]


@pytest.mark.parametrize(("group_context", "shared"), [("per_user", False), ("shared", True)])
async def test_group_context_per_user_or_shared(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, group_context: str, shared: bool
) -> None:
    h = await make_core(group_context=group_context)
    await ask(h.core, group("I am Alice", user_id="1"))

    await ask(h.core, group("Who spoke before me?", user_id="2"))

    if shared:  # one context for the group: each turn names its author
        expected = [
            DEFAULT_SYSTEM,
            ("user", "user1: I am Alice"),
            ("assistant", "echo: user1: I am Alice"),
            ("user", "user2: Who spoke before me?"),
        ]
    else:
        expected = [DEFAULT_SYSTEM, ("user", "Who spoke before me?")]
    assert messages_of(fake_openai.last_body) == expected


# --- conversation context and ordering ---------------------------------------------------------


async def test_second_message_sees_first_turn(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    fake_openai.enqueue(TextReply(("Nice to meet ", "you, Ann.")))
    await ask(h.core, message("My name is Ann."))

    await ask(h.core, message("What is my name?"))

    assert messages_of(fake_openai.last_body) == [
        DEFAULT_SYSTEM,
        ("user", "My name is Ann."),
        ("assistant", "Nice to meet you, Ann."),
        ("user", "What is my name?"),
    ]


async def test_quick_messages_are_answered_in_order(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    fake_openai.enqueue(TextReply(("slow first answer",), chunk_delay_s=SLOW_CHUNK_S))
    sink = RecordingSink()

    futures = await asyncio.gather(*(h.core.submit(message(t), sink) for t in ("one", "two", "three")))
    replies = [await f for f in futures if f is not None]

    assert [r.text for r in replies] == ["slow first answer", "echo: two", "echo: three"]
    assert sink.final_texts == ["slow first answer", "echo: two", "echo: three"]
    bodies = [r.body for r in fake_openai.requests]
    assert messages_of(bodies[1]) == [
        DEFAULT_SYSTEM,
        ("user", "one"),
        ("assistant", "slow first answer"),
        ("user", "two"),
    ]
    assert messages_of(bodies[2]) == [
        *messages_of(bodies[1]),
        ("assistant", "echo: two"),
        ("user", "three"),
    ]


async def test_different_conversations_run_concurrently(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    delay = 0.5
    fake_openai.enqueue(
        TextReply(("for chat 1",), chunk_delay_s=delay), TextReply(("for chat 2",), chunk_delay_s=delay)
    )
    started = time.monotonic()

    first = await h.core.submit(message("a", chat_id="1"), RecordingSink())
    second = await h.core.submit(message("b", chat_id="2"), RecordingSink())
    assert first is not None
    assert second is not None
    replies = await asyncio.gather(first, second)

    assert sorted(r.text for r in replies) == ["for chat 1", "for chat 2"]
    assert time.monotonic() - started < 1.7 * delay  # one after the other would take 2 * delay


@pytest.mark.parametrize("back_to_back", [False, True], ids=["after-answer", "back-to-back"])
async def test_redelivered_message_is_answered_once(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, back_to_back: bool
) -> None:
    h = await make_core()
    sink = RecordingSink()
    original = message("hello", message_id="42")
    redelivered = replace(original)

    if back_to_back:
        futures = await asyncio.gather(h.core.submit(original, sink), h.core.submit(redelivered, sink))
        assert futures[1] is None
        assert futures[0] is not None
        await futures[0]
    else:
        await ask(h.core, original, sink)
        assert await h.core.submit(redelivered, sink) is None

    assert fake_openai.request_count == 1
    assert sink.final_texts == ["echo: hello"]


async def test_context_survives_restart(
    make_core: HarnessFactory, make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings()
    before = await make_core(settings)
    await ask(before.core, message("Remember the number 7."))
    await before.close()

    after = await make_core(settings)
    await ask(after.core, message("Which number?"))

    assert messages_of(fake_openai.last_body) == [
        DEFAULT_SYSTEM,
        ("user", "Remember the number 7."),
        ("assistant", "echo: Remember the number 7."),
        ("user", "Which number?"),
    ]


async def test_context_stays_within_budget_and_keeps_latest_turns(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    window, max_tokens = 600, 100
    h = await make_core(
        allowed_models=["tiny-model"], context_window=window, max_tokens=max_tokens, context_overflow="drop"
    )
    await ask(h.core, message("/model tiny-model"))
    prompts = [f"turn {i} " + "x" * 200 for i in range(8)]
    for prompt in prompts:
        await ask(h.core, message(prompt))

    await ask(h.core, message("final question"))

    body = fake_openai.last_body
    sent = messages_of(body)
    assert body["model"] == "tiny-model"
    assert body["max_tokens"] == max_tokens
    assert sum(message_tokens(content) for _, content in sent) <= window - max_tokens
    assert sent[0] == DEFAULT_SYSTEM
    assert sent[-3:] == [
        ("user", prompts[-1]),
        ("assistant", f"echo: {prompts[-1]}"),
        ("user", "final question"),
    ]
    assert ("user", prompts[0]) not in sent
    assert sent[1][0] == "user"  # history starts with a question, not an orphaned answer


# --- commands ----------------------------------------------------------------------------------


async def test_reset_starts_fresh_but_keeps_rows(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    await ask(h.core, message("old topic"))
    sink = RecordingSink()

    await ask(h.core, message("/reset"), sink)
    await ask(h.core, message("new topic"))

    assert sink.final_texts == ["Started a fresh conversation. Earlier messages no longer count."]
    assert messages_of(fake_openai.last_body) == [DEFAULT_SYSTEM, ("user", "new topic")]
    assert query(h.settings.db_path, "SELECT role, content FROM messages ORDER BY seq") == [
        ("user", "old topic"),
        ("assistant", "echo: old topic"),
        ("user", "new topic"),
        ("assistant", "echo: new topic"),
    ]


async def test_model_command_shows_and_switches(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(allowed_models=["gpt-4o-mini", "other-model"])
    key = conversation_key(message("x"))

    shown = await ask(h.core, message("/model"))
    switched = await ask(h.core, message("/model other-model"))
    await ask(h.core, message("hi"))
    shown_after = await ask(h.core, message("/model"))

    assert shown.text == "Model: gpt-4o-mini\nAvailable: gpt-4o-mini, other-model"
    assert switched.text == "Model set to other-model."
    assert fake_openai.last_body["model"] == "other-model"
    assert shown_after.text.startswith("Model: other-model\n")
    assert (await h.store.conversation(key)).model == "other-model"


async def test_model_command_refuses_unlisted_model(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(allowed_models=["other-model"])
    sink = RecordingSink()

    refused = await ask(h.core, message("/model gpt-5-ultra"), sink)
    await ask(h.core, message("hi"))

    assert isinstance(refused.error, UserError)
    assert sink.final_texts == [
        "Model 'gpt-5-ultra' is not available. Choose one of: gpt-4o-mini, other-model"
    ]
    assert fake_openai.last_body["model"] == "gpt-4o-mini"
    assert (await h.store.conversation(conversation_key(message("x")))).model is None


async def test_system_command_shows_sets_and_restores(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()

    shown = await ask(h.core, message("/system"))
    set_reply = await ask(h.core, message("/system Answer like a pirate."))
    await ask(h.core, message("hi"))
    custom_system = fake_openai.last_body["messages"][0]
    shown_custom = await ask(h.core, message("/system"))
    restored = await ask(h.core, message("/system default"))
    await ask(h.core, message("hi again"))

    assert shown.text == "System prompt:\nYou are a helpful assistant."
    assert set_reply.text == "System prompt set."
    assert custom_system == {"role": "system", "content": "Answer like a pirate."}
    assert shown_custom.text == "System prompt:\nAnswer like a pirate."
    assert restored.text == "System prompt restored to the default."
    assert messages_of(fake_openai.last_body)[0] == DEFAULT_SYSTEM


async def test_usage_reports_tokens_after_a_turn(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    before = await ask(h.core, message("/usage"))
    fake_openai.enqueue(TextReply(("Hi", " you")))

    await ask(h.core, message("hello there"))
    after = await ask(h.core, message("/usage"))
    other_user = await ask(h.core, message("/usage", chat_id="200", user_id="8"))

    assert before.text == "Today: 0 tokens in 0 requests\nThis month: 0 tokens in 0 requests"
    # The fake counts words: 5 (system) + 2 (prompt) in, 2 out.
    assert after.text == "Today: 9 tokens in 1 request\nThis month: 9 tokens in 1 request"
    assert other_user.text.startswith("Today: 0 tokens")


async def test_help_and_start(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    sink = RecordingSink()

    await ask(h.core, message("/help"), sink)
    await ask(h.core, message("/start@gptrelay_bot"), sink)

    assert sink.final_texts == [render("help"), "Hello! " + render("help")]
    assert "/reset" in render("help")
    assert fake_openai.request_count == 0


async def test_unknown_command_points_to_help(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    sink = RecordingSink()

    reply = await ask(h.core, message("/frobnicate now"), sink)

    assert isinstance(reply.error, UserError)
    assert len(sink.final_texts) == 1
    assert "/frobnicate" in sink.final_texts[0]
    assert "/help" in sink.final_texts[0]
    assert fake_openai.request_count == 0


# --- rendering ---------------------------------------------------------------------------------


async def test_streaming_sink_gets_edits_and_exact_final_text(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    # Slow enough that partial text is shown (after FIRST_RENDER_DELAY_S) before the end.
    fake_openai.enqueue(TextReply(("Hel", "lo", " the", "re"), chunk_delay_s=0.15))
    sink = RecordingSink(can_stream=True, edit_interval_s=0.0)

    await ask(h.core, message("greet me"), sink)

    assert sink.final_texts == ["Hello there"]
    assert sink.edits  # shown while arriving, then edited
    assert any(text.endswith(TYPING_MARKER) for _, text in sink.edits)
    assert TYPING_MARKER not in sink.final_texts[0]
    assert sink.events[0] == ("typing_start",)
    # Typing stops when the model is done; the final text follows it.
    assert sink.events[-2] == ("typing_stop",)
    assert sink.events[-1] == ("edit", "1", "Hello there")


async def test_non_streaming_sink_gets_one_message(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    fake_openai.enqueue(TextReply(("Hel", "lo", " there")))
    sink = RecordingSink(can_stream=False)

    await ask(h.core, message("greet me"), sink)

    assert sink.sent == ["Hello there"]
    assert sink.edits == []


@pytest.mark.parametrize("can_stream", [True, False], ids=["streaming", "whole"])
async def test_long_answer_is_split_to_the_limit(
    make_core: HarnessFactory, fake_openai: FakeOpenAI, can_stream: bool
) -> None:
    h = await make_core()
    answer = " ".join(f"word{i:03d}" for i in range(150))  # 1199 characters
    fake_openai.enqueue(TextReply(tuple(answer[i : i + 100] for i in range(0, len(answer), 100))))
    sink = RecordingSink(max_message_len=500, can_stream=can_stream)

    reply = await ask(h.core, message("talk a lot"), sink)

    assert reply.text == answer
    assert len(sink.final_texts) == 3
    assert all(len(text) <= 500 for text in sink.final_texts)
    assert " ".join(sink.final_texts) == answer  # cut at spaces, nothing lost
    assert not any(TYPING_MARKER in text for text in sink.final_texts)


async def test_reply_to_text_is_quoted_into_prompt(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()

    await ask(h.core, message("Is that right?", reply_to_id="5", reply_to_text="The moon is cheese."))
    quoted = fake_openai.last_body["messages"][-1]["content"]
    await ask(h.core, message("And this?", reply_to_id="6", reply_to_text="q" * (MAX_QUOTE_CHARS + 500)))
    long_quoted = fake_openai.last_body["messages"][-1]["content"]

    assert quoted == '(In reply to: "The moon is cheese.")\n\nIs that right?'
    assert "q" * MAX_QUOTE_CHARS in long_quoted
    assert "q" * (MAX_QUOTE_CHARS + 1) not in long_quoted


async def test_empty_prompt_gets_explanation(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    sink = RecordingSink()

    reply = await ask(h.core, message("  "), sink)

    assert reply.text == render("empty_prompt")
    assert sink.final_texts == [render("empty_prompt")]
    assert fake_openai.request_count == 0


# --- failures ----------------------------------------------------------------------------------

FAILURES: list[tuple[str, FakeReply, ErrorKind, str, str]] = [
    # id, scripted reply, kind, detail expected in the log, partial text left visible
    (
        "401",
        ErrorReply(401, f"Incorrect API key provided: {SECRET}.", "invalid_request_error", "invalid_api_key"),
        ErrorKind.AUTH,
        SECRET,
        "",
    ),
    ("429", ErrorReply.for_status(429, retry_after=1), ErrorKind.RATE_LIMIT, "RateLimitError", ""),
    ("500", ErrorReply.for_status(500), ErrorKind.SERVER, "InternalServerError", ""),
    ("timeout", HangReply(2.0), ErrorKind.TIMEOUT, "APITimeoutError", ""),
    ("empty", EmptyStreamReply(), ErrorKind.EMPTY, "stream ended without text", ""),
    (
        "cut",
        CutStreamReply(("Half an ", "answer")),
        ErrorKind.SERVER,
        "APIConnectionError",
        "Half an answer",
    ),
]


@pytest.mark.parametrize(
    ("reply", "kind", "detail", "partial"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_model_failure_is_reported_and_conversation_stays_valid(
    make_core: HarnessFactory,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    reply: FakeReply,
    kind: ErrorKind,
    detail: str,
    partial: str,
) -> None:
    h = await make_core(request_timeout_s=SHORT_TIMEOUT_S)
    await ask(h.core, message("first question"))
    fake_openai.enqueue(reply)
    sink = RecordingSink()

    failed = await ask(h.core, message("doomed question"), sink)

    assert isinstance(failed.error, ModelError)
    assert failed.error.kind is kind
    assert failed.text == render(f"model_error.{kind.value}")
    assert sink.final_texts == [*([partial] if partial else []), render(f"model_error.{kind.value}")]
    assert not any(SECRET in text for text in sink.final_texts)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(detail in line and kind.value in line for line in logged), logged

    next_sink = RecordingSink()
    await ask(h.core, message("next question"), next_sink)

    assert next_sink.final_texts == ["echo: next question"]
    assert messages_of(fake_openai.last_body) == [
        DEFAULT_SYSTEM,
        ("user", "first question"),
        ("assistant", "echo: first question"),
        ("user", "next question"),
    ]
    stored = query(h.settings.db_path, "SELECT role, content, status FROM messages ORDER BY seq")
    assert stored[2:-2] == [
        ("user", "doomed question", "failed"),
        *([("assistant", partial, "partial")] if partial else []),
    ]
    assert await h.store.inbox_pending() == []


async def test_failing_sink_does_not_break_the_core(
    make_core: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    h = await make_core()
    broken = RecordingSink(fail_on_send=RuntimeError("platform down"))

    failed = await ask(h.core, message("hello"), broken)
    working = RecordingSink()
    await ask(h.core, message("hello again"), working)

    # The answer could not be delivered: logged with its ids, and the turn is still stored.
    assert failed.text == "echo: hello"
    assert isinstance(failed.error, RuntimeError)
    assert any(r.exc_info and "platform down" in str(r.exc_info[1]) for r in caplog.records)
    assert any("could not be delivered" in r.getMessage() for r in caplog.records)
    assert working.final_texts == ["echo: hello again"]
    assert await h.store.inbox_pending() == []
    conversation = await h.store.conversation(conversation_key(message("x")))
    history = await h.store.history(conversation.id, 0, conversation.next_seq, 10)
    assert [m.content for m in reversed(history)] == [
        "hello",
        "echo: hello",
        "hello again",
        "echo: hello again",
    ]


async def test_failing_sink_on_refusal_still_closes_inbox_entry(
    make_core: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    h = await make_core()
    broken = RecordingSink(fail_on_send=RuntimeError("platform down"))

    failed = await ask(h.core, message("/frobnicate"), broken)

    assert isinstance(failed.error, RuntimeError)
    assert any(r.exc_info and "platform down" in str(r.exc_info[1]) for r in caplog.records)
    assert await h.store.inbox_pending() == []


async def test_every_handled_message_leaves_the_inbox(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    fake_openai.enqueue(TextReply(("fine",)), ErrorReply.for_status(500))

    await ask(h.core, message("answered"))
    await ask(h.core, message("/nope"))
    await ask(h.core, message("model fails"))
    await ask(h.core, message("/help"))

    statuses = [row[0] for row in query(h.settings.db_path, "SELECT status FROM inbox ORDER BY id")]
    assert len(statuses) == 4
    assert "pending" not in statuses
    assert statuses[1] == "refused"
    assert await h.store.inbox_pending() == []


# --- shutdown ----------------------------------------------------------------------------------


async def test_close_lets_in_flight_answer_finish(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core()
    fake_openai.enqueue(TextReply(("slow ", "answer"), chunk_delay_s=SLOW_CHUNK_S / 2))
    sink = RecordingSink()
    future = await h.core.submit(message("question"), sink)
    assert future is not None

    finished = await h.core.close(2.0)

    assert finished is True
    assert future.done()
    assert future.result().text == "slow answer"
    assert sink.final_texts == ["slow answer"]
    with pytest.raises(ShuttingDown):
        await h.core.submit(message("too late"), RecordingSink())
    assert fake_openai.request_count == 1
    assert await h.store.inbox_pending() == []


async def test_close_timeout_cancels_and_keeps_message_pending(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    fake_openai.enqueue(HangReply(3.0))
    incoming = message("question")
    future = await h.core.submit(incoming, RecordingSink())
    assert future is not None

    finished = await h.core.close(0.2)

    assert finished is False
    assert future.cancelled()  # whoever awaits the reply is told, instead of waiting forever
    # Not answered: left pending so it is handled again after a restart.
    assert [entry.message_id for entry in await h.store.inbox_pending()] == [incoming.message_id]
