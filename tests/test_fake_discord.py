"""The fake Discord gateway + REST API, driven by a real ``discord.Client`` (and ``commands.Bot``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import discord
import pytest
from discord.ext import commands

from tests.fakes.discord_server import (
    ALICE_DM_ID,
    ALICE_ID,
    BOT_ID,
    GENERAL_ID,
    GUILD_ID,
    PAYLOADS_DIR,
    RANDOM_ID,
    THREAD_ID,
    DiscordRateLimits,
    FakeDiscord,
    iter_sample_frames,
)

READY_TIMEOUT_S = 5.0
EVENT_TIMEOUT_S = 3.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """A running fake Discord with the default rate limits."""
    async with FakeDiscord() as server:
        yield server


@asynccontextmanager
async def running(
    client: discord.Client, fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[discord.Client]:
    """Log the real client in against the fake, connect it, wait for on_ready; close it afterwards."""
    fake.patch_discord(monkeypatch)
    async with client:
        await client.login(fake.token)
        task = asyncio.create_task(client.connect(reconnect=False))
        try:
            await asyncio.wait_for(client.wait_until_ready(), READY_TIMEOUT_S)
            yield client
        finally:
            await client.close()
            await task


def make_client(
    intents: discord.Intents | None = None,
) -> tuple[discord.Client, asyncio.Queue[discord.Message]]:
    """A client whose ``on_message`` puts every message in the returned queue."""
    client = discord.Client(intents=intents or discord.Intents.default(), guild_ready_timeout=0.05)
    inbox: asyncio.Queue[discord.Message] = asyncio.Queue()

    @client.event
    async def on_message(message: discord.Message) -> None:
        inbox.put_nowait(message)

    return client, inbox


async def next_message(inbox: asyncio.Queue[discord.Message]) -> discord.Message:
    return await asyncio.wait_for(inbox.get(), EVENT_TIMEOUT_S)


async def test_login_identify_and_ready(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = make_client()
    async with running(client, fake, monkeypatch):
        assert client.user is not None
        assert client.user.id == BOT_ID
        guild = client.get_guild(GUILD_ID)
        assert guild is not None
        assert guild.get_channel(GENERAL_ID) is not None
        assert guild.get_thread(THREAD_ID) is not None
        assert fake.intents == discord.Intents.default().value
        assert fake.identify_payload is not None
        assert fake.identify_payload["token"] == fake.token
        assert [c.path for c in fake.calls[:2]] == ["/users/@me", "/oauth2/applications/@me"]
        assert fake.heartbeats >= 1
    assert client.is_closed()


async def test_on_message_sees_guild_mention_and_dm(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, inbox = make_client()
    async with running(client, fake, monkeypatch):
        sent = await fake.dispatch(
            "MESSAGE_CREATE", fake.guild_message(GENERAL_ID, ALICE_ID, "capital of France?")
        )
        message = await next_message(inbox)
        assert message.id == int(sent["id"])
        assert message.content == f"<@{BOT_ID}> capital of France?"
        assert client.user in message.mentions
        assert message.author.id == ALICE_ID
        assert isinstance(message.author, discord.Member)
        assert message.guild is not None
        assert message.guild.id == GUILD_ID
        assert abs(message.created_at.timestamp() - time.time()) < 5

        await fake.dispatch("MESSAGE_CREATE", fake.dm_message(ALICE_ID, "a haiku please"))
        dm = await next_message(inbox)
        assert dm.content == "a haiku please"
        assert isinstance(dm.channel, discord.DMChannel)
        assert dm.channel.id == ALICE_DM_ID
        assert dm.guild is None


async def test_content_intent_hides_unmentioned_guild_messages(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, inbox = make_client()
    async with running(client, fake, monkeypatch):
        await fake.dispatch(
            "MESSAGE_CREATE", fake.guild_message(GENERAL_ID, ALICE_ID, "chat", mentions_bot=False)
        )
        assert (await next_message(inbox)).content == ""
        await fake.dispatch_file(PAYLOADS_DIR / "guild_mention_managed_role.json")
        assert (await next_message(inbox)).content.startswith("<@&")


async def test_send_is_stored_and_echoed_then_edited(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, inbox = make_client()
    edits: asyncio.Queue[discord.Message] = asyncio.Queue()

    @client.event
    async def on_message_edit(before: discord.Message, after: discord.Message) -> None:
        edits.put_nowait(after)

    async with running(client, fake, monkeypatch):
        channel = client.get_channel(GENERAL_ID)
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("Paris.")
        assert fake.texts(GENERAL_ID) == ["Paris."]
        echo = await next_message(inbox)
        assert echo.id == sent.id
        assert echo.author.bot
        assert echo.author == client.user

        await sent.edit(content="Paris, France.")
        assert fake.texts(GENERAL_ID) == ["Paris, France."]
        assert (await asyncio.wait_for(edits.get(), EVENT_TIMEOUT_S)).content == "Paris, France."

        followup = fake.guild_message(GENERAL_ID, ALICE_ID, "sure?", mentions_bot=False, reply_to=sent.id)
        await fake.dispatch("MESSAGE_CREATE", followup)
        reply_to_bot = await next_message(inbox)
        assert reply_to_bot.reference is not None
        assert isinstance(reply_to_bot.reference.resolved, discord.Message)
        assert reply_to_bot.reference.resolved.author == client.user
        assert client.user in reply_to_bot.mentions

        asked = await fake.dispatch("MESSAGE_CREATE", fake.guild_message(GENERAL_ID, ALICE_ID, "and Spain?"))
        question = await next_message(inbox)
        reply = await question.reply("Madrid.", mention_author=False)
        stored = fake.message(reply.id)
        assert stored is not None
        assert stored["type"] == 19
        assert stored["message_reference"]["message_id"] == asked["id"]
        assert stored["mentions"] == []
        assert reply.reference is not None
        assert reply.reference.message_id == question.id
        call = fake.calls_to(r"/channels/\d+/messages$", "POST")[-1]
        assert call.json["allowed_mentions"]["replied_user"] is False


async def test_message_limits_raise_http_exception(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = make_client()
    async with running(client, fake, monkeypatch):
        channel = client.get_channel(RANDOM_ID)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        assert (too_long.value.status, too_long.value.code) == (400, 50035)
        assert "2000 or fewer" in too_long.value.text
        with pytest.raises(discord.HTTPException) as empty:
            await channel.send("")
        assert empty.value.code == 50006
        sent = await channel.send("x" * 2000)
        with pytest.raises(discord.HTTPException) as edit_too_long:
            await sent.edit(content="y" * 2001)
        assert edit_too_long.value.code == 50035
        assert fake.texts(RANDOM_ID) == ["x" * 2000]


async def test_discord_py_waits_out_an_exhausted_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = DiscordRateLimits(per_channel_writes=5, per_seconds=1.0)
    async with FakeDiscord(rate_limits=limits) as fake:
        client, _ = make_client()
        async with running(client, fake, monkeypatch):
            channel = client.get_channel(GENERAL_ID)
            assert isinstance(channel, discord.TextChannel)
            started = time.monotonic()
            for index in range(6):
                await channel.send(f"part {index}")
            elapsed = time.monotonic() - started
        assert fake.texts(GENERAL_ID) == [f"part {index}" for index in range(6)]
        # discord.py held back the 5th request until the window reset instead of drawing a 429.
        assert 0.8 < elapsed < 3.0
        assert fake.rate_limit_errors == 0


async def test_scripted_429_is_retried_by_discord_py(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = make_client()
    async with running(client, fake, monkeypatch):
        channel = client.get_channel(GENERAL_ID)
        assert isinstance(channel, discord.TextChannel)
        fake.fail_next("POST", rf"/channels/{GENERAL_ID}/messages$", 429, retry_after=0.2)
        started = time.monotonic()
        await channel.send("after a 429")
        assert time.monotonic() - started >= 0.2
    assert fake.rate_limit_errors == 1
    assert [c.status for c in fake.calls_to(r"/messages$", "POST")] == [429, 200]
    assert fake.texts(GENERAL_ID) == ["after a 429"]


async def test_rate_limit_answers_over_raw_http() -> None:
    limits = DiscordRateLimits(per_channel_writes=5, per_seconds=5.0, global_per_s=8)
    async with FakeDiscord(rate_limits=limits) as fake, aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bot {fake.token}"}

        async def send(channel_id: int) -> aiohttp.ClientResponse:
            url = f"{fake.api_base}/channels/{channel_id}/messages"
            async with http.post(url, json={"content": "hi"}, headers=headers) as response:
                await response.read()
                return response

        answers = [await send(GENERAL_ID) for _ in range(6)]
        assert [a.status for a in answers] == [200] * 5 + [429]
        first, refused = answers[0], answers[5]
        assert first.headers["Content-Type"] == "application/json"
        assert first.headers["X-RateLimit-Limit"] == "5"
        assert first.headers["X-RateLimit-Remaining"] == "4"
        assert 4.5 < float(first.headers["X-RateLimit-Reset-After"]) <= 5.0
        assert abs(float(first.headers["X-RateLimit-Reset"]) - time.time() - 5.0) < 1.0
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.headers["Retry-After"] == "5"
        assert refused.headers["Via"]  # without it discord.py takes a 429 for a Cloudflare ban
        other = await send(RANDOM_ID)
        assert other.status == 200
        assert other.headers["X-RateLimit-Remaining"] == "4"
        assert other.headers["X-RateLimit-Bucket"] == first.headers["X-RateLimit-Bucket"]
        async with http.post(
            f"{fake.api_base}/channels/{GENERAL_ID}/messages", json={"content": "x"}, headers=headers
        ) as response:
            body = await response.json()
        assert body["message"] == "You are being rate limited."
        assert body["global"] is False
        assert 4.0 < body["retry_after"] <= 5.0
        # 5 + 1 + 1 + 1 requests so far; the 9th within the second breaks the global limit of 8.
        global_refused = await send(THREAD_ID)
        assert global_refused.status == 429
        assert global_refused.headers["X-RateLimit-Global"] == "true"
        assert fake.rate_limit_errors == 3


async def test_wrong_token_is_a_login_failure(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.patch_discord(monkeypatch)
    async with discord.Client(intents=discord.Intents.default()) as client:
        with pytest.raises(discord.LoginFailure):
            await client.login("not-the-token")
    assert [(c.path, c.status) for c in fake.calls] == [("/users/@me", 401)]


async def test_repeated_nonce_returns_the_first_message() -> None:
    async with FakeDiscord(rate_limits=None) as fake, aiohttp.ClientSession() as http:
        url = f"{fake.api_base}/channels/{GENERAL_ID}/messages"
        body = {"content": "once", "nonce": "42", "enforce_nonce": True}
        ids = []
        for _ in range(2):
            async with http.post(url, json=body, headers={"Authorization": f"Bot {fake.token}"}) as response:
                ids.append((await response.json())["id"])
        assert ids[0] == ids[1]
        assert fake.texts(GENERAL_ID) == ["once"]


async def test_auth_errors_and_unknown_routes() -> None:
    async with FakeDiscord(rate_limits=None) as fake, aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base}/users/@me") as response:
            assert response.status == 401
            assert response.headers["Content-Type"] == "application/json"
            assert await response.json() == {"code": 0, "message": "401: Unauthorized"}
        headers = {"Authorization": f"Bot {fake.token}"}
        async with http.get(f"{fake.api_base}/nothing/here", headers=headers) as response:
            assert response.status == 404
            assert await response.json() == {"code": 0, "message": "404: Not Found"}
            assert "X-RateLimit-Limit" not in response.headers
        async with http.post(
            f"{fake.api_base}/channels/42/messages", json={"content": "x"}, headers=headers
        ) as r:
            assert (r.status, (await r.json())["code"]) == (404, 10003)
        fake.fail_next("GET", r"^/users/@me$", 503)
        async with http.get(f"{fake.api_base}/users/@me", headers=headers) as response:
            assert response.status == 503
        async with http.get(f"{fake.api_base}/users/@me", headers=headers) as response:
            assert (await response.json())["id"] == str(BOT_ID)


async def test_slash_command_defer_followup_and_sync(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    intents = discord.Intents.default() | discord.Intents(message_content=True)
    bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
    answered = asyncio.Event()

    @bot.tree.command(name="ask", description="Ask the model")
    async def ask(interaction: discord.Interaction, prompt: str) -> None:
        await interaction.response.defer()
        await interaction.followup.send(f"answer to: {prompt}")
        await interaction.edit_original_response(content="done")
        answered.set()

    async with running(bot, fake, monkeypatch):
        assert [c.name for c in await bot.tree.sync()] == ["ask"]
        bot.tree.copy_global_to(guild=discord.Object(GUILD_ID))
        [synced] = await bot.tree.sync(guild=discord.Object(GUILD_ID))
        assert synced.guild_id == GUILD_ID
        assert synced.options[0].name == "prompt"
        assert [c["name"] for c in fake.commands(GUILD_ID)] == [c["name"] for c in fake.commands()] == ["ask"]
        assert fake.calls_to(rf"/applications/{BOT_ID}/guilds/{GUILD_ID}/commands$", "PUT")

        interaction = await fake.dispatch("INTERACTION_CREATE", fake.interaction_ask("vector databases?"))
        await asyncio.wait_for(answered.wait(), EVENT_TIMEOUT_S)

    [callback] = fake.interaction_callbacks
    assert callback.type == 5
    assert callback.interaction_id == int(interaction["id"])
    assert fake.calls_to(r"/callback$")[0].query == {"with_response": "1"}
    assert fake.calls_to(rf"^/webhooks/{BOT_ID}/[^/]+$", "POST")[0].status == 200
    texts = [m["content"] for m in fake.interaction_messages(interaction["token"])]
    assert texts == ["done", "answer to: vector databases?"]
    assert fake.texts(GENERAL_ID) == texts


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_interaction_callback_rules_over_raw_http() -> None:
    clock = FakeClock()
    async with FakeDiscord(rate_limits=None, clock=clock) as fake, aiohttp.ClientSession() as http:
        late = await fake.dispatch("INTERACTION_CREATE", fake.interaction_ask("late"))
        clock.now += 3.1
        late_url = f"{fake.api_base}/interactions/{late['id']}/{late['token']}/callback"
        async with http.post(late_url, json={"type": 5}) as response:
            assert (response.status, (await response.json())["code"]) == (404, 10062)
        interaction = await fake.dispatch("INTERACTION_CREATE", fake.interaction_ask("hi", guild=False))
        url = f"{fake.api_base}/interactions/{interaction['id']}/{interaction['token']}/callback"
        async with http.post(url, json={"type": 5}) as response:
            assert response.status == 204
        async with http.post(url, json={"type": 5}) as response:
            assert (response.status, (await response.json())["code"]) == (400, 40060)
        async with http.post(url.replace(interaction["token"], "nope"), json={"type": 5}) as response:
            assert (response.status, (await response.json())["code"]) == (404, 10062)
        webhook = f"{fake.api_base}/webhooks/{BOT_ID}/{interaction['token']}"
        async with http.post(webhook, params={"wait": "1"}, json={"content": "hello"}) as response:
            assert response.status == 200
            assert (await response.json())["channel_id"] == str(ALICE_DM_ID)
        assert fake.texts(ALICE_DM_ID) == ["", "hello"]


async def test_threads_are_created_and_dispatched(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    client, inbox = make_client()
    async with running(client, fake, monkeypatch):
        channel = client.get_channel(GENERAL_ID)
        assert isinstance(channel, discord.TextChannel)
        await fake.dispatch("MESSAGE_CREATE", fake.guild_message(GENERAL_ID, ALICE_ID, "long question"))
        question = await next_message(inbox)
        thread = await question.create_thread(name="long question")
        assert thread.id == question.id
        assert thread.parent_id == GENERAL_ID
        await fake.wait_for(lambda: client.get_channel(thread.id))
        await thread.send("in the thread")
        assert fake.texts(thread.id) == ["in the thread"]
        private = await channel.create_thread(name="side", type=discord.ChannelType.public_thread)
        assert private.type is discord.ChannelType.public_thread
        assert [t["name"] for t in fake.threads] == ["long question", "side"]
        with pytest.raises(discord.HTTPException) as twice:
            await question.create_thread(name="again")
        assert twice.value.code == 160004


async def test_every_sample_frame_reaches_the_client(
    fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    client, inbox = make_client(discord.Intents.default() | discord.Intents(message_content=True))
    interactions: asyncio.Queue[discord.Interaction] = asyncio.Queue()

    @client.event
    async def on_interaction(interaction: discord.Interaction) -> None:
        interactions.put_nowait(interaction)

    frames = list(iter_sample_frames())
    async with running(client, fake, monkeypatch):
        for _, frame in frames:
            await fake.dispatch(frame["t"], frame["d"])
        messages = [await next_message(inbox) for _ in range(len(frames) - 2)]
        asks = [await asyncio.wait_for(interactions.get(), EVENT_TIMEOUT_S) for _ in range(2)]
    expected = [frame["d"]["id"] for _, frame in frames if frame["t"] == "MESSAGE_CREATE"]
    assert [str(m.id) for m in messages] == expected
    assert [a.data["options"][0]["value"] for a in asks if a.data] == [
        "Explain vector databases in two sentences"
    ] * 2
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_sample_frames_reconnect_and_resume(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    client, inbox = make_client(discord.Intents.default() | discord.Intents(message_content=True))
    async with running(client, fake, monkeypatch):
        await fake.dispatch_file("guild_reply_to_bot")
        reply = await next_message(inbox)
        assert reply.reference is not None
        assert reply.type is discord.MessageType.reply
        await fake.request_reconnect()
        await fake.wait_for(lambda: fake.resume_count)
        await fake.dispatch("MESSAGE_CREATE", fake.guild_message(GENERAL_ID, ALICE_ID, "still there?"))
        assert (await next_message(inbox)).content.endswith("still there?")
        assert fake.identify_count == 1
