"""Token estimates, good enough to budget a context window without a tokenizer download."""

from __future__ import annotations

# OpenAI's chat format adds a few tokens per message for the role and separators.
MESSAGE_OVERHEAD_TOKENS = 4
# English BPE averages about four characters per token; CJK and emoji are about one each.
ASCII_CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Rough token count of a text, biased slightly high so budgets stay safe."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    other = len(text) - ascii_chars
    return -(-ascii_chars // ASCII_CHARS_PER_TOKEN) + other


def message_tokens(text: str) -> int:
    """Tokens one chat message costs, overhead included."""
    return estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS
