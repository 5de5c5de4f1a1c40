"""build_context against a real SqliteStore: budget, order, paging and the reset pointer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.context import HISTORY_PAGE, build_context
from bot.errors import UserError
from bot.model import Turn
from bot.tokens import message_tokens
from storage import Conversation, NewMessage, StoredMessage, TurnRecord
from storage.base import STATUS_FAILED
from storage.sqlite import SqliteStore

SYSTEM = "sys"
PROMPT = "hi"
FIXED = message_tokens(SYSTEM) + message_tokens(PROMPT)


class CountingStore(SqliteStore):
    """The real store, remembering each history page it was asked for."""

    pages: list[tuple[int, int]]

    async def history(
        self, conversation_id: int, start_seq: int, before_seq: int, limit: int
    ) -> list[StoredMessage]:
        """Delegate, noting (before_seq, rows returned)."""
        page = await super().history(conversation_id, start_seq, before_seq, limit)
        self.pages.append((before_seq, len(page)))
        return page


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    """A fresh store on tmp_path."""
    opened = await CountingStore.open(tmp_path / "context.db")
    opened.pages = []
    yield opened
    await opened.close()


async def add_pairs(
    store: SqliteStore, key: str, count: int, tokens: int = 10, status: str = "ok", tag: str = ""
) -> Conversation:
    """Record `count` question/answer pairs q{i}/a{i}; return the conversation as it is now."""
    conversation = await store.conversation(key)
    for i in range(count):
        messages = (
            NewMessage("user", f"q{i}{tag}", tokens, status),
            NewMessage("assistant", f"a{i}{tag}", tokens, status),
        )
        await store.record_turn(TurnRecord(conversation.id, messages, "u", "Ada", "2024-05-01", 1, 1))
    return await store.conversation(key)


def contents(turns: list[Turn]) -> list[str]:
    """The history part of a context: everything between system prompt and prompt."""
    return [turn.content for turn in turns[1:-1]]


async def test_system_first_prompt_last_with_empty_history(store: SqliteStore) -> None:
    conversation = await store.conversation("k")
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=1000)
    assert turns == [Turn("system", SYSTEM), Turn("user", PROMPT)]
    assert tokens == FIXED


async def test_all_history_when_it_fits(store: SqliteStore) -> None:
    conversation = await add_pairs(store, "k", 3)
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=1000)
    assert turns[0] == Turn("system", SYSTEM)
    assert turns[-1] == Turn("user", PROMPT)
    assert contents(turns) == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert [turn.role for turn in turns[1:-1]] == ["user", "assistant"] * 3
    assert tokens == FIXED + 60


async def test_newest_turns_that_fit_oldest_dropped(store: SqliteStore) -> None:
    conversation = await add_pairs(store, "k", 5)
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=FIXED + 45)
    assert contents(turns) == ["q3", "a3", "q4", "a4"]
    assert tokens == FIXED + 40
    assert tokens <= FIXED + 45


async def test_exact_fit_is_included(store: SqliteStore) -> None:
    conversation = await add_pairs(store, "k", 5)
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=FIXED + 40)
    assert contents(turns) == ["q3", "a3", "q4", "a4"]
    assert tokens == FIXED + 40


async def test_history_never_starts_with_an_assistant_turn(store: SqliteStore) -> None:
    conversation = await add_pairs(store, "k", 5)
    # Room for three messages: a3, q4, a4; a3's question does not fit, so a3 goes too.
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=FIXED + 35)
    assert contents(turns) == ["q4", "a4"]
    assert turns[1].role == "user"
    # The estimate counts what is sent, not the dropped answer.
    assert tokens == FIXED + 20


async def test_no_room_for_history_sends_system_and_prompt(store: SqliteStore) -> None:
    conversation = await add_pairs(store, "k", 2)
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=FIXED)
    assert turns == [Turn("system", SYSTEM), Turn("user", PROMPT)]
    assert tokens == FIXED


async def test_prompt_alone_over_budget_raises_user_error(store: SqliteStore) -> None:
    conversation = await add_pairs(store, "k", 1)
    prompt = "x" * 1000
    with pytest.raises(UserError, match="too long"):
        await build_context(store, conversation, SYSTEM, prompt, budget=message_tokens(prompt))
    with pytest.raises(UserError):
        await build_context(store, conversation, SYSTEM, PROMPT, budget=FIXED - 1)


async def test_long_history_is_paged(store: CountingStore) -> None:
    conversation = await add_pairs(store, "k", 50, tokens=1)  # 100 messages, more than one page
    assert conversation.next_seq > HISTORY_PAGE
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=10_000)
    assert contents(turns) == [text for i in range(50) for text in (f"q{i}", f"a{i}")]
    assert tokens == FIXED + 100
    assert store.pages == [(100, HISTORY_PAGE), (100 - HISTORY_PAGE, 100 - HISTORY_PAGE)]


async def test_budget_cut_in_the_second_page(store: CountingStore) -> None:
    conversation = await add_pairs(store, "k", 50, tokens=1)
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=FIXED + 70)
    history = contents(turns)
    assert len(history) == 70
    assert history[0] == "q15"
    assert history[-1] == "a49"
    assert tokens == FIXED + 70


async def test_failed_turns_skipped_across_pages(store: CountingStore) -> None:
    conversation = await store.conversation("k")
    for round_ in range(40):
        await add_pairs(store, "k", 1, tokens=1, tag=f"-ok{round_}")
        await add_pairs(store, "k", 1, tokens=1, status=STATUS_FAILED, tag=f"-failed{round_}")
    conversation = await store.conversation("k")
    turns, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=10_000)
    history = contents(turns)
    assert len(history) == 80
    assert all("failed" not in text for text in history)
    assert history[:2] == ["q0-ok0", "a0-ok0"]
    assert history[-2:] == ["q0-ok39", "a0-ok39"]


async def test_reset_start_pointer_hides_older_turns(store: CountingStore) -> None:
    before = await add_pairs(store, "k", 3, tag="-old")
    await store.reset(before.id)
    conversation = await add_pairs(store, "k", 2, tag="-new")
    assert conversation.start_seq == 6
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=10_000)
    assert contents(turns) == ["q0-new", "a0-new", "q1-new", "a1-new"]
    assert tokens == FIXED + 40
    assert all(before_seq > conversation.start_seq for before_seq, _ in store.pages)


async def test_reset_with_nothing_after_gives_empty_history(store: CountingStore) -> None:
    before = await add_pairs(store, "k", 3)
    await store.reset(before.id)
    conversation = await store.conversation("k")
    turns, tokens, *_ = await build_context(store, conversation, SYSTEM, PROMPT, budget=10_000)
    assert turns == [Turn("system", SYSTEM), Turn("user", PROMPT)]
    assert tokens == FIXED
    assert store.pages == []
