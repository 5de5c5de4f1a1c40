"""The newest stored turns of recently active conversations, held in memory to skip a query per answer."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from storage.base import STATUS_OK, NewMessage, StoredMessage, TurnRecord

# Per conversation: twice the context's first history page (bot.context.HISTORY_PAGE), so the
# page an answer reads is nearly always held whole.
TAIL_MESSAGES = 128
# All conversations together, in characters of content: ~10-20 MB; the least recently used go first.
CACHE_CHARS = 8_000_000


@dataclass
class _Tail:
    """Every usable message of a conversation with lo <= seq < hi, oldest first."""

    lo: int
    hi: int
    messages: list[StoredMessage]
    chars: int


class HistoryCache:
    """Conversation tails for one store, the only writer of its database.

    Stored messages never change and seqs only grow, so a tail holding every usable message of a
    seq range stays true. A read is served only inside that range: a turn the cache did not see
    (another writer's) moves the conversation's next_seq past the tail's end, and the read goes to
    the database. Tails are extended only by turns whose seqs the commit confirmed.
    """

    def __init__(self, max_messages: int = TAIL_MESSAGES, max_chars: int = CACHE_CHARS) -> None:
        self._max_messages = max_messages
        self._max_chars = max_chars
        self._tails: OrderedDict[int, _Tail] = OrderedDict()
        self._chars = 0

    def get(
        self, conversation_id: int, start_seq: int, before_seq: int, limit: int
    ) -> list[StoredMessage] | None:
        """What the history query would return (newest first), or None when the tail cannot tell."""
        tail = self._tails.get(conversation_id)
        if tail is None or not tail.lo <= before_seq <= tail.hi:
            return None
        picked: list[StoredMessage] = []
        for message in reversed(tail.messages):
            if message.seq >= before_seq:
                continue
            if message.seq < start_seq or len(picked) == limit:
                break
            picked.append(message)
        if len(picked) < limit and tail.lo > start_seq:
            return None  # older messages may exist that the tail no longer holds
        self._tails.move_to_end(conversation_id)
        return picked

    def fill(
        self, conversation_id: int, start_seq: int, before_seq: int, limit: int, rows: Sequence[StoredMessage]
    ) -> None:
        """Remember a query's answer (newest first) as the conversation's tail, unless an older page."""
        tail = self._tails.get(conversation_id)
        if tail is not None and tail.hi > before_seq:
            return  # a later page of the same read: the newer tail is the useful one
        lo = start_seq if len(rows) < limit else rows[-1].seq
        chars = sum(len(m.content) for m in rows)
        self._put(conversation_id, _Tail(lo, before_seq, list(reversed(rows)), chars))

    def append(self, turns: Sequence[TurnRecord], next_seqs: Mapping[int, int]) -> None:
        """Extend the tails by turns just committed, given each conversation's next_seq after them.

        A tail that did not end where these turns began (another writer came between) is dropped.
        """
        written: dict[int, list[NewMessage]] = {}
        for turn in turns:
            written.setdefault(turn.conversation_id, []).extend(turn.messages)
        for conversation_id, messages in written.items():
            tail = self._tails.pop(conversation_id, None)
            if tail is None:
                continue
            self._chars -= tail.chars
            if tail.hi != next_seqs.get(conversation_id, -1) - len(messages):
                continue
            for new in messages:
                if new.status == STATUS_OK:
                    tail.messages.append(StoredMessage(tail.hi, new.role, new.content, new.tokens))
                    tail.chars += len(new.content)
                tail.hi += 1
            self._put(conversation_id, tail)

    def _drop(self, conversation_id: int) -> None:
        """Remove a conversation's tail, if any, from the cache and its character count."""
        tail = self._tails.pop(conversation_id, None)
        if tail is not None:
            self._chars -= tail.chars

    def _put(self, conversation_id: int, tail: _Tail) -> None:
        """Store a tail trimmed to the per-conversation cap, then evict to the global cap."""
        self._drop(conversation_id)
        if len(tail.messages) > self._max_messages:
            tail.messages = tail.messages[-self._max_messages :]
            tail.lo = tail.messages[0].seq
            tail.chars = sum(len(m.content) for m in tail.messages)
        self._tails[conversation_id] = tail
        self._chars += tail.chars
        while self._chars > self._max_chars and len(self._tails) > 1:
            _, oldest = self._tails.popitem(last=False)
            self._chars -= oldest.chars
