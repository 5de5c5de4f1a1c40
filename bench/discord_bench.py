"""Discord: gptrelay's adapter vs a bare discord.py bot that replies once, against the fake Discord.

Every measurement runs against a fresh fake Discord gateway + REST API (tests.fakes.discord_server) in
this (the driver's) process, while the bot under test runs in a subprocess of its own, so the bot's CPU
time (/proc/<pid>/stat) and peak RSS (/proc/<pid>/status VmHWM) hold none of the fake's work. In the
bot's process discord.py is pointed at the fake through `Route.BASE` and `DEFAULT_GATEWAY`.

* throughput: THROUGHPUT_MESSAGES mentions in THROUGHPUT_CHANNELS channels (one user per channel, so
  THROUGHPUT_MESSAGES / THROUGHPUT_CHANNELS per conversation), all at once, through gptrelay (adapter +
  core + SQLite, instant model) and, side by side, through the floor: a bare `discord.Client` whose
  `on_message` replies once to each mention. The fake applies no rate limits and gptrelay's ChannelGate
  never waits (the floor has no pacing). gptrelay's bursts are off: a user's mentions that arrive
  together would be merged into one answer, and the floor answers each. Then LATENCY_SAMPLES mentions
  one at a time for the latency.
* pending: PENDING_MESSAGES mentions from as many users in THROUGHPUT_CHANNELS channels to a model that
  blocks until released: the bot's RSS once every one of them is accepted and waiting.
* load: LOAD_USERS users at once in DMs with a model that thinks 2 s, without rate limits (as the
  throughput run), then as in production: the fake's default rate limits and gptrelay's pacing.
* streaming: 400-token answers streamed into STREAM_CHANNELS channels at once, against the fake's
  default rate limits; gptrelay paces as in production.

`python -m bench.discord_bench serve-bot|serve-floor ...` is the subprocess side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core_bench import USER_TEXT, Row
from bench.fakes import ANSWER_CHUNKS, InstantModel, ScheduledModel, add_event_loop_argument, run_side
from bot.model import Completion, GenerationParams, Turn, Usage
from bot.streaming import TYPING_MARKER
from tests.fakes.discord_server import DEFAULT_TOKEN, FakeDiscord

ROOT = Path(__file__).resolve().parents[1]
BOT_COMMAND = (sys.executable, "-m", "bench.discord_bench")
STARTUP_TIMEOUT_S = 60.0
# Startup only: discord.py's default waits 2 s after the last GUILD_CREATE before it is ready.
GUILD_READY_TIMEOUT_S = 0.05
# Long enough for an idle bot to finish the bookkeeping that follows its last reply.
SETTLE_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ANSWER = "".join(ANSWER_CHUNKS)

CHANNEL_BASE_ID = 1_181_000_000_000_000_000
USER_BASE_ID = 1_191_000_000_000_000_000
THROUGHPUT_CHANNELS = 100
THROUGHPUT_MESSAGES = 1_000
WARMUP_MESSAGES = 100
LATENCY_SAMPLES = 200
# Floor and gptrelay alternate. The CPU ratio is the median over the rounds of each pair's ratio:
# this machine's speed drifts by up to 2x over minutes, and runs side by side see the same machine.
# The other figures are each side's best run (least CPU per message).
ROUNDS = 5

PENDING_MESSAGES = 1_000
PENDING_TIMEOUT_S = 60.0

LOAD_USERS = 100
SLOW_MODEL_S = 2.0
LOAD_TIMEOUT_S = 20.0  # every answer or error message is in by then, unless one was lost

STREAM_CHANNELS = 20
# 400 tokens of about 4 characters (English averages ~4 per token): 1,600 characters, one message.
STREAM_TOKENS = ("Tok0", *(f" {i:03d}" for i in range(1, 400)))
STREAM_ANSWER = "".join(STREAM_TOKENS)
FIRST_TOKEN_S = 0.2
TOKEN_INTERVAL_S = 0.02  # 400 tokens in 8 s
STREAM_TIMEOUT_S = 60.0

MARKER = TYPING_MARKER.strip()


# ---------------------------------------------------------------- the bot side (subprocess)


class HeldStream:
    """The instant answer, once the release event is set."""

    def __init__(self, release: asyncio.Event) -> None:
        self.usage: Usage | None = None
        self._release = release

    async def __aiter__(self) -> AsyncIterator[str]:
        """Wait for the release, then yield the fixed chunks."""
        await self._release.wait()
        for chunk in ANSWER_CHUNKS:
            yield chunk
        self.usage = Usage(100, 8)


class HeldModel:
    """ModelClient whose answers all wait until `release` is set (SIGUSR1 in the bot process)."""

    def __init__(self, release: asyncio.Event) -> None:
        self._release = release

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> HeldStream:
        """An answer that waits for the release."""
        return HeldStream(self._release)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Not used by these benchmarks."""
        await self._release.wait()
        return Completion((ANSWER,), Usage(100, 8))

    async def aclose(self) -> None:
        """Nothing to release."""


