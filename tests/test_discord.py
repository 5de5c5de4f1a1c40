"""End to end: the real DiscordAdapter (discord.py) on FakeDiscord, the real core, store and model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from adapters import discord_pacing
from adapters.discord import DiscordAdapter
from adapters.discord_pacing import WINDOW_S, WRITES_PER_WINDOW
from adapters.discord_sink import DISCORD_MAX_MESSAGE_LEN, ChannelSink, InteractionSink
from bot.app import Runtime, open_runtime
from bot.config import Settings
from bot.streaming import TYPING_MARKER
from bot.text import CLOSE_FENCE, open_fence
from bot.texts import render
from tests.conftest import TEARDOWN_CLOSE_S, SettingsFactory
from tests.fakes.discord_server import (
    ALICE_DM_ID,
    ALICE_ID,
    BOB_ID,
    BOT_ID,
    CAROL_ID,
    GENERAL_ID,
    GUILD_ID,
    RANDOM_ID,
    THREAD_ID,
    Call,
    FakeDiscord,
)
from tests.fakes.openai_server import FakeOpenAI, HangReply, TextReply
from tests.helpers import roles_and_contents

CLIENT_OPTIONS: dict[str, Any] = {"guild_ready_timeout": 0.05}
# Pacing for tests that are not about pacing (on a fake without rate limits).
FAST_WINDOW_S = 0.2
FAST_INTERVAL_S = 0.05
# Every wait for the bot is bounded by this.
WAIT_S = 10.0
POLL_S = 0.02
SYSTEM = ("system", "You are a helpful assistant.")
WRITE_PATH = r"^/channels/(\d+)/messages(/\d+)?$"


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def fast_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short gate window and edit interval (the sinks keep their own copy of the interval)."""
    monkeypatch.setattr(discord_pacing, "WINDOW_S", FAST_WINDOW_S)
    monkeypatch.setattr(ChannelSink, "edit_interval_s", FAST_INTERVAL_S)
    monkeypatch.setattr(InteractionSink, "edit_interval_s", FAST_INTERVAL_S)


@pytest.fixture
async def dc(fast_pacing: None) -> AsyncIterator[FakeDiscord]:
    """A fake Discord without rate limits (the bot is paced faster than Discord allows)."""
    async with FakeDiscord(rate_limits=None) as server:
        yield server


@pytest.fixture
def dc_settings(make_settings: SettingsFactory, dc: FakeDiscord) -> SettingsFactory:
    """Settings for a bot on `dc` (plus overrides)."""
    return lambda **overrides: discord_settings(make_settings, dc, **overrides)


def discord_settings(make_settings: SettingsFactory, server: FakeDiscord, **overrides: Any) -> Settings:
    """Settings of a Discord-only bot on `server` and the fake model, data in tmp_path."""
    values: dict[str, Any] = {
        "discord_bot_token": server.token,
        "discord_command_guild_ids": [GUILD_ID],
        "http_enabled": False,
        "shutdown_timeout_s": TEARDOWN_CLOSE_S,
        **overrides,
    }
    return make_settings(**values)


@dataclass
class RunningBot:
    """A started adapter on an open runtime."""

    runtime: Runtime
    adapter: DiscordAdapter


@asynccontextmanager
async def running_bot(
    settings: Settings, server: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RunningBot]:
    """Open the runtime, start the adapter on `server`; at exit stop as `gptrelay run` does (core first)."""
    server.patch_discord(monkeypatch)
    async with open_runtime(settings) as runtime:
        adapter = DiscordAdapter(runtime.core, settings, client_options=CLIENT_OPTIONS)
        await adapter.start()
        try:
            yield RunningBot(runtime, adapter)
        finally:
            await runtime.core.close(TEARDOWN_CLOSE_S)
            await adapter.stop()


