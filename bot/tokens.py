"""Token estimates, good enough to budget a context window without a tokenizer download."""

from __future__ import annotations

import string

# OpenAI's chat format adds a few tokens per message for the role and separators.
MESSAGE_OVERHEAD_TOKENS = 4
# BPE vocabularies cover English words at about four letters a token; less common words
# (German, identifiers) split more, so assume a little less to stay on the safe side.
LETTERS_PER_TOKEN = 3.2
# Small models' vocabularies split CJK characters and emoji into byte pieces.
NON_ASCII_BYTES_PER_TOKEN = 1.5
_LETTERS = string.ascii_letters.encode("ascii")
_SPACE = string.whitespace.encode("ascii")


def estimate_tokens(text: str) -> int:
    """Rough token count of a text, biased high so budgets stay safe.

    Letters are grouped into words; digits, punctuation (code, JSON) and non-ASCII characters
    (CJK, emoji, accents) cost about a token each in small models' vocabularies.
    """
    ascii_bytes = text.encode("ascii", "ignore")
    non_ascii_bytes = len(text.encode("utf-8", "surrogatepass")) - len(ascii_bytes)
    without_letters = ascii_bytes.translate(None, _LETTERS)
    letters = len(ascii_bytes) - len(without_letters)
    symbols = len(without_letters.translate(None, _SPACE))  # digits and punctuation
    words = int(-(-letters // LETTERS_PER_TOKEN))
    return words + symbols + int(-(-non_ascii_bytes // NON_ASCII_BYTES_PER_TOKEN))


def message_tokens(text: str) -> int:
    """Tokens one chat message costs, overhead included."""
    return estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS
