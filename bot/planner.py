"""Planning what the model sees: a fresh start after idleness, recent turns, summaries."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from bot.commands import system_prompt_of
from bot.config import Settings
from bot.context import ContextPlan, build_context, context_budget
from bot.errors import UserError
from bot.model import GenerationParams, ModelClient, Turn, Usage
from bot.summary import Summarizer
from bot.tokens import message_tokens
from storage import Conversation, Store

logger = logging.getLogger(__name__)

# A summary takes at most 1/4 of the context budget, however large summary_max_tokens is.
SUMMARY_BUDGET_DIVISOR = 4


class ContextPlanner:
    """Decides a conversation's context for one message; summarises what no longer fits."""

    def __init__(self, settings: Settings, store: Store, model: ModelClient) -> None:
        self._settings = settings
        self._store = store
        self._summarizer = Summarizer(settings, store, model)

    async def fresh_if_idle(self, conversation: Conversation) -> Conversation:
        """Start a fresh context when the conversation was idle longer than configured."""
        minutes = self._settings.idle_reset_minutes
        if minutes is None or conversation.next_seq == conversation.start_seq or not conversation.updated_at:
            return conversation
        idle = datetime.now(UTC) - datetime.fromisoformat(conversation.updated_at)
        if idle.total_seconds() < minutes * 60:
            return conversation
        logger.info(
            "conversation %s idle for %.0f min: starting fresh", conversation.id, idle.total_seconds() / 60
        )
        await self._store.reset(conversation.id)
        return replace(conversation, start_seq=conversation.next_seq, summary=None, summary_seq=0)

    async def turns(
        self, conversation: Conversation, prompt: str, params: GenerationParams
    ) -> tuple[list[Turn], int, Usage]:
        """The turns to send and their tokens; overflowing turns are summarised if so configured."""
        system = system_prompt_of(self._settings, conversation)
        budget = context_budget(self._settings.window_for(params.model), params.max_tokens)
        plan = await self._plan(conversation, system, prompt, budget)
        if not plan.left_out or self._settings.context_overflow != "summarize":
            return plan.turns, plan.tokens, Usage(0, 0)
        # The summary may take at most a quarter of the budget, so recent turns keep room.
        cap = min(self._settings.summary_max_tokens, budget // SUMMARY_BUDGET_DIVISOR)
        room = budget - message_tokens(system) - message_tokens(prompt) - cap
        if room <= 0:
            return plan.turns, plan.tokens, Usage(0, 0)
        conversation, cost = await self._summarizer.fold(conversation, room, params.model, cap)
        plan = await self._plan(conversation, system, prompt, budget)
        return plan.turns, plan.tokens, cost

    async def _plan(self, conversation: Conversation, system: str, prompt: str, budget: int) -> ContextPlan:
        """Build the context; if a long prompt leaves no room for the summary, go without it."""
        try:
            return await build_context(self._store, conversation, system, prompt, budget)
        except UserError:
            if conversation.live_summary is None:
                raise
            return await build_context(
                self._store, replace(conversation, summary=None), system, prompt, budget
            )