async def until(predicate: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def settled(server: FakeDiscord, channel_id: int) -> list[str]:
    """The bot's texts in a channel, or nothing while one of them is still being written."""
    texts = server.texts(channel_id)
    return [] if any(text.endswith(TYPING_MARKER) for text in texts) else texts


async def answered(server: FakeDiscord, channel_id: int, texts: list[str], what: str = "the answer") -> None:
    """Wait until the bot's messages in a channel are exactly `texts`, finished."""
    await until(lambda: settled(server, channel_id) == texts, f"{what} in channel {channel_id}")


def model_requests(fake_openai: FakeOpenAI) -> list[list[tuple[str, str]]]:
    """The messages of every chat completion request, as (role, content) pairs."""
    return [roles_and_contents(r.body) for r in fake_openai.requests if r.path.endswith("/chat/completions")]


def writes(server: FakeDiscord, channel_id: int) -> list[Call]:
    """Every message create or edit in one channel, in order."""
    return [
        c
        for c in server.calls_to(WRITE_PATH)
        if c.method in ("POST", "PATCH") and c.path.split("/")[2] == str(channel_id)
    ]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Records at ERROR or above."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def squeeze(text: str) -> str:
    """The text without any whitespace."""
    return "".join(text.split())


def words(stem: str, count: int) -> tuple[str, ...]:
    """Stream chunks "stem0", " stem1", ... (no trailing space, so the final text is exactly their sum)."""
    return tuple(f"{' ' if i else ''}{stem}{i}" for i in range(count))


def rejoin(parts: list[str]) -> str:
    """Undo split_for_limit: drop the fence closing a part and the one reopening the next."""
    joined = ""
    reopen = False
    for part in parts:
        if reopen:
            first_line, _, part = part.partition("\n")
            assert first_line.startswith("```"), f"split code block not reopened: {part[:80]!r}"
        reopen = part.endswith(CLOSE_FENCE) and open_fence(part[: -len(CLOSE_FENCE)]) is not None
        joined += part[: -len(CLOSE_FENCE)] if reopen else part
        joined += "\n"
    return joined


# ---------------------------------------------------------------- mentions, DMs, replies


async def test_mention_is_answered_as_a_reply_with_the_mention_stripped(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        question = await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "capital?"))
        await answered(dc, GENERAL_ID, ["echo: capital?"])
    assert model_requests(fake_openai) == [[SYSTEM, ("user", "capital?")]]
    [answer] = dc.messages(GENERAL_ID)
    assert answer["type"] == 19
    assert answer["message_reference"]["message_id"] == question["id"]
    assert answer["mentions"] == []  # the reply does not ping Alice
    assert all(c.status < 400 for c in dc.calls)


async def test_message_without_mention_gets_nothing(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dc_settings(discord_message_content=True)  # the bot sees the text and still keeps quiet
    async with running_bot(settings, dc, monkeypatch):
        await dc.dispatch(
            "MESSAGE_CREATE", dc.guild_message(GENERAL_ID, BOB_ID, "lunch at 12?", mentions_bot=False)
        )
        # Messages are handled in order: once a later mention is answered, the first was passed over.
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(RANDOM_ID, ALICE_ID, "sentinel"))
        await answered(dc, RANDOM_ID, ["echo: sentinel"])
    assert dc.texts(GENERAL_ID) == []
    assert writes(dc, GENERAL_ID) == []
    assert model_requests(fake_openai) == [[SYSTEM, ("user", "sentinel")]]


async def test_dm_is_answered(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.dm_message(ALICE_ID, "a haiku please"))
        await answered(dc, ALICE_DM_ID, ["echo: a haiku please"])
        # A DM channel the bot has never seen (not in READY) works the same.
        carol = await dc.dispatch("MESSAGE_CREATE", dc.dm_message(CAROL_ID, "and a limerick"))
        await answered(dc, int(carol["channel_id"]), ["echo: and a limerick"])
    assert model_requests(fake_openai) == [
        [SYSTEM, ("user", "a haiku please")],
        [SYSTEM, ("user", "and a limerick")],
    ]


async def test_reply_to_the_bot_continues_the_conversation(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "capital of Australia?"))
        await answered(dc, GENERAL_ID, ["echo: capital of Australia?"])
        [first] = dc.messages(GENERAL_ID)
        follow_up = dc.guild_message(
            GENERAL_ID, ALICE_ID, "and New Zealand?", mentions_bot=False, reply_to=int(first["id"])
        )
        await dc.dispatch("MESSAGE_CREATE", follow_up)
        await answered(dc, GENERAL_ID, ["echo: capital of Australia?", "echo: and New Zealand?"])
    assert model_requests(fake_openai)[-1] == [
        SYSTEM,
        ("user", "capital of Australia?"),
        ("assistant", "echo: capital of Australia?"),
        ("user", "and New Zealand?"),  # the bot's own message is context already, not a quote
    ]
    assert dc.messages(GENERAL_ID)[-1]["message_reference"]["message_id"] == follow_up["id"]


