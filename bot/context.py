"""Assembling the model's context: system prompt plus as many recent turns as fit."""

from __future__ import annotations

from typing import NamedTuple

from bot.errors import UserError
from bot.model import Turn
from bot.tokens import message_tokens
from storage import Conversation, Store, StoredMessage

# Turns fetched by the first round trip; most answers need only that page. Later pages grow
# geometrically so a huge window over a long history still takes only a few round trips.
HISTORY_PAGE = 64
PAGE_GROWTH = 2
# Token counts are estimates (bot.tokens): for some texts (numbers, emoji, German) the real count
# runs up to ~1.3x over them, so fill only this share of the window.
ESTIMATE_SAFETY = 0.8
SUMMARY_PREFIX = "Summary of the conversation so far:\n"


def context_budget(window: int, max_tokens: int) -> int:
    """Estimated prompt tokens that may be sent: the window minus the answer, with a safety margin."""
    return int((window - max_tokens) * ESTIMATE_SAFETY)


class ContextPlan(NamedTuple):
    """The turns to send, their estimated tokens, and whether older turns did not fit."""

    turns: list[Turn]
    tokens: int
    left_out: bool
    first_seq: int  # seq of the oldest stored turn sent (next_seq when none)


class Recent(NamedTuple):
    """The newest stored turns that fit a room, oldest first."""

    messages: list[StoredMessage]
    tokens: int
    left_out: bool
    first_seq: int


def summary_turn(summary: str) -> Turn:
    """The stored summary as it leads the context."""
    return Turn("system", SUMMARY_PREFIX + summary)


async def build_context(
    store: Store,
    conversation: Conversation,
    system_prompt: str,
    prompt: str,
    budget: int,
) -> ContextPlan:
    """Plan what to send: system prompt, summary, as many recent turns as fit, the prompt.

    `budget` is the model's window minus the tokens reserved for the answer.
    """
    summary = conversation.live_summary
    lead = [Turn("system", system_prompt)] + ([summary_turn(summary)] if summary else [])
    fixed = sum(message_tokens(t.content) for t in lead) + message_tokens(prompt)
    room = budget - fixed
    if room < 0:
        raise UserError("prompt_too_long", tokens=fixed, limit=budget)
    recent = await recent_turns(store, conversation, room)
    history = [Turn(m.role, m.content) for m in recent.messages]
    return ContextPlan(
        [*lead, *history, Turn("user", prompt)], fixed + recent.tokens, recent.left_out, recent.first_seq
    )


def context_start(conversation: Conversation) -> int:
    """The first seq the context may use: after the reset pointer and after the summary."""
    return max(conversation.start_seq, conversation.summary_seq if conversation.live_summary else 0)


async def recent_turns(store: Store, conversation: Conversation, room: int) -> Recent:
    """The newest usable turns whose tokens fit in `room`, starting at a user turn."""
    picked: list[StoredMessage] = []
    used = 0
    start = context_start(conversation)
    before = conversation.next_seq
    size = HISTORY_PAGE
    left_out = False
    while before > start:
        page = await store.history(conversation.id, start, before, size)
        for message in page:
            if used + message.tokens > room:
                left_out = True
                break
            used += message.tokens
            picked.append(message)
        if left_out or len(page) < size:
            break
        before = page[-1].seq
        size *= PAGE_GROWTH
    return _from_user_turn(picked, left_out, conversation.next_seq)


def _from_user_turn(newest_first: list[StoredMessage], left_out: bool, next_seq: int) -> Recent:
    """Oldest first, dropping a leading assistant turn whose question was cut off."""
    messages = newest_first[::-1]
    while messages and messages[0].role != "user":
        messages.pop(0)
        left_out = True
    first_seq = messages[0].seq if messages else next_seq
    # Count only what is sent: a dropped answer is not part of the prompt.
    return Recent(messages, sum(m.tokens for m in messages), left_out, first_seq)