class Status:
    """`ready <accepted>` in a file the driver polls: written at readiness and as messages are accepted."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.accepted = 0
        self._written = -1

    def write(self) -> None:
        """Replace the file's content atomically."""
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(f"ready {self.accepted}\n")
        tmp.replace(self._path)
        self._written = self.accepted

    async def keep_writing(self) -> None:
        """Rewrite whenever the count changed (every 0.05 s at most)."""
        while True:
            await asyncio.sleep(0.05)
            if self.accepted != self._written:
                self.write()


def _stop_and_release() -> tuple[asyncio.Event, asyncio.Event]:
    """Events SIGTERM/SIGINT and SIGUSR1 set."""
    stop, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, release.set)
    return stop, release


def _point_discord_at(api_base: str, gateway: str) -> None:
    """What FakeDiscord.patch_discord does, in this process."""
    import discord.gateway
    import discord.http
    import yarl

    discord.http.Route.BASE = api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


def _model(name: str, first_tokens: Path | None, release: asyncio.Event) -> Any:
    """The bot's model: instant, streaming 400 tokens, thinking 2 s, or held until released."""
    if name == "instant":
        return InstantModel()
    if name == "stream":
        return ScheduledModel(STREAM_TOKENS, FIRST_TOKEN_S, TOKEN_INTERVAL_S, first_tokens)
    if name == "slow":
        return ScheduledModel(ANSWER_CHUNKS, SLOW_MODEL_S, 0.0, first_tokens)
    return HeldModel(release)


async def _serve_gptrelay(args: argparse.Namespace) -> None:
    """What `gptrelay run` does for a Discord-only configuration, with a bench model."""
    from adapters import discord_pacing
    from adapters.discord import DiscordAdapter
    from bot.app import open_runtime, settle_heap
    from bot.config import Settings
    from bot.logsetup import setup_logging

    _point_discord_at(args.api_base, args.gateway)
    if args.no_pacing:
        # The gate still runs (its bookkeeping is part of the cost) but never waits.
        discord_pacing.WINDOW_S = 0.0
        discord_pacing.GLOBAL_PER_S = 10**9
    settings = Settings(
        discord_bot_token=args.token,
        http_enabled=False,
        data_dir=Path(args.data_dir),
        openai_base_url="http://127.0.0.1:9/v1",
        model="bench-model",
        log_level=args.log_level,
        # Each mention gets its own answer, as the floor's does, so CPU per answer compares like with like.
        **({"burst_platforms": []} if args.no_bursts else {}),
        _env_file=None,
    )  # type: ignore[call-arg]
    setup_logging(settings)
    stop, release = _stop_and_release()
    status = Status(Path(args.status))
    first_tokens = Path(args.first_tokens) if args.first_tokens else None
    async with open_runtime(settings, model=_model(args.model, first_tokens, release)) as runtime:
        adapter = DiscordAdapter(runtime.core, settings, {"guild_ready_timeout": GUILD_READY_TIMEOUT_S})
        if args.count_accepted:
            submit = runtime.core.submit

            async def counted(*a: Any, **kw: Any) -> Any:
                future = await submit(*a, **kw)
                status.accepted += future is not None
                return future

            runtime.core.submit = counted  # type: ignore[method-assign]
        await adapter.start()
        settle_heap()  # as `gptrelay run` does once started
        status.write()
        writer = asyncio.create_task(status.keep_writing())
        try:
            await stop.wait()
            await runtime.core.close(settings.shutdown_timeout_s)
        finally:
            writer.cancel()
            await adapter.stop()