async def test_question_deleted_before_the_answer_still_gets_it(
    dc: FakeDiscord,
    dc_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_openai.enqueue(HangReply(0.5, TextReply(("still here",))))
    async with running_bot(dc_settings(), dc, monkeypatch):
        question = await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "quick!"))
        await until(lambda: fake_openai.requests, "the model request")
        deleted = {"id": question["id"], "channel_id": str(GENERAL_ID), "guild_id": str(GUILD_ID)}
        await dc.dispatch("MESSAGE_DELETE", deleted)
        await answered(dc, GENERAL_ID, ["still here"])
    [answer] = dc.messages(GENERAL_ID)
    assert "message_reference" not in answer  # Discord sent it as a plain message
    assert all(c.status == 200 for c in writes(dc, GENERAL_ID))
    assert not errors_logged(caplog)


async def test_reply_to_another_user_quotes_their_message(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch_file("guild_reply_to_other_user_with_mention")
        await until(lambda: settled(dc, GENERAL_ID), "the answer")
    [[_, (role, prompt)]] = model_requests(fake_openai)
    assert role == "user"
    assert prompt == '(In reply to: "I read that goldfish only have a 3-second memory")\n\nis this true?'


async def test_two_users_in_one_channel_have_separate_contexts(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "I am Alice"))
        await answered(dc, GENERAL_ID, ["echo: I am Alice"])
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, BOB_ID, "who am I?"))
        await answered(dc, GENERAL_ID, ["echo: I am Alice", "echo: who am I?"])
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "and me?"))
        await answered(dc, GENERAL_ID, ["echo: I am Alice", "echo: who am I?", "echo: and me?"])
    alice_1, bob, alice_2 = model_requests(fake_openai)
    assert bob == [SYSTEM, ("user", "who am I?")]
    assert alice_2 == [*alice_1, ("assistant", "echo: I am Alice"), ("user", "and me?")]


async def test_threads_have_their_own_context(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "in the channel"))
        await answered(dc, GENERAL_ID, ["echo: in the channel"])
        asked = await dc.dispatch("MESSAGE_CREATE", dc.guild_message(THREAD_ID, ALICE_ID, "in the thread"))
        await answered(dc, THREAD_ID, ["echo: in the thread"])
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(THREAD_ID, ALICE_ID, "thread again"))
        await answered(dc, THREAD_ID, ["echo: in the thread", "echo: thread again"])
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "channel again"))
        await answered(dc, GENERAL_ID, ["echo: in the channel", "echo: channel again"])
    _, thread_1, thread_2, channel_2 = model_requests(fake_openai)
    assert thread_1 == [SYSTEM, ("user", "in the thread")]
    assert thread_2 == [*thread_1, ("assistant", "echo: in the thread"), ("user", "thread again")]
    assert channel_2 == [
        SYSTEM,
        ("user", "in the channel"),
        ("assistant", "echo: in the channel"),
        ("user", "channel again"),
    ]
    assert dc.messages(THREAD_ID)[0]["message_reference"]["message_id"] == asked["id"]


async def test_context_survives_a_restart(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dc_settings()
    async with running_bot(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "my name is Alice"))
        await answered(dc, GENERAL_ID, ["echo: my name is Alice"])
    async with running_bot(settings, dc, monkeypatch) as bot:
        assert bot.adapter.client.is_ready()
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "what is my name?"))
        await answered(dc, GENERAL_ID, ["echo: my name is Alice", "echo: what is my name?"])
    assert dc.identify_count == 2
    assert model_requests(fake_openai)[-1] == [
        SYSTEM,
        ("user", "my name is Alice"),
        ("assistant", "echo: my name is Alice"),
        ("user", "what is my name?"),
    ]


async def test_message_cut_off_by_a_stop_is_answered_after_the_restart(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dc_settings()
    fake_openai.enqueue(HangReply(30))  # longer than the shutdown allows: cancelled, kept pending
    async with running_bot(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "are you there?"))
        await until(lambda: len(model_requests(fake_openai)) == 1, "the model is asked")
    assert settled(dc, GENERAL_ID) == []

    async with running_bot(settings, dc, monkeypatch):
        await answered(dc, GENERAL_ID, ["echo: are you there?"], "the replayed answer")
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "good"))
        await answered(dc, GENERAL_ID, ["echo: are you there?", "echo: good"])
    assert model_requests(fake_openai)[-1][-3:] == [
        ("user", "are you there?"),
        ("assistant", "echo: are you there?"),
        ("user", "good"),
    ]


