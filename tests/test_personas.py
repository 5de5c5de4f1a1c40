"""Personas: named system prompts the operator configures and users pick with /persona."""

from __future__ import annotations

from pathlib import Path

from bot.config import load_settings
from bot.errors import UserError
from bot.texts import render
from tests.chat_helpers import answer_bodies, say, system_of
from tests.conftest import HarnessFactory
from tests.fakes.openai_server import FakeOpenAI

PERSONAS = {"pirate": "You are a pirate.", "Poet": "You answer in verse."}
DEFAULT_SYSTEM = "You are a helpful assistant."


async def test_persona_commands_change_the_system_message(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core(personas=PERSONAS)

    async def system_after(text: str) -> str:
        await say(h.core, text)
        return system_of(answer_bodies(fake_openai)[-1])

    listed, _ = await say(h.core, "/persona")
    assert listed.text.splitlines()[:2] == ["Persona: none", "Available: pirate, poet"]

    chosen, _ = await say(h.core, "/persona pirate")
    assert chosen.text == "Persona set to pirate."
    assert await system_after("ahoy?") == "You are a pirate."
    listed, _ = await say(h.core, "/persona")
    assert listed.text.startswith("Persona: pirate\n")

    await say(h.core, "/system Answer in one word.")
    assert await system_after("why?") == "Answer in one word."
    restored, _ = await say(h.core, "/system default")
    assert restored.text == render("system_default")
    assert await system_after("and now?") == "You are a pirate."

    cleared, _ = await say(h.core, "/persona default")
    assert cleared.text == render("persona_cleared")
    assert await system_after("plain again?") == DEFAULT_SYSTEM

    # Names are compared case-insensitively; another user's conversation keeps its own persona.
    await say(h.core, "/persona POET", user_id="8")
    assert await system_after("roses?") == DEFAULT_SYSTEM
    await say(h.core, "a rhyme?", user_id="8")
    assert system_of(answer_bodies(fake_openai)[-1]) == "You answer in verse."


async def test_unknown_persona_is_refused_clearly(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    h = await make_core(personas=PERSONAS)

    refused, sink = await say(h.core, "/persona ninja")

    assert isinstance(refused.error, UserError)
    assert sink.final_texts == ["There is no persona 'ninja'. Choose one of: pirate, poet"]
    await say(h.core, "still default?")
    assert system_of(answer_bodies(fake_openai)[-1]) == DEFAULT_SYSTEM


async def test_without_personas_the_command_says_so(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    h = await make_core()

    for text in ("/persona", "/persona pirate"):
        reply, _ = await say(h.core, text)
        assert reply.text == render("persona_none")
    assert answer_bodies(fake_openai) == []


def test_personas_table_in_a_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "gptrelay.toml"
    config.write_text(
        '[personas]\npirate = "You are a pirate. Answer like one."\n'
        'Tutor = """You are a patient tutor.\nAsk one question at a time."""\n',
        encoding="utf-8",
    )

    settings = load_settings(config, env_file=None)

    assert settings.personas == {
        "pirate": "You are a pirate. Answer like one.",
        "tutor": "You are a patient tutor.\nAsk one question at a time.",
    }