async def _serve_floor(args: argparse.Namespace) -> None:
    """The floor: the smallest discord.py bot that replies once to every mention (and DM)."""
    import discord

    _point_discord_at(args.api_base, args.gateway)
    stop, release = _stop_and_release()
    status = Status(Path(args.status))
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=GUILD_READY_TIMEOUT_S)

    async def on_message(message: discord.Message) -> None:
        assert client.user is not None
        if message.author.bot or (message.guild is not None and client.user not in message.mentions):
            return
        status.accepted += 1
        if args.model == "slow":
            await asyncio.sleep(SLOW_MODEL_S)
        elif args.model == "held":
            await release.wait()
        await message.reply(ANSWER, mention_author=False)

    client.on_message = on_message  # type: ignore[attr-defined]
    async with client:
        await client.login(args.token)
        runner = asyncio.create_task(client.connect())
        await client.wait_until_ready()
        status.write()
        writer = asyncio.create_task(status.keep_writing())
        await stop.wait()
        writer.cancel()
        await client.close()
        await asyncio.gather(runner, return_exceptions=True)


def serve(argv: list[str]) -> None:
    """Entry point of the bot subprocess."""
    parser = argparse.ArgumentParser(prog="python -m bench.discord_bench")
    parser.add_argument("bot", choices=("serve-bot", "serve-floor"))
    parser.add_argument("--api-base", required=True, help="for discord.http.Route.BASE")
    parser.add_argument("--gateway", required=True, help="for DiscordWebSocket.DEFAULT_GATEWAY")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--data-dir", default=".")
    parser.add_argument("--status", required=True, help="file the bot writes 'ready <accepted>' to")
    parser.add_argument("--model", choices=("instant", "stream", "slow", "held"), default="instant")
    parser.add_argument("--count-accepted", action="store_true", help="count accepted messages (gptrelay)")
    parser.add_argument("--no-pacing", action="store_true", help="gptrelay's channel gate never waits")
    parser.add_argument("--no-bursts", action="store_true", help="gptrelay answers each message on its own")
    parser.add_argument("--first-tokens", help="file to append '<tag> <monotonic time>' per first token")
    parser.add_argument("--log-level", default="INFO", help="gptrelay's log level (INFO: as `run`)")
    parser.add_argument("--profile", help="write cProfile stats of the whole process here")
    add_event_loop_argument(parser)
    run_side(parser.parse_args(argv), _serve_gptrelay, _serve_floor)


# ---------------------------------------------------------------- the driver side