async def test_a_worker_runs_only_its_shard_range(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dc_settings(discord_shard_ids=[1], discord_shard_count=2)
    async with running_bot(settings, dc, monkeypatch) as bot:
        assert isinstance(bot.adapter.client, discord.AutoShardedClient)
        assert dc.identify_payload is not None
        assert dc.identify_payload["shard"] == [1, 2]  # this worker's shard, of two
        assert dc.identify_count == 1
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "hello shard"))
        await answered(dc, GENERAL_ID, ["echo: hello shard"])


def test_shard_ids_need_a_count_that_covers_them(dc_settings: SettingsFactory) -> None:
    assert any(
        "SHARD_COUNT" in p for p in dc_settings(discord_shard_ids=[2], discord_shard_count=2).problems()
    )
    assert any("SHARD_COUNT" in p for p in dc_settings(discord_shard_ids=[0]).problems())
    assert not any(
        "SHARD" in p for p in dc_settings(discord_shard_ids=[0, 1], discord_shard_count=4).problems()
    )


# ---------------------------------------------------------------- long answers, 429s, pacing


def long_answer() -> str:
    """About 9,000 characters of prose and code, with code blocks longer than one message."""
    prose = " ".join(f"Sentence {i} explains one more detail of the design." for i in range(40))
    python = "\n".join(
        f"    total_{i:03d} = compute(value_{i:03d}, factor={i})  # step {i}" for i in range(50)
    )
    shell = "\n".join(f"echo 'deploying shard {i:02d} of the cluster' && sleep {i % 3}" for i in range(45))
    return (
        f"{prose}\n\n```python\ndef main() -> None:\n{python}\n```\n\n{prose}\n\n"
        f"```bash\n{shell}\n```\n\nThat is all."
    )


async def test_long_answer_with_code_blocks_arrives_whole(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = long_answer()
    assert len(answer) >= 9000
    chunks = tuple(answer[i : i + 300] for i in range(0, len(answer), 300))
    fake_openai.enqueue(TextReply(chunks, chunk_delay_s=0.01))
    async with running_bot(dc_settings(), dc, monkeypatch):
        question = await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "show me"))
        await until(
            lambda: squeeze(rejoin(settled(dc, GENERAL_ID))) == squeeze(answer), "the whole answer", 20.0
        )
    parts = dc.texts(GENERAL_ID)
    assert len(parts) >= 5
    assert all(len(part) <= DISCORD_MAX_MESSAGE_LEN for part in parts)
    assert all(open_fence(part) is None for part in parts), "a message leaves a code block open"
    reopened = [
        i for i in range(1, len(parts)) if parts[i - 1].endswith(CLOSE_FENCE) and parts[i][:3] == "```"
    ]
    assert reopened, "no code block was split"
    assert {parts[i].partition("\n")[0] for i in reopened} <= {"```python", "```bash"}
    assert [c.status for c in writes(dc, GENERAL_ID)] == [200] * len(writes(dc, GENERAL_ID))
    assert not [c for c in dc.calls if c.status == 400]  # no 50035 "Must be 2000 or fewer in length"
    messages = dc.messages(GENERAL_ID)
    assert messages[0]["message_reference"]["message_id"] == question["id"]
    assert all("message_reference" not in m for m in messages[1:])


async def test_429_during_streaming_delays_the_edits(
    dc: FakeDiscord,
    dc_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retry_after = 0.5
    reply = TextReply(words("word", 20), chunk_delay_s=0.05)
    fake_openai.enqueue(reply)
    dc.fail_next("PATCH", rf"^/channels/{GENERAL_ID}/messages/\d+$", 429, retry_after=retry_after)
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "count"))
        await answered(dc, GENERAL_ID, [reply.text])
    calls = writes(dc, GENERAL_ID)
    [limited] = [c for c in calls if c.status == 429]
    after = calls[calls.index(limited) + 1 :]
    assert after, "the refused edit was not retried"
    # discord.py waited retry_after before writing again, and the stream kept going meanwhile.
    assert min(c.at for c in after) - limited.at >= retry_after - 0.05
    assert all(c.status == 200 for c in after)
    assert dc.rate_limit_errors == 1
    assert not errors_logged(caplog)


