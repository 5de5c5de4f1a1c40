"""render() and plain(): Markdown as Telegram text + entities, within Telegram's limit."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest
import telegramify_markdown
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from adapters.telegram_format import TELEGRAM_MAX_UTF16, Chunk, plain, render, utf16_len
from tests.fakes.telegram_server import ApiError, checked_entities

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "gptrelay-hypothesis")
PROPERTY = settings(
    database=None, deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow]
)

MARKDOWN_SAMPLES = [
    "Hello, world.",
    "# Title\n\nSome **bold**, *italic*, ~~struck~~ and `inline code`.",
    "A [link](https://example.com/a_b?c=d) and an autolink https://example.org.",
    "```python\ndef f(x):\n    return x * 2\n```",
    "```\nno language\n```\n\nafter the block",
    "> a quote\n> on two lines\n\nthen text",
    "- one\n- two\n  - nested **bold**\n1. first\n2. second",
    "👋🏽🇫🇷 emoji first, then **bold after astral** and `code 🤔` and [link 👩‍💻](https://example.com)",
    "مرحبا **بالعالم** and שלום *עולם*",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "Unclosed **bold and `code",
    "```python\nunclosed fence\nprint('x')",
    "Special chars: _ * [ ] ( ) ~ ` > # + - = | { } . ! \\",
    "$x^2$ and \\(inline\\) maths",
    "Line one  \nline two\n\n\n\nfar below",
]


def as_dicts(chunk: Chunk) -> list[dict[str, Any]]:
    """A chunk's entities as the Bot API sends them."""
    return [entity.to_dict() for entity in chunk[1]]


def squeeze(text: str) -> str:
    """The text without any whitespace."""
    return "".join(text.split())


def entity_text(text: str, entity: dict[str, Any]) -> str:
    """The text an entity covers (UTF-16 offsets)."""
    units = text.encode("utf-16-le")
    return units[entity["offset"] * 2 : (entity["offset"] + entity["length"]) * 2].decode("utf-16-le")


def assert_telegram_accepts(chunks: list[Chunk]) -> None:
    """What FakeTelegram (like Telegram) checks: non-empty text, the limit, entities inside the text."""
    assert chunks
    for chunk in chunks:
        text, entities = chunk
        assert text.strip()
        assert utf16_len(text) <= TELEGRAM_MAX_UTF16
        try:
            accepted = checked_entities(as_dicts(chunk), text)
        except ApiError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"Telegram would refuse {entities!r} in {text!r}: {exc.description}")
        assert len(accepted) == len([e for e in entities if e.length > 0])


@pytest.mark.parametrize("markdown", MARKDOWN_SAMPLES)
def test_render_gives_entities_telegram_accepts(markdown: str) -> None:
    chunks = render(markdown)
    assert_telegram_accepts(chunks)
    assert len(chunks) == 1


def test_render_formats_instead_of_showing_markup() -> None:
    (text, entities), *_ = render("Some **bold** and `code`.\n\n```python\nprint(1)\n```")
    assert "**" not in text
    assert "```" not in text
    found = {(e.type, entity_text(text, e.to_dict())) for e in entities}
    assert {("bold", "bold"), ("code", "code")} <= found
    pre = [e for e in entities if e.type == "pre"]
    assert [(entity_text(text, pre[0].to_dict()).strip(), pre[0].language)] == [("print(1)", "python")]


def test_entities_after_astral_characters_use_utf16_offsets() -> None:
    (text, entities), *_ = render("🇫🇷👋🏽 then **bold** here")
    bold = [e for e in entities if e.type == "bold"]
    assert len(bold) == 1
    assert bold[0].offset == text.index("bold") + 4  # four astral characters before it: 4 more units
    assert entity_text(text, bold[0].to_dict()) == "bold"


def long_markdown() -> tuple[str, list[str]]:
    """Over 9,000 characters of Markdown with a Python block per section; and all its lines of code."""
    sections, code = [], []
    for i in range(14):
        lines = [f"result_{i}_{k} = transform(data, factor={k}, step={i})" for k in range(8)]
        code += lines
        words = " ".join(f"w{i}x{j}" for j in range(60))
        block = "\n".join(lines)
        sections.append(f"## Part {i}\n\n{words} **b{i}** `c{i}`.\n\n```python\n{block}\n```\n")
    return "\n".join(sections), code


def test_a_long_answer_splits_within_the_limit_and_keeps_everything() -> None:
    markdown, code = long_markdown()
    assert len(markdown) >= 9000
    chunks = render(markdown)
    assert len(chunks) >= 3
    assert_telegram_accepts(chunks)
    single_shot, _ = telegramify_markdown.convert(markdown)
    assert utf16_len(single_shot) > TELEGRAM_MAX_UTF16
    assert squeeze("".join(text for text, _ in chunks)) == squeeze(single_shot)
    # Code blocks stay code blocks, with their language, in whichever chunk they land.
    pre_texts = []
    for chunk in chunks:
        pre = [e for e in as_dicts(chunk) if e["type"] == "pre"]
        assert all(e.get("language") == "python" for e in pre)
        pre_texts += [entity_text(chunk[0], e) for e in pre]
    assert all(any(line in pre_text for pre_text in pre_texts) for line in code)


def test_plain_never_cuts_a_surrogate_pair() -> None:
    text = "a" + "😀" * 5000 + " tail"  # an odd offset, so the limit falls inside a pair
    chunks = plain(text)
    assert [utf16_len(t) for t, _ in chunks] == [4095, 4096, 1815]
    assert "".join(t for t, _ in chunks) == text
    for chunk_text, entities in chunks:
        assert entities == ()
        # A whole-chunk entity must end on a character boundary.
        checked_entities([{"type": "bold", "offset": 0, "length": utf16_len(chunk_text)}], chunk_text)


@PROPERTY
@given(
    st.lists(
        st.sampled_from(["😀", "👩‍💻", "🇫🇷", "a", "é", " ", "\n", "中", "𝄞", "word "]),
        min_size=1,
        max_size=60,
    ).flatmap(lambda pieces: st.integers(1, 200).map(lambda n: "".join(pieces) * n))
)
def test_plain_chunks_are_whole_characters_within_the_limit(text: str) -> None:
    chunks = plain(text)
    assert all(utf16_len(t) <= TELEGRAM_MAX_UTF16 for t, _ in chunks)
    assert all(t.encode("utf-16-le").decode("utf-16-le") == t for t, _ in chunks)
    if text.strip():
        assert all(t.strip() for t, _ in chunks)
        assert squeeze("".join(t for t, _ in chunks)) == squeeze(text)


def test_render_falls_back_to_plain_text_when_conversion_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(markdown: str, **kwargs: Any) -> tuple[str, list[Any]]:
        raise RuntimeError("converter bug")

    monkeypatch.setattr(telegramify_markdown, "convert", broken)
    assert render("Some **bold** text") == [("Some **bold** text", ())]
    long = render("x" * 5000)
    assert [utf16_len(t) for t, _ in long] == [4096, 904]
    assert all(entities == () for _, entities in long)
    assert any(r.levelno == logging.WARNING and "plain text" in r.getMessage() for r in caplog.records)


def test_render_falls_back_when_conversion_produces_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telegramify_markdown, "convert", lambda markdown, **kwargs: ("  \n", []))
    assert render("[](https://example.com)") == [("[](https://example.com)", ())]


def test_render_honours_a_smaller_limit() -> None:
    chunks = render("😀" * 2100, TELEGRAM_MAX_UTF16 - 2)
    assert [utf16_len(t) for t, _ in chunks] == [4094, 106]
