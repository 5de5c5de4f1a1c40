"""Assembling the model's context: system prompt plus as many recent turns as fit."""

from __future__ import annotations

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


def context_budget(window: int, max_tokens: int) -> int:
    """Estimated prompt tokens that may be sent: the window minus the answer, with a safety margin."""
    return int((window - max_tokens) * ESTIMATE_SAFETY)


async def build_context(
    store: Store,
    conversation: Conversation,
    system_prompt: str,
    prompt: str,
    budget: int,
) -> tuple[list[Turn], int]:
    """Return the turns to send and their estimated prompt tokens.

    `budget` is the model's window minus the tokens reserved for the answer.
    """
    fixed = message_tokens(system_prompt) + message_tokens(prompt)
    room = budget - fixed
    if room < 0:
        raise UserError(
            f"That message is too long for this model (about {fixed} tokens, "
            f"the limit is {budget}). Please shorten it."
        )
    history, used = await _recent_turns(store, conversation, room)
    turns = [Turn("system", system_prompt), *history, Turn("user", prompt)]
    return turns, fixed + used


async def _recent_turns(store: Store, conversation: Conversation, room: int) -> tuple[list[Turn], int]:
    """The newest stored turns whose tokens fit in `room`, oldest first, and their tokens."""
    picked: list[StoredMessage] = []
    used = 0
    before = conversation.next_seq
    size = HISTORY_PAGE
    while before > conversation.start_seq:
        page = await store.history(conversation.id, conversation.start_seq, before, size)
        for message in page:
            if used + message.tokens > room:
                return _from_user_turn(picked)
            used += message.tokens
            picked.append(message)
        if len(page) < size:
            break
        before = page[-1].seq
        size *= PAGE_GROWTH
    return _from_user_turn(picked)


def _from_user_turn(newest_first: list[StoredMessage]) -> tuple[list[Turn], int]:
    """Oldest-first turns, dropping a leading assistant turn whose question was cut off."""
    messages = newest_first[::-1]
    while messages and messages[0].role != "user":
        messages.pop(0)
    # Count only what is sent: a dropped answer is not part of the prompt.
    return [Turn(m.role, m.content) for m in messages], sum(m.tokens for m in messages)
