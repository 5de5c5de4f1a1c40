"""Splitting long answers into platform-sized messages without breaking code blocks."""

from __future__ import annotations

FENCE = "```"
CLOSE_FENCE = "\n```"
# A fence line longer than this (a runaway info string) is reopened as a bare fence.
MAX_FENCE_LINE = 40
# Below this a cut (at least half the budget) might not outgrow a reopened fence line.
MIN_LIMIT = 200


def open_fence(text: str) -> str | None:
    """The opening line of a code block left open at the end of `text`, if any."""
    opening: str | None = None
    for line in text.split("\n"):
        if line.lstrip().startswith(FENCE):
            opening = None if opening is not None else line.strip()
    return opening


def _cut_point(text: str, budget: int) -> int:
    """Where to cut `text` so the head fits `budget`: paragraph, line, word, else hard."""
    window = text[:budget]
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at >= budget // 2:
            return at + len(separator)
    return budget


def split_for_limit(text: str, limit: int) -> list[str]:
    """Split `text` into parts of at most `limit` characters; a split code block is closed and reopened."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit {limit} is below the smallest supported ({MIN_LIMIT})")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = _cut_point(rest, limit - len(CLOSE_FENCE))
        head, rest = rest[:cut], rest[cut:]
        fence = open_fence(head)
        if fence is not None:
            head = head.rstrip("\n") + CLOSE_FENCE
            reopen = fence if len(fence) <= MAX_FENCE_LINE else FENCE
            rest = reopen + "\n" + rest
        else:
            rest = rest.lstrip("\n")
        if head.strip():  # platforms refuse blank messages
            parts.append(head.rstrip())
    if rest.strip() or not parts:
        parts.append(rest)
    return parts