class BenchDiscord(FakeDiscord):
    """The fake, noting when each channel first shows text and when each final text arrives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_visible: dict[int, float] = {}
        self.finals: dict[int, list[float]] = {}
        self.final_count = 0
        self.last_final_at = 0.0
        self._final_ids: set[str] = set()
        self._target = 0
        self._reached = asyncio.Event()

    async def _new_bot_message(self, channel: Any, payload: Any, files: Any, **kwargs: Any) -> dict[str, Any]:
        message = await super()._new_bot_message(channel, payload, files, **kwargs)
        self._note(channel.id, message)
        return message

    async def _apply_edit(self, channel: Any, current: dict[str, Any], payload: Any) -> dict[str, Any]:
        edited = await super()._apply_edit(channel, current, payload)
        self._note(channel.id, edited)
        return edited

    def _note(self, channel_id: int, message: dict[str, Any]) -> None:
        now = time.monotonic()
        content = message.get("content") or ""
        if content:
            self.first_visible.setdefault(channel_id, now)
        if not content or content.endswith(MARKER) or message["id"] in self._final_ids:
            return  # a message still being written, or one counted already
        self._final_ids.add(message["id"])
        self.finals.setdefault(channel_id, []).append(now)
        self.final_count += 1
        self.last_final_at = now
        if self.final_count >= self._target:
            self._reached.set()

    async def wait_finals(self, total: int, timeout: float) -> bool:
        """Wait until `total` final texts arrived in all; False on timeout."""
        self._target = total
        self._reached = asyncio.Event()
        if self.final_count >= total:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._reached.wait()
        except TimeoutError:
            return False
        return True

    async def add_channels(self, count: int) -> list[int]:
        """`count` text channels of the guild (before the bot connects: they arrive in GUILD_CREATE)."""
        ids = [CHANNEL_BASE_ID + n for n in range(count)]
        for n, channel_id in enumerate(ids):
            await self.add_channel(channel_id, f"bench-{n}")
        return ids

    async def mention(self, channel_id: int, user_id: int, text: str) -> None:
        """A user mentions the bot in a guild channel."""
        await self.dispatch("MESSAGE_CREATE", self.guild_message(channel_id, user_id, text))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB (Linux /proc)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


@dataclass
class Bot:
    """A bot under test in its own process."""

    process: asyncio.subprocess.Process
    log: Path
    status: Path

    @property
    def pid(self) -> int:
        """The bot's process id."""
        return self.process.pid

    def accepted(self) -> int | None:
        """Messages the bot accepted so far; None until it is ready."""
        try:
            words = self.status.read_text().split()
        except FileNotFoundError:
            return None
        return int(words[1]) if len(words) == 2 else None

    def tail(self) -> str:
        """The end of its output, for error messages."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def _bot(fake: FakeDiscord, kind: str, work: Path, *options: str) -> AsyncIterator[Bot]:
    """Start `serve-bot` or `serve-floor` against `fake`; yield once it is ready; stop it."""
    data_dir = work / f"data-{time.monotonic_ns()}"
    data_dir.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "GPTRELAY_", "AZURE_", "DISCORD_", "TELEGRAM_"))
    }
    log, status = data_dir / "bot.log", data_dir / "status"
    args = [
        kind,
        *("--api-base", fake.api_base, "--gateway", fake.gateway_url, "--token", fake.token),
        *("--data-dir", str(data_dir), "--status", str(status), *options),
    ]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *BOT_COMMAND, *args, cwd=ROOT, env=env, stdout=out, stderr=out
        )
    bot = Bot(process, log, status)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while bot.accepted() is None:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not become ready:\n{bot.tail()}")
            await asyncio.sleep(0.05)
        yield bot
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def _pct(samples: list[float], pct: int) -> float:
    """The pct-th percentile."""
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


@dataclass
class Throughput:
    """One bot's throughput run."""

    rate: float  # messages/s
    cpu_us: float  # bot process CPU per message
    requests: float  # REST requests per message
    peak_mb: float
    latency_ms: list[float] = field(default_factory=list)


