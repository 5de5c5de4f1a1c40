"""Hypothesis strategies shared by the fuzz suites: hostile strings, wrong-typed JSON, mutated payloads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

# Short pieces people (and attackers) really send: scripts, emoji, invisible and control characters.
SPECIAL_PIECES = (
    "",
    " ",
    "\n",
    "\r\n",
    "\t",
    "\x00",
    "\x1b[31m",
    "\x7f",
    "\u200b",  # zero-width space
    "\u200d",  # zero-width joiner
    "\u202e",  # right-to-left override
    "\u2066",  # left-to-right isolate
    "\ufeff",  # byte-order mark
    "\ufffd",
    "مرحبا بالعالم",
    "שלום עולם",
    "👋🏽",
    "🇫🇷",
    "👩\u200d💻",
    "e\u0301",  # combining accent
    "\U0001d518\U0001d52b",  # mathematical fraktur letters
    "@",
    "/",
    "<@",
    "```",
    "{}",
    '"',
    "\\",
    "%s%n",
    "Traceback (most recent call last):",
)
# Any code point but lone surrogates (which no UTF-8 sender can produce).
VALID_CHARS = st.characters(codec="utf-8")
CONTROL_CHARS = st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"], codec="utf-8")
LONE_SURROGATES = st.characters(categories=["Cs"])


def hostile_text(*, extra: tuple[str, ...] = (), max_repeat: int = 3000) -> st.SearchStrategy[str]:
    """Valid Unicode text: empty, tiny, control-heavy, RTL, emoji, or huge (a piece repeated)."""
    piece = st.one_of(
        st.sampled_from(SPECIAL_PIECES + extra),
        st.text(VALID_CHARS, max_size=12),
        st.text(CONTROL_CHARS, min_size=1, max_size=6),
    )
    repeated = st.tuples(piece, st.integers(1, max_repeat)).map(lambda pair: pair[0] * pair[1])
    return st.lists(st.one_of(piece, piece, piece, repeated), max_size=8).map("".join)


def broken_text() -> st.SearchStrategy[str]:
    """Text with lone surrogates in it: what a JSON `\\ud800` escape decodes to."""
    return st.lists(st.one_of(st.text(VALID_CHARS, max_size=4), LONE_SURROGATES), min_size=1, max_size=6).map(
        "".join
    )


# Integers at the edges: negative ids, zero, 32/64-bit limits, beyond what any platform sends.
EDGE_INTS = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([-(2**63), -(2**31), 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**64, 10**30]),
    st.integers(-(2**64), 2**64),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    EDGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    hostile_text(max_repeat=50),
    broken_text(),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
UNKNOWN_KEYS = st.text(st.characters(codec="utf-8"), min_size=1, max_size=16)


def mutate(data: st.DataObject, value: Any, odds: int = 12) -> Any:
    """Recursively drop keys, swap values for random JSON or edge values, and add unknown keys.

    Each key is touched with a chance of about 5 in `odds + 1`; everything else is kept as it was.
    """
    if isinstance(value, dict):
        mutated: dict[str, Any] = {}
        for key, item in value.items():
            action = data.draw(st.integers(0, odds), label=f"action {key}")
            if action == 0:
                continue  # dropped
            if action == 1:
                mutated[key] = data.draw(JSON_VALUES)
            elif action == 2:
                mutated[key] = _same_kind(data, item)
            elif action == 3:
                mutated[key] = data.draw(st.sampled_from([None, [], {}, "", 0, True, [item], {"x": item}]))
            else:
                mutated[key] = mutate(data, item, odds)
            if action == 4:
                mutated[data.draw(UNKNOWN_KEYS)] = data.draw(JSON_VALUES)
        return mutated
    if isinstance(value, list):
        items = [mutate(data, item, odds) for item in value]
        if items and data.draw(st.integers(0, odds)) == 0:
            items.append(data.draw(JSON_VALUES))
        return items
    return value


def _same_kind(data: st.DataObject, value: Any) -> Any:
    """A value of the same JSON type at its edges (a string stays a string, an int an int)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return data.draw(EDGE_INTS)
    if isinstance(value, str):
        return data.draw(hostile_text())
    return data.draw(JSON_VALUES)


@dataclass(frozen=True)
class Body:
    """A request body with a short repr: Hypothesis prints failing examples, some are megabytes."""

    kind: str
    data: bytes

    def __repr__(self) -> str:
        head = self.data[:200]
        return f"Body({self.kind!r}, {len(self.data)} bytes: {head!r}{'...' if len(self.data) > 200 else ''})"


def nested_json(depth: int, opener: str, closer: str, inner: str = "1") -> bytes:
    """`depth` levels of `opener`...`closer` around `inner`."""
    return (opener * depth + inner + closer * depth).encode()