def assert_paced(calls: list[Call], tolerance_s: float = 0.1) -> None:
    """At most WRITES_PER_WINDOW of `calls` in any WINDOW_S (arrival times jitter by `tolerance_s`)."""
    times = sorted(c.at for c in calls)
    for first, last in zip(times, times[WRITES_PER_WINDOW:], strict=False):
        assert last - first >= WINDOW_S - tolerance_s, times


async def test_streaming_into_several_channels_at_real_pacing(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real pacing and the fake's default limits (5 writes per 5 s per channel, 50 requests/s).
    # A 4.6 s stream of ~2,600 characters: the first message, edits every 1.25 s, a rollover to a
    # second message (two writes at once) and a final edit: more writes than one window allows.
    lines = tuple(" ".join([f"token{i:02d}"] * 12) + "\n" for i in range(23))
    reply = TextReply(lines, chunk_delay_s=0.2)
    channels = (GENERAL_ID, RANDOM_ID, THREAD_ID, ALICE_DM_ID)
    fake_openai.enqueue(*[reply] * len(channels))
    async with FakeDiscord() as server:
        settings = discord_settings(make_settings, server)
        async with running_bot(settings, server, monkeypatch):
            for channel_id in channels:
                if channel_id == ALICE_DM_ID:
                    data = server.dm_message(ALICE_ID, f"stream into {channel_id}")
                else:
                    data = server.guild_message(channel_id, ALICE_ID, f"stream into {channel_id}")
                await server.dispatch("MESSAGE_CREATE", data)
            for channel_id in channels:
                await until(
                    lambda channel_id=channel_id: (
                        squeeze("".join(settled(server, channel_id))) == squeeze(reply.text)
                    ),
                    f"the streamed answer in channel {channel_id}",
                )
        assert server.rate_limit_errors == 0
        for channel_id in channels:
            assert len(server.texts(channel_id)) == 2
            channel_writes = writes(server, channel_id)
            assert len(channel_writes) > WRITES_PER_WINDOW  # the gate had to hold at least one
            assert all(c.status == 200 for c in channel_writes)
            assert_paced(channel_writes)


# ---------------------------------------------------------------- slash commands


async def test_slash_ask_is_deferred_then_answered_through_the_interaction(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        names = {command["name"] for command in dc.commands(GUILD_ID)}
        assert names == {"ask", "reset", "model", "system", "usage"}
        started = time.monotonic()
        interaction = await dc.dispatch("INTERACTION_CREATE", dc.interaction_ask("vector databases?"))
        token = interaction["token"]
        await until(
            lambda: [m["content"] for m in dc.interaction_messages(token)] == ["echo: vector databases?"],
            "the answer in the original response",
        )
        dm = await dc.dispatch("INTERACTION_CREATE", dc.interaction_ask("in private?", guild=False))
        await until(
            lambda: [m["content"] for m in dc.interaction_messages(dm["token"])] == ["echo: in private?"],
            "the DM answer",
        )
    guild_callback, dm_callback = dc.interaction_callbacks
    assert (guild_callback.type, dm_callback.type) == (5, 5)
    assert guild_callback.interaction_id == int(interaction["id"])
    assert guild_callback.at - started < 3.0
    edits = dc.calls_to(rf"^/webhooks/{BOT_ID}/{token}/messages/@original$", "PATCH")
    assert edits
    assert guild_callback.at <= edits[0].at  # acknowledged first, answered afterwards
    assert all(c.status == 200 for c in edits)
    assert edits[-1].json["content"] == "echo: vector databases?"
    assert dc.texts(GENERAL_ID) == ["echo: vector databases?"]
    assert model_requests(fake_openai) == [
        [SYSTEM, ("user", "vector databases?")],
        [SYSTEM, ("user", "in private?")],
    ]


async def test_slash_reset_starts_a_fresh_conversation(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slash(name: str, options: dict[str, str] | None = None) -> str:
        data = await dc.dispatch("INTERACTION_CREATE", dc.interaction_command(name, options))
        await until(lambda: settled_interaction(dc, data["token"]), f"/{name} answered")
        return settled_interaction(dc, data["token"])

    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "remember 42"))
        await answered(dc, GENERAL_ID, ["echo: remember 42"])
        assert await slash("ask", {"prompt": "which number?"}) == "echo: which number?"
        assert (await slash("reset")).startswith("Started a fresh conversation")
        assert await slash("ask", {"prompt": "and now?"}) == "echo: and now?"
    with_context, fresh = model_requests(fake_openai)[1:]
    # Slash commands share the context of the user's messages in the channel.
    assert with_context == [
        SYSTEM,
        ("user", "remember 42"),
        ("assistant", "echo: remember 42"),
        ("user", "which number?"),
    ]
    assert fresh == [SYSTEM, ("user", "and now?")]


def settled_interaction(server: FakeDiscord, token: str) -> str:
    """The finished text of an interaction's original response, or '' while it is being written."""
    messages = server.interaction_messages(token)
    text = str(messages[0]["content"]) if messages else ""
    return "" if text.endswith(TYPING_MARKER) else text


# ---------------------------------------------------------------- what is not answered


async def test_message_delivered_twice_is_answered_once(
    dc: FakeDiscord,
    dc_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.core")
    data = dc.guild_message(GENERAL_ID, ALICE_ID, "only once")
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", data)
        await dc.dispatch("MESSAGE_CREATE", data)
        await until(
            lambda: any(f"duplicate discord message {data['id']}" in r.getMessage() for r in caplog.records),
            "the duplicate noticed",
        )
        await answered(dc, GENERAL_ID, ["echo: only once"])
    assert model_requests(fake_openai) == [[SYSTEM, ("user", "only once")]]
    assert len([c for c in writes(dc, GENERAL_ID) if c.method == "POST"]) == 1


async def test_bots_echoes_and_system_messages_are_ignored(
    dc: FakeDiscord,
    dc_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ignored = ("guild_other_bot_mentions_us", "guild_own_message_echo", "guild_system_member_join")
    async with running_bot(dc_settings(), dc, monkeypatch):
        for name in ignored:
            await dc.dispatch_file(name)
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(RANDOM_ID, CAROL_ID, "sentinel"))
        await answered(dc, RANDOM_ID, ["echo: sentinel"])
    assert model_requests(fake_openai) == [[SYSTEM, ("user", "sentinel")]]
    assert [c for c in dc.calls if c.method in ("POST", "PATCH") and str(RANDOM_ID) not in c.path] == []
    assert not errors_logged(caplog)


async def test_attachment_only_mention_gets_the_send_me_text_reply(
    dc: FakeDiscord,
    dc_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_bot(dc_settings(), dc, monkeypatch):
        question = await dc.dispatch_file("guild_attachment_only_mention")
        await answered(dc, GENERAL_ID, [render("empty_prompt")])
    assert model_requests(fake_openai) == []
    assert dc.messages(GENERAL_ID)[0]["message_reference"]["message_id"] == question["id"]
    assert not errors_logged(caplog)


async def test_allowed_users_only(
    dc: FakeDiscord, dc_settings: SettingsFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dc_settings(discord_allowed_user_ids=[BOB_ID])
    async with running_bot(settings, dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "may I?"))
        await dc.dispatch("MESSAGE_CREATE", dc.dm_message(ALICE_ID, "may I here?"))
        await answered(dc, ALICE_DM_ID, [render("not_allowed")], "the refusal")
        denied = await dc.dispatch("INTERACTION_CREATE", dc.interaction_ask("and so?", channel_id=RANDOM_ID))
        await until(
            lambda: settled_interaction(dc, denied["token"]) == render("not_allowed"), "the slash refusal"
        )
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, BOB_ID, "and me?"))
        # Alice mentioned the bot in the channel: she is told why it does not answer her.
        await answered(dc, GENERAL_ID, [render("not_allowed"), "echo: and me?"])
    assert model_requests(fake_openai) == [[SYSTEM, ("user", "and me?")]]


async def test_the_token_never_appears_in_logs(
    dc: FakeDiscord,
    dc_settings: SettingsFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_bot(dc_settings(), dc, monkeypatch):
        await dc.dispatch("MESSAGE_CREATE", dc.guild_message(GENERAL_ID, ALICE_ID, "hello"))
        await answered(dc, GENERAL_ID, ["echo: hello"])
        interaction = await dc.dispatch("INTERACTION_CREATE", dc.interaction_ask("hi"))
        await until(lambda: settled_interaction(dc, interaction["token"]), "the slash answer")
    assert any(r.name.startswith("discord.") and r.levelno == logging.DEBUG for r in caplog.records)
    token_part = dc.token.split(".")[-1]
    assert dc.token not in caplog.text
    assert token_part not in caplog.text
    assert all(dc.token not in str(r.args) and dc.token not in r.getMessage() for r in caplog.records)