async def _throughput(kind: str, work: Path, *options: str) -> Throughput:
    """Warm up, then a burst of mentions in many channels, then single mentions for the latency."""
    async with BenchDiscord(rate_limits=None) as fake:
        channels = await fake.add_channels(THROUGHPUT_CHANNELS)
        async with _bot(fake, kind, work, *options) as bot:
            numbers = itertools.count()

            async def burst(count: int) -> float:
                expected = fake.final_count + count
                started = time.monotonic()
                for _ in range(count):
                    n = next(numbers)
                    c = n % THROUGHPUT_CHANNELS
                    await fake.mention(channels[c], USER_BASE_ID + c, f"{USER_TEXT}(q{n})")
                if not await fake.wait_finals(expected, 120):
                    raise RuntimeError(f"{kind}: {fake.final_count} of {expected} answers:\n{bot.tail()}")
                return fake.last_final_at - started

            await burst(WARMUP_MESSAGES)
            await asyncio.sleep(SETTLE_S)
            calls, cpu = len(fake.calls), _cpu_seconds(bot.pid)
            elapsed = await burst(THROUGHPUT_MESSAGES)
            await asyncio.sleep(SETTLE_S)  # the bookkeeping after the last reply is part of the cost
            cpu = _cpu_seconds(bot.pid) - cpu
            calls = len(fake.calls) - calls
            result = Throughput(
                THROUGHPUT_MESSAGES / elapsed,
                cpu / THROUGHPUT_MESSAGES * 1e6,
                calls / THROUGHPUT_MESSAGES,
                _memory_mb(bot.pid)[1],
            )
            for _ in range(LATENCY_SAMPLES):
                result.latency_ms.append(await burst(1) * 1e3)
            return result


@dataclass
class Pending:
    """Memory with many answers waiting for the model."""

    rss_mb: float
    peak_mb: float
    answered: int


async def _pending(kind: str, work: Path) -> Pending:
    """RSS once PENDING_MESSAGES mentions (as many conversations) wait for a held model; then release."""
    options = (
        ("--model", "held", "--count-accepted", "--no-pacing") if kind == "serve-bot" else ("--model", "held")
    )
    async with BenchDiscord(rate_limits=None) as fake:
        channels = await fake.add_channels(THROUGHPUT_CHANNELS)
        async with _bot(fake, kind, work, *options) as bot:
            for n in range(PENDING_MESSAGES):
                c = n % THROUGHPUT_CHANNELS
                await fake.mention(channels[c], USER_BASE_ID + n, f"{USER_TEXT}(q{n})")
            deadline = time.monotonic() + PENDING_TIMEOUT_S
            while (bot.accepted() or 0) < PENDING_MESSAGES:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{kind}: {bot.accepted()} of {PENDING_MESSAGES} accepted:\n{bot.tail()}"
                    )
                await asyncio.sleep(0.05)
            await asyncio.sleep(SETTLE_S)
            rss, peak = _memory_mb(bot.pid)
            if fake.final_count:
                raise RuntimeError(f"{kind}: {fake.final_count} answers before the model was released")
            bot.process.send_signal(signal.SIGUSR1)
            await fake.wait_finals(PENDING_MESSAGES, PENDING_TIMEOUT_S)
        return Pending(rss, peak, fake.final_count)


@dataclass
class Load:
    """Many users at once with a slow model."""

    latency_s: list[float]  # of the users answered right
    users: int
    rate_limit_errors: int


async def _load(kind: str, work: Path, *, limited: bool) -> Load:
    """Seconds from DM to final answer, LOAD_USERS users at once, a model thinking 2 s.

    `limited`: the fake applies Discord's default rate limits and gptrelay paces as in production;
    otherwise neither (as in the throughput run).
    """
    options: tuple[str, ...] = ("--model", "slow")
    if kind == "serve-bot" and not limited:
        options += ("--no-pacing",)
    async with BenchDiscord(**({} if limited else {"rate_limits": None})) as fake:
        async with _bot(fake, kind, work, *options) as bot:
            pushed: dict[int, float] = {}
            for n in range(LOAD_USERS):
                data = fake.dm_message(USER_BASE_ID + n, f"q{n} What do you think?")
                pushed[int(data["channel_id"])] = time.monotonic()
                await fake.dispatch("MESSAGE_CREATE", data)
            await fake.wait_finals(LOAD_USERS, LOAD_TIMEOUT_S)
        right = [channel for channel in pushed if fake.texts(channel) == [ANSWER]]
        if len(right) < 2:
            raise RuntimeError(f"load: {len(right)} of {LOAD_USERS} answered right:\n{bot.tail()}")
        latency = [fake.finals[channel][0] - pushed[channel] for channel in right]
        return Load(latency, len(pushed), fake.rate_limit_errors)


