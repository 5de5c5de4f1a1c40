"""The console adapter for real: `chat_loop` on the real core and store, the model client on FakeOpenAI."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

from adapters.console import BOT_LABEL, PROMPT, ConsoleSink, chat_loop
from bot.core import BotCore
from bot.streaming import TYPING_MARKER
from bot.texts import render
from tests.conftest import HarnessFactory
from tests.fakes.openai_server import FakeOpenAI, TextReply
from tests.helpers import bot_env, bot_subprocess, roles_and_contents

SYSTEM = ("system", "You are a helpful assistant.")
CHAT_PATH = "/v1/chat/completions"
SUBPROCESS_TIMEOUT_S = 30.0


class ScriptedInput:
    """A `read_line` that returns the given lines, then raises EOFError; records what was read."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = list(lines)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if len(self.prompts) > len(self._lines):
            raise EOFError
        return self._lines[len(self.prompts) - 1]


async def chat(core: BotCore, lines: Iterable[str], user: str = "alice") -> tuple[str, ScriptedInput]:
    """Run the console loop over scripted lines; return what it printed and the input."""
    read_line = ScriptedInput(lines)
    out = io.StringIO()
    async with asyncio.timeout(10):
        await chat_loop(core, read_line=read_line, out=out, user=user)
    return out.getvalue(), read_line


def chat_bodies(fake: FakeOpenAI) -> list[dict[str, Any]]:
    """Bodies of the chat completion requests the fake received."""
    return [r.body for r in fake.requests if r.path == CHAT_PATH]


# ---------------------------------------------------------------- chat_loop


