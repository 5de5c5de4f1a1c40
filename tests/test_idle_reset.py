"""Idle reset: a conversation left alone longer than idle_reset_minutes starts fresh."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.chat_helpers import answer_bodies, execute, query, say
from tests.conftest import HarnessFactory
from tests.fakes.openai_server import FakeOpenAI

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def idle_since(db_path: Path, minutes: float) -> None:
    """Pretend every conversation was last touched `minutes` ago."""
    then = (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="milliseconds")
    assert execute(db_path, "UPDATE conversations SET updated_at = ?", then) >= 1


async def test_an_idle_conversation_starts_fresh(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(idle_reset_minutes=30)
    await say(h.core, "my name is Alice")

    idle_since(h.settings.db_path, 10)  # not idle long enough: the context is kept
    await say(h.core, "what is my name?")
    assert len(answer_bodies(fake_openai)[-1]["messages"]) == 4

    idle_since(h.settings.db_path, 60)
    reply, _ = await say(h.core, "hello again")

    assert reply.text == "echo: hello again"
    assert answer_bodies(fake_openai)[-1]["messages"] == [SYSTEM, {"role": "user", "content": "hello again"}]
    # Nothing was deleted: the start pointer moved past the earlier turns.
    assert query(h.settings.db_path, "SELECT COUNT(*) FROM messages") == [(6,)]
    [(start_seq, next_seq)] = query(h.settings.db_path, "SELECT start_seq, next_seq FROM conversations")
    assert (start_seq, next_seq) == (4, 6)

    # The fresh turn is the new context.
    await say(h.core, "and now?")
    assert [m["content"] for m in answer_bodies(fake_openai)[-1]["messages"][1:]] == [
        "hello again",
        "echo: hello again",
        "and now?",
    ]


async def test_without_the_setting_an_old_conversation_continues(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()
    await say(h.core, "my name is Alice")

    idle_since(h.settings.db_path, 60 * 24 * 30)
    await say(h.core, "what is my name?")

    assert [m["content"] for m in answer_bodies(fake_openai)[-1]["messages"][1:]] == [
        "my name is Alice",
        "echo: my name is Alice",
        "what is my name?",
    ]