@dataclass
class Streaming:
    """The streaming run under rate limits."""

    rate_limit_errors: int
    complete: int
    channels: int
    visible_delay_s: list[float]
    total_s: float
    writes_per_answer: float


async def _streaming(work: Path) -> Streaming:
    """400-token answers streamed into STREAM_CHANNELS channels at once against Discord's rate limits."""
    first_tokens = work / "first-tokens.txt"
    async with BenchDiscord() as fake:
        channels = await fake.add_channels(STREAM_CHANNELS)
        async with _bot(fake, "serve-bot", work, "--model", "stream", "--first-tokens", str(first_tokens)):
            tags: dict[int, str] = {}
            calls = len(fake.calls)
            started = time.monotonic()
            for n, channel in enumerate(channels):
                tags[channel] = str(n)
                await fake.mention(channel, USER_BASE_ID + n, f"q{n} Tell me a long story, please.")
            await fake.wait_finals(len(tags), STREAM_TIMEOUT_S)
            total = (fake.last_final_at or time.monotonic()) - started
            writes = sum(c.method in ("POST", "PATCH") and "/messages" in c.path for c in fake.calls[calls:])
        first = {}
        for line in first_tokens.read_text().splitlines():
            tag, at = line.split()
            first[tag] = float(at)
        delays = [
            fake.first_visible[channel] - first[tag]
            for channel, tag in tags.items()
            if channel in fake.first_visible and tag in first
        ]
        if len(delays) < 2:
            raise RuntimeError(f"streaming: first text in {len(delays)} of {len(tags)} channels")
        complete = sum(fake.texts(channel) == [STREAM_ANSWER] for channel in tags)
        return Streaming(fake.rate_limit_errors, complete, len(tags), delays, total, writes / len(tags))


