"""Assembling the model's context: system prompt plus as many recent turns as fit."""

from __future__ import annotations

from bot.errors import UserError
from bot.model import Turn
from bot.tokens import message_tokens
from storage import Conversation, Store

# Turns fetched per round trip; most answers need only the first page.
HISTORY_PAGE = 64


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
    """The newest stored turns whose tokens fit in `room`, oldest first."""
    picked: list[Turn] = []
    used = 0
    before = conversation.next_seq
    while before > conversation.start_seq:
        page = await store.history(conversation.id, conversation.start_seq, before, HISTORY_PAGE)
        for message in page:
            if used + message.tokens > room:
                return _from_user_turn(picked), used
            used += message.tokens
            picked.append(Turn(message.role, message.content))
        if len(page) < HISTORY_PAGE:
            break
        before = page[-1].seq
    return _from_user_turn(picked), used


def _from_user_turn(newest_first: list[Turn]) -> list[Turn]:
    """Oldest-first turns, dropping a leading assistant turn whose question was cut off."""
    turns = newest_first[::-1]
    while turns and turns[0].role != "user":
        turns.pop(0)
    return turns
