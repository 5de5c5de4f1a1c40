"""Summaries instead of forgetting: fold the oldest turns into a stored summary."""

from __future__ import annotations

import logging
from dataclasses import replace

from bot.config import Settings
from bot.context import context_budget, context_start, recent_turns
from bot.errors import ErrorKind, ModelError
from bot.model import GenerationParams, ModelClient, Turn, Usage
from bot.tokens import message_tokens
from storage import Conversation, Store, StoredMessage

logger = logging.getLogger(__name__)

SUMMARY_INSTRUCTIONS = (
    "You keep a running summary of a conversation between a user and an assistant. Given the "
    "summary so far and the next part of the conversation, write the updated summary: the facts, "
    "names, decisions, open questions and the user's preferences needed to continue the "
    "conversation. Be concise; write in the conversation's language; output only the summary."
)
# After a summary, the newest turns kept verbatim fill at most this share of the room, so the
# next several messages fit without summarising again.
KEEP_SHARE = 0.5
# Turns fetched per round trip while collecting what to summarise.
FETCH_PAGE = 256
SUMMARY_TEMPERATURE = 0.2


class Summarizer:
    """Folds a conversation's overflowing turns into its summary, with the model."""

    def __init__(self, settings: Settings, store: Store, model: ModelClient) -> None:
        self._settings = settings
        self._store = store
        self._model = model

    async def fold(
        self, conversation: Conversation, room: int, fallback_model: str, max_tokens: int
    ) -> tuple[Conversation, Usage]:
        """Summarise the turns that no longer fit; return the updated conversation and the cost.

        On a model failure the conversation is returned unchanged: the oldest turns are then
        simply left out, as in "drop" mode, and the next overflow tries again.
        """
        keep = await recent_turns(self._store, conversation, int(room * KEEP_SHARE))
        cut = keep.first_seq
        older = await self._turns_between(conversation, context_start(conversation), cut)
        if not older:
            return conversation, Usage(0, 0, estimated=True)
        params = self._params(fallback_model, max_tokens)
        try:
            summary, usage = await self._summarise(conversation.live_summary, older, params)
        except ModelError as exc:
            logger.warning("summary of conversation %s failed, dropping old turns: %s", conversation.id, exc)
            return conversation, Usage(0, 0, estimated=True)
        await self._store.set_summary(conversation.id, summary, cut)
        logger.info(
            "conversation %s: %d turns folded into a %d-char summary",
            conversation.id,
            len(older),
            len(summary),
        )
        return replace(conversation, summary=summary, summary_seq=cut), usage

    def _params(self, fallback_model: str, max_tokens: int) -> GenerationParams:
        """Generation settings for summaries: the summary model if set, short and sober."""
        return GenerationParams(
            model=self._settings.summary_model or fallback_model,
            max_tokens=max_tokens,
            temperature=SUMMARY_TEMPERATURE,
            stop=None,
            n=1,
        )

    async def _turns_between(self, conversation: Conversation, start: int, cut: int) -> list[StoredMessage]:
        """Usable turns with start <= seq < cut, oldest first."""
        found: list[StoredMessage] = []
        before = cut
        while before > start:
            page = await self._store.history(conversation.id, start, before, FETCH_PAGE)
            found.extend(page)
            if len(page) < FETCH_PAGE:
                break
            before = page[-1].seq
        return found[::-1]

    async def _summarise(
        self, summary: str | None, turns: list[StoredMessage], params: GenerationParams
    ) -> tuple[str, Usage]:
        """Fold the turns into the summary chunk by chunk, each chunk fitting the summary model."""
        window = self._settings.window_for(params.model)
        room = context_budget(window, params.max_tokens) - message_tokens(SUMMARY_INSTRUCTIONS)
        total = Usage(0, 0, estimated=True)
        for chunk in _chunks(turns, room, summary):
            request = [Turn("system", SUMMARY_INSTRUCTIONS), Turn("user", _transcript(summary, chunk))]
            completion = await self._model.complete(request, params)
            text = completion.choices[0].strip()
            usage = completion.usage or Usage(
                sum(message_tokens(t.content) for t in request), message_tokens(text), estimated=True
            )
            total = Usage(
                total.prompt_tokens + usage.prompt_tokens,
                total.completion_tokens + usage.completion_tokens,
                estimated=total.estimated or usage.estimated,
            )
            if text:
                summary = text
        if not summary:
            raise ModelError(ErrorKind.EMPTY, "the summary came back empty")
        return summary, total


def _chunks(turns: list[StoredMessage], room: int, summary: str | None) -> list[list[StoredMessage]]:
    """Consecutive runs of turns that fit `room` next to a summary (a huge turn goes alone, cut)."""
    # The summary grows to at most summary_max_tokens; count what it is now plus a margin.
    reserve = message_tokens(summary or "") * 2
    chunks: list[list[StoredMessage]] = [[]]
    used = reserve
    for turn in turns:
        if chunks[-1] and used + turn.tokens > room:
            chunks.append([])
            used = reserve
        chunks[-1].append(turn)
        used += turn.tokens
    return chunks


def _transcript(summary: str | None, turns: list[StoredMessage]) -> str:
    """The summary so far and the turns to add, as one text for the summary model."""
    lines = [f"Summary so far:\n{summary}" if summary else "Summary so far: (none)", "", "Conversation:"]
    lines += [f"{turn.role}: {turn.content}" for turn in turns]
    return "\n".join(lines)