async def run() -> list[Row]:
    """Every Discord measurement, as table rows."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        floors: list[Throughput] = []
        relays: list[Throughput] = []
        for _ in range(ROUNDS):
            floors.append(await _throughput("serve-floor", work))
            relays.append(await _throughput("serve-bot", work, "--no-pacing", "--no-bursts"))
        floor = min(floors, key=lambda t: t.cpu_us)
        relay = min(relays, key=lambda t: t.cpu_us)
        floor_pending = await _pending("serve-floor", work)
        relay_pending = await _pending("serve-bot", work)
        floor_load = await _load("serve-floor", work, limited=False)
        relay_load = await _load("serve-bot", work, limited=False)
        floor_limited = await _load("serve-floor", work, limited=True)
        relay_limited = await _load("serve-bot", work, limited=True)
        stream = await _streaming(work)
    per_channel = THROUGHPUT_MESSAGES // THROUGHPUT_CHANNELS
    burst = f"{THROUGHPUT_MESSAGES:,} mentions, {per_channel} from one user in each of "
    burst += f"{THROUGHPUT_CHANNELS} channels"
    unlimited = "no rate limits in the fake, gptrelay's channel gate never waits"
    setup = f"instant model, {unlimited}, one answer per mention; {ROUNDS} alternating runs"
    delays = [d * 1e3 for d in stream.visible_delay_s]
    rows = [
        Row(
            f"Discord floor: bare discord.py bot replying once, {burst} at once ({setup})",
            floor.rate,
            "msg/s",
        ),
        Row(f"Discord gptrelay: adapter + core + SQLite, {burst} at once ({setup})", relay.rate, "msg/s"),
        Row("  REST requests per message, floor", floor.requests, ""),
        Row("  REST requests per message, gptrelay", relay.requests, ""),
        Row("  CPU per message of the bot process, floor", floor.cpu_us, "µs"),
        Row("  CPU per message of the bot process, gptrelay", relay.cpu_us, "µs"),
        Row("  gptrelay's CPU per message vs the floor's, best runs", relay.cpu_us / floor.cpu_us, "x"),
        Row(
            f"  gptrelay's CPU per message vs the floor's, median of the {ROUNDS} pairs' ratios",
            statistics.median(r.cpu_us / f.cpu_us for f, r in zip(floors, relays, strict=True)),
            "x",
            "<= 1.5",
        ),
        Row("  latency, one mention at a time, p50, floor", _pct(floor.latency_ms, 50), "ms"),
        Row("  latency, one mention at a time, p50, gptrelay", _pct(relay.latency_ms, 50), "ms"),
        Row("  latency, one mention at a time, p99, floor", _pct(floor.latency_ms, 99), "ms"),
        Row("  latency, one mention at a time, p99, gptrelay", _pct(relay.latency_ms, 99), "ms"),
        Row("  peak RSS of the bot process, floor", floor.peak_mb, "MB"),
        Row("  peak RSS of the bot process, gptrelay", relay.peak_mb, "MB"),
        Row(
            f"Discord pending: {PENDING_MESSAGES:,} mentions from as many users waiting for a held model, "
            "RSS of the bot process, floor",
            floor_pending.rss_mb,
            "MB",
        ),
        Row("  RSS with all pending, gptrelay", relay_pending.rss_mb, "MB", "< 200"),
        Row("  peak RSS so far, gptrelay", relay_pending.peak_mb, "MB", "< 200"),
        Row(
            "  answered after the release, gptrelay",
            relay_pending.answered,
            f"of {PENDING_MESSAGES:,}",
            f"{PENDING_MESSAGES:,} of {PENDING_MESSAGES:,}",
        ),
    ]
    limited = "the fake's default rate limits, gptrelay's pacing as in production"
    for name, floor_run, relay_run, targets in (
        (unlimited, floor_load, relay_load, True),
        (limited, floor_limited, relay_limited, False),
    ):
        users = relay_run.users
        rows += [
            Row(
                f"Discord load: {LOAD_USERS} users at once in DMs, 2 s model ({name}), answered right, floor",
                len(floor_run.latency_s),
                f"of {floor_run.users}",
            ),
            Row(
                "  answered right, gptrelay",
                len(relay_run.latency_s),
                f"of {users}",
                f"{users} of {users}" if targets else "",
            ),
            Row("  slowest right answer, floor", max(floor_run.latency_s), "s"),
            Row("  slowest right answer, gptrelay", max(relay_run.latency_s), "s", "<= 3" if targets else ""),
            Row("  p50, gptrelay", _pct(relay_run.latency_s, 50), "s"),
        ]
        if not targets:
            rows += [
                Row("  rate-limit errors (429), floor", floor_run.rate_limit_errors, ""),
                Row("  rate-limit errors (429), gptrelay", relay_run.rate_limit_errors, ""),
            ]
    rows += [
        Row(
            f"Discord streaming: 400-token answers into {STREAM_CHANNELS} channels at once, fake with "
            "Discord's default rate limits, rate-limit errors (429)",
            stream.rate_limit_errors,
            "",
            "0",
        ),
        Row(
            "  complete answers",
            stream.complete,
            f"of {stream.channels}",
            f"{stream.channels} of {stream.channels}",
        ),
        Row("  first visible text after the model's first token, p50", _pct(delays, 50), "ms", "<= 500"),
        Row("  first visible text after the model's first token, max", max(delays), "ms", "<= 500"),
        Row("  message writes per answer", stream.writes_per_answer, ""),
        Row("  until the last answer was complete", stream.total_s, "s"),
    ]
    return rows


if __name__ == "__main__":
    serve(sys.argv[1:])
