"""Splitting answers to a platform's message limit without breaking code blocks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from bot.text import FENCE, MAX_FENCE_LINE, MIN_LIMIT, open_fence, split_for_limit

# Hypothesis keeps caches in ./.hypothesis by default; keep the working directory clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gptrelay-hypothesis")
PROPERTY = settings(
    database=None, deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)

limits = st.integers(min_value=MIN_LIMIT, max_value=5000)
# Long texts cheaply: random pieces, some repeated many times, with separators and fences mixed in.
pieces = st.one_of(
    st.text(max_size=60),
    st.sampled_from([" ", "\n", "\n\n", "```", "```python\n", "\n```\n", "\t", "  "]),
    st.tuples(st.text(min_size=1, max_size=20), st.integers(1, 200)).map(lambda t: t[0] * t[1]),
)
texts = st.lists(pieces, max_size=20).map("".join)
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.,!?", min_size=1, max_size=30)
separators = st.sampled_from([" ", " ", " ", "\n", "\n\n"])


def squeeze(text: str) -> str:
    """The text without any whitespace."""
    return "".join(text.split())


def code_lines(count: int) -> list[str]:
    """Distinct lines of Python, about 25 characters each."""
    return [f"value_{i} = compute({i})  # c" for i in range(count)]


# -- split_for_limit: simple cases ---------------------------------------------------------------


def test_short_text_unchanged() -> None:
    text = "Hello, world!\n\nSecond paragraph."
    assert split_for_limit(text, 200) == [text]


def test_text_exactly_at_limit_is_one_part() -> None:
    text = "x" * 250
    assert split_for_limit(text, 250) == [text]
    assert split_for_limit(text + "y", 250) != [text + "y"]


def test_empty_text_is_one_empty_part() -> None:
    assert split_for_limit("", MIN_LIMIT) == [""]


@pytest.mark.parametrize("limit", [0, 1, MIN_LIMIT - 1])
def test_limit_below_minimum_raises(limit: int) -> None:
    with pytest.raises(ValueError, match=str(MIN_LIMIT)):
        split_for_limit("short", limit)


def test_minimum_limit_is_accepted() -> None:
    parts = split_for_limit("word " * 200, MIN_LIMIT)
    assert len(parts) > 1
    assert all(len(part) <= MIN_LIMIT for part in parts)


# -- split_for_limit: properties -----------------------------------------------------------------


@PROPERTY
@given(text=texts, limit=limits)
def test_every_part_fits_the_limit(text: str, limit: int) -> None:
    parts = split_for_limit(text, limit)
    assert parts
    assert all(len(part) <= limit for part in parts)
    if len(text) <= limit:
        assert parts == [text]


@PROPERTY
@given(text=texts, limit=limits)
def test_no_character_lost_without_code_fences(text: str, limit: int) -> None:
    text = text.replace("`", "'")
    assert squeeze("".join(split_for_limit(text, limit))) == squeeze(text)


@PROPERTY
@given(
    chunks=st.lists(st.tuples(words, separators), min_size=1, max_size=600),
    limit=st.integers(min_value=MIN_LIMIT, max_value=1000),
)
def test_joined_parts_reproduce_the_words(chunks: list[tuple[str, str]], limit: int) -> None:
    text = "".join(word + sep for word, sep in chunks)
    parts = split_for_limit(text, limit)
    # Words are short, so every cut falls on whitespace and no word is broken in two.
    assert " ".join(parts).split() == text.split()
    assert all(part == part.rstrip() for part in parts[:-1])


# -- split_for_limit: where it cuts --------------------------------------------------------------


def test_prefers_paragraph_boundaries() -> None:
    first = "First paragraph has several words.\nAnd a second line of it here.\n" * 2
    second = "Second paragraph, also with words.\nAnd another line of text here.\n" * 2
    text = first.rstrip() + "\n\n" + second.rstrip()
    parts = split_for_limit(text, 200)
    assert parts == [first.rstrip(), second.rstrip()]


def test_falls_back_to_lines_then_words() -> None:
    lines = "\n".join(f"line number {i} with some words" for i in range(20))
    for part in split_for_limit(lines, 200)[:-1]:
        assert part.split("\n")[-1].startswith("line number")
        assert part.endswith("words")
    one_line = " ".join(f"word{i}" for i in range(200))
    parts = split_for_limit(one_line, 200)
    assert all(part.split()[-1].startswith("word") for part in parts)
    assert " ".join(parts).split() == one_line.split()


def test_hard_cut_when_no_whitespace() -> None:
    text = "x" * 1000
    parts = split_for_limit(text, 300)
    assert "".join(parts) == text
    assert all(len(part) <= 300 for part in parts)


def test_early_paragraph_break_is_not_used() -> None:
    # The only blank line is in the first tenth of the window: cutting there would waste the message.
    text = "Title\n\n" + " ".join(f"w{i}" for i in range(300))
    first = split_for_limit(text, 200)[0]
    assert first.startswith("Title\n\nw0 w1")
    assert len(first) > 150


# -- split_for_limit: code blocks ----------------------------------------------------------------


def test_split_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = code_lines(40)
    text = "Here is the script:\n\n```python\n" + "\n".join(code) + "\n```\n\nThat is all."
    parts = split_for_limit(text, 300)
    assert len(parts) >= 3
    assert all(len(part) <= 300 for part in parts)
    for part in parts:
        assert open_fence(part) is None, part
    for part in parts[:-1]:
        assert part.endswith("\n" + FENCE)
    inside = parts[1:-1]
    assert inside
    for part in inside:
        assert part.startswith("```python\n")
    assert parts[-1] == "That is all."
    # Every code line survives once, in order, with nothing but fences added.
    body = [line for part in parts for line in part.split("\n") if line.startswith("value_")]
    assert body == code
    assert parts[0].startswith("Here is the script:")
    assert parts[-1].endswith("That is all.")


def test_split_after_code_block_closes_adds_no_fence() -> None:
    code = "```js\nconsole.log(1)\n```"
    text = code + "\n\n" + " ".join(f"plain{i}" for i in range(100))
    parts = split_for_limit(text, 200)
    assert len(parts) > 1
    assert parts[0].startswith(code)
    assert all(not part.startswith(FENCE) for part in parts[1:])
    assert sum(part.count(FENCE) for part in parts) == 2


def test_indented_fence_reopened_stripped() -> None:
    commands = "\n".join(f"   echo {i} some output" for i in range(30))
    text = "1. Step one:\n\n   ```bash\n" + commands + "\n   ```"
    parts = split_for_limit(text, 200)
    assert len(parts) > 1
    assert all(part.startswith("```bash\n") for part in parts[1:])
    assert all(open_fence(part) is None for part in parts)


def test_runaway_fence_line_reopened_bare() -> None:
    fence = "```" + "x" * (MAX_FENCE_LINE + 10)
    text = fence + "\n" + "\n".join(code_lines(30)) + "\n```"
    parts = split_for_limit(text, 250)
    assert len(parts) > 1
    assert parts[0].startswith(fence)
    for part in parts[1:]:
        assert part.startswith(FENCE + "\n")
        assert len(part) <= 250


def test_fence_line_at_the_maximum_is_kept() -> None:
    fence = "```" + "y" * (MAX_FENCE_LINE - 3)
    text = fence + "\n" + "\n".join(code_lines(30)) + "\n```"
    parts = split_for_limit(text, 250)
    assert all(part.startswith(fence + "\n") for part in parts)


# -- open_fence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("no code here", None),
        ("```", FENCE),
        ("text\n```python\nprint(1)", "```python"),
        ("```python\nprint(1)\n```", None),
        ("```python\nprint(1)\n```\nmore\n```sql\nSELECT 1", "```sql"),
        ("  ```js  \nlet a", "```js"),
        ("use ```x``` inline", None),
        ("```\na\n```\n```\nb\n```", None),
        ("```rust\nfn main() {}\n   ```", None),
        ("``not a fence\ncode", None),
    ],
)
def test_open_fence(text: str, expected: str | None) -> None:
    assert open_fence(text) == expected