async def test_answers_are_printed_after_the_bot_label(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    """Each prompt is answered on a `bot> ` line; the loop reads until EOF with the prompt text."""
    harness = await make_core()
    output, read_line = await chat(harness.core, ["hello", "how are you?"])
    assert f"{BOT_LABEL}echo: hello\n" in output
    assert f"{BOT_LABEL}echo: how are you?\n" in output
    assert output.index("echo: hello") < output.index("echo: how are you?")
    assert read_line.prompts == [PROMPT] * 3  # two lines, then the EOF
    assert len(chat_bodies(fake_openai)) == 2


async def test_streamed_answer_appears_once_without_typing_marker(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    """A slowly streamed answer is edited several times, but each character is printed once."""
    chunks = ("Hel", "lo", " wor", "ld, ", "streamed", " here")
    fake_openai.enqueue(TextReply(chunks, chunk_delay_s=0.07))
    harness = await make_core()
    output, _ = await chat(harness.core, ["stream please"])
    answer = "".join(chunks)
    assert f"{BOT_LABEL}{answer}\n" in output
    assert output.count("Hel") == 1
    assert output.count("streamed") == 1
    assert output.count(BOT_LABEL) == 1
    assert TYPING_MARKER.strip() not in output


async def test_help_prints_the_help_text(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    """/help is answered by the core's command, without asking the model."""
    harness = await make_core()
    output, _ = await chat(harness.core, ["/help"])
    assert f"{BOT_LABEL}{render('help')}\n" in output
    assert chat_bodies(fake_openai) == []


async def test_blank_lines_are_skipped(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    """Empty and whitespace-only lines get no answer and no model request."""
    harness = await make_core()
    output, read_line = await chat(harness.core, ["", "   ", "\t", "real question"])
    assert output.count(BOT_LABEL) == 1
    assert f"{BOT_LABEL}echo: real question\n" in output
    assert len(chat_bodies(fake_openai)) == 1
    assert len(read_line.prompts) == 5


async def test_quit_ends_the_loop(make_core: HarnessFactory, fake_openai: FakeOpenAI) -> None:
    """/quit stops reading: the lines after it are neither read nor answered."""
    harness = await make_core()
    output, read_line = await chat(harness.core, ["first", "/quit", "never asked"])
    assert read_line.prompts == [PROMPT, PROMPT]
    assert "echo: first" in output
    assert "never asked" not in output
    assert [roles_and_contents(b)[-1] for b in chat_bodies(fake_openai)] == [("user", "first")]


async def test_second_prompt_carries_the_first_turn(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    """The console keeps the conversation's context between prompts."""
    harness = await make_core()
    await chat(harness.core, ["my name is Alice", "what is my name?"])
    assert roles_and_contents(fake_openai.last_body) == [
        SYSTEM,
        ("user", "my name is Alice"),
        ("assistant", "echo: my name is Alice"),
        ("user", "what is my name?"),
    ]


async def test_conversation_is_stored_under_console_and_continues(
    make_core: HarnessFactory, fake_openai: FakeOpenAI
) -> None:
    """A new core on the same database continues alice's console conversation, and only hers."""
    first = await make_core()
    await chat(first.core, ["remember the number 42"])
    await first.close()

    second = await make_core()
    await chat(second.core, ["which number?"])
    assert roles_and_contents(fake_openai.last_body) == [
        SYSTEM,
        ("user", "remember the number 42"),
        ("assistant", "echo: remember the number 42"),
        ("user", "which number?"),
    ]
    await chat(second.core, ["hi"], user="bob")
    assert roles_and_contents(fake_openai.last_body) == [SYSTEM, ("user", "hi")]
    await second.close()

    with closing(sqlite3.connect(second.settings.db_path)) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM conversations")}
        inbox = db.execute("SELECT platform, chat_id, status FROM inbox ORDER BY id").fetchall()
    assert keys == {"console:chat:alice", "console:chat:bob"}
    assert inbox == [
        ("console", "alice", "answered"),
        ("console", "alice", "answered"),
        ("console", "bob", "answered"),
    ]


# ---------------------------------------------------------------- ConsoleSink


async def test_sink_prints_only_the_new_suffix_of_each_edit() -> None:
    """Edits that extend the text append just what is new; the typing marker is never printed."""
    out = io.StringIO()
    sink = ConsoleSink(out)
    message_id = await sink.send("Hel" + TYPING_MARKER)
    assert out.getvalue() == f"{BOT_LABEL}Hel"
    await sink.edit(message_id, "Hello wor" + TYPING_MARKER)
    assert out.getvalue() == f"{BOT_LABEL}Hello wor"
    await sink.edit(message_id, "Hello world")
    assert out.getvalue() == f"{BOT_LABEL}Hello world"


async def test_sink_prints_a_rollover_on_a_new_line() -> None:
    """An edit that does not extend what was shown is printed whole on a new `bot> ` line."""
    out = io.StringIO()
    sink = ConsoleSink(out)
    first = await sink.send("one two three")
    await sink.edit(first, "one two")
    assert out.getvalue() == f"{BOT_LABEL}one two three\n{BOT_LABEL}one two"
    second = await sink.send("four")
    assert second != first
    assert out.getvalue() == f"{BOT_LABEL}one two three\n{BOT_LABEL}one two\n{BOT_LABEL}four"


# ---------------------------------------------------------------- the real process


async def test_chat_command_in_a_subprocess(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """`python -m bot chat --user bob` answers stdin line by line and exits 0 at EOF."""
    env = bot_env(fake_openai.base_url, tmp_path)
    async with bot_subprocess(
        "chat",
        "--user",
        "bob",
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    ) as process:
        async with asyncio.timeout(SUBPROCESS_TIMEOUT_S):
            stdout_bytes, stderr_bytes = await process.communicate(b"hello\n/usage\n")
    stdout, stderr = stdout_bytes.decode(), stderr_bytes.decode()
    assert process.returncode == 0, stderr
    assert f"{BOT_LABEL}echo: hello" in stdout
    assert "Today:" in stdout
    assert "in 1 request\n" in stdout
    assert "Traceback" not in stderr
    assert " INFO " not in stderr  # INFO logs would interleave with the conversation
    assert roles_and_contents(fake_openai.last_body)[-1] == ("user", "hello")
    with closing(sqlite3.connect(tmp_path / "data" / "gptrelay.sqlite3")) as db:
        keys = [row[0] for row in db.execute("SELECT key FROM conversations")]
    assert keys == ["console:chat:bob"]
