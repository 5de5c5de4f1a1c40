"""Telegram: gptrelay's adapter vs a bare python-telegram-bot echo bot against the fake Bot API.

Three measurements, each against a fresh fake Telegram server (tests.fakes.telegram_server) that runs in
this (the driver's) process, while the bot under test runs in a subprocess of its own, so the bot's CPU
time (read from /proc/<pid>/stat) holds none of the fake's work:

* throughput: THROUGHPUT_MESSAGES private messages from THROUGHPUT_USERS users, all at once, through
  gptrelay (`gptrelay run` with an instant model) and, side by side, through the floor: a bare PTB
  `Application` echo bot with `concurrent_updates`. No flood rules in the fake, and gptrelay's pacing
  waits are off (the floor has none). Then LATENCY_SAMPLES messages one at a time for the latency.
* flood: 400-token answers streamed into 50 private and 10 group chats at once, against a fake that
  enforces Telegram's flood limits; gptrelay paces as in production.
* load: 200 users at once with a model that thinks for 2 s, without flood rules and pacing waits (as
  the throughput run), then as in production: gptrelay's pacing against the flood limits.

`python -m bench.telegram_bench serve-bot|serve-floor ...` is the subprocess side.
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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core_bench import USER_TEXT, Row
from bench.fakes import ANSWER_CHUNKS, InstantModel, ScheduledModel, add_event_loop_argument, run_side
from bot.streaming import TYPING_MARKER
from tests.fakes.telegram_server import DEFAULT_TOKEN, FakeTelegram, FloodRules

ROOT = Path(__file__).resolve().parents[1]
TOKEN = DEFAULT_TOKEN
BOT_COMMAND = (sys.executable, "-m", "bench.telegram_bench")
STARTUP_TIMEOUT_S = 60.0
# Long enough for an idle bot to finish the bookkeeping that follows its last reply.
SETTLE_S = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

THROUGHPUT_USERS = 200
THROUGHPUT_MESSAGES = 2_000
WARMUP_MESSAGES = 200
LATENCY_SAMPLES = 200
ROUNDS = 2  # floor and gptrelay alternate; each keeps its best run (least CPU per message)
FLOOR_CONCURRENCY = 64  # concurrent updates of the bare PTB floor bot
PRIVATE_BASE_ID = 5_100_000_001
GROUP_BASE_ID = -1_001_000_000_001

FLOOD_PRIVATE_CHATS = 50
FLOOD_GROUP_CHATS = 10
STREAM_TOKENS = ("Token0", *(f" word{i}" for i in range(1, 400)))
STREAM_ANSWER = "".join(STREAM_TOKENS)
FIRST_TOKEN_S = 0.2
TOKEN_INTERVAL_S = 0.02  # 400 tokens in 8 s
FLOOD_TIMEOUT_S = 120.0

LOAD_USERS = 200
SLOW_MODEL_S = 2.0
LOAD_TIMEOUT_S = 60.0

MARKER = TYPING_MARKER.strip()


# ---------------------------------------------------------------- the bot side (subprocess)


def _model(name: str, first_tokens: Path | None) -> Any:
    """The bot's model: instant, streaming 400 tokens, or thinking 2 s before a short answer."""
    if name == "instant":
        return InstantModel()
    if name == "stream":
        return ScheduledModel(STREAM_TOKENS, FIRST_TOKEN_S, TOKEN_INTERVAL_S, first_tokens)
    return ScheduledModel(ANSWER_CHUNKS, SLOW_MODEL_S, 0.0, first_tokens)


def _stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve_gptrelay(args: argparse.Namespace) -> None:
    """What `gptrelay run` does for a Telegram-only configuration, with a bench model."""
    from adapters import telegram_pacing
    from adapters.telegram import TelegramAdapter
    from bot.app import open_runtime, settle_heap
    from bot.config import Settings
    from bot.logsetup import setup_logging

    if args.no_pacing:
        # The gate still runs (its bookkeeping is part of the cost) but never waits.
        telegram_pacing.PRIVATE_INTERVAL_S = 0.0
        telegram_pacing.GROUP_INTERVAL_S = 0.0
        telegram_pacing.GLOBAL_PER_S = 10**9
    settings = Settings(
        telegram_bot_token=args.token,
        telegram_api_base_url=args.base_url,
        http_enabled=False,
        data_dir=Path(args.data_dir),
        openai_base_url="http://127.0.0.1:9/v1",
        model="bench-model",
        log_level=args.log_level,
        # The throughput run sends several messages per user at once: each must get its own answer,
        # as the floor's do, not one merged answer.
        **({"burst_platforms": []} if args.no_bursts else {}),
        _env_file=None,
    )  # type: ignore[call-arg]
    setup_logging(settings)
    stop = _stop_on_signals()
    first_tokens = Path(args.first_tokens) if args.first_tokens else None
    async with open_runtime(settings, model=_model(args.model, first_tokens)) as runtime:
        adapter = TelegramAdapter(runtime.core, settings)
        await adapter.start()
        settle_heap()  # as `gptrelay run` does once started
        try:
            await stop.wait()
            await runtime.core.close(settings.shutdown_timeout_s)
        finally:
            await adapter.stop()


async def _serve_floor(args: argparse.Namespace) -> None:
    """The floor: the smallest python-telegram-bot bot that answers every text."""
    from telegram import Update
    from telegram.ext import ApplicationBuilder, ContextTypes, MessageHandler, filters

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text(update.message.text or "")

    base = args.base_url.rstrip("/")
    app = (
        ApplicationBuilder()
        .token(args.token)
        .base_url(base)
        .base_file_url(base.removesuffix("/bot") + "/file/bot")
        .concurrent_updates(FLOOR_CONCURRENCY)
        .build()
    )
    app.add_handler(MessageHandler(filters.TEXT, echo))
    stop = _stop_on_signals()
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(timeout=25)
        await stop.wait()
        await app.updater.stop()
        await app.stop()


def serve(argv: list[str]) -> None:
    """Entry point of the bot subprocess."""
    parser = argparse.ArgumentParser(prog="python -m bench.telegram_bench")
    parser.add_argument("bot", choices=("serve-bot", "serve-floor"))
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--data-dir", default=".")
    parser.add_argument("--model", choices=("instant", "stream", "slow"), default="instant")
    parser.add_argument("--no-pacing", action="store_true", help="gptrelay's flood gate never waits")
    parser.add_argument("--no-bursts", action="store_true", help="gptrelay answers each message on its own")
    parser.add_argument("--first-tokens", help="file to append '<tag> <monotonic time>' per first token")
    parser.add_argument("--log-level", default="INFO", help="gptrelay's log level (INFO: as `run`)")
    parser.add_argument("--profile", help="write cProfile stats of the whole process here")
    add_event_loop_argument(parser)
    run_side(parser.parse_args(argv), _serve_gptrelay, _serve_floor)


# ---------------------------------------------------------------- the driver side


class BenchTelegram(FakeTelegram):
    """The fake, noting when each chat first shows text and when each final text arrives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_visible: dict[int, float] = {}
        self.finals: dict[int, list[float]] = {}
        self.final_count = 0
        self.last_final_at = 0.0
        self._target = 0
        self._reached = asyncio.Event()
        for method in ("sendmessage", "editmessagetext", "sendmessagedraft"):
            self._methods[method] = self._watched(self._methods[method])

    def _watched(self, handler: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Any]:
        """Wrap a write so that accepted ones are noted (refused ones raise before that)."""

        def handle(params: dict[str, Any]) -> dict[str, Any]:
            answer = handler(params)
            self._note(int(params["chat_id"]), answer["result"])
            return answer

        return handle

    def _note(self, chat_id: int, result: Any) -> None:
        now = time.monotonic()
        self.first_visible.setdefault(chat_id, now)
        if not isinstance(result, dict) or result["text"].endswith(MARKER):
            return  # a draft, or a message still being written
        self.finals.setdefault(chat_id, []).append(now)
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Bot:
    """A bot under test in its own process."""

    process: asyncio.subprocess.Process
    log: Path

    def tail(self) -> str:
        """The end of its output, for error messages."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def _bot(fake: FakeTelegram, kind: str, work: Path, *options: str) -> AsyncIterator[Bot]:
    """Start `serve-bot` or `serve-floor` against `fake`; yield once it polls; stop it."""
    data_dir = work / f"data-{time.monotonic_ns()}"
    data_dir.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "GPTRELAY_", "AZURE_", "TELEGRAM_"))
    }
    log = data_dir / "bot.log"
    args = [kind, "--base-url", fake.base_url, "--token", fake.token, "--data-dir", str(data_dir), *options]
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *BOT_COMMAND, *args, cwd=ROOT, env=env, stdout=out, stderr=out
        )
    bot = Bot(process, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not fake.calls_of("getUpdates"):
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start polling:\n{bot.tail()}")
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


def _private(fake: FakeTelegram, user: int, text: str) -> None:
    fake.push_update(fake.private_text(PRIVATE_BASE_ID + user, text, first_name=f"User{user}"))


def _pct(samples: list[float], pct: int) -> float:
    """The pct-th percentile."""
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


@dataclass
class Throughput:
    """One bot's throughput run."""

    rate: float  # messages/s
    cpu_us: float  # bot process CPU per message
    requests: float  # Bot API requests per message
    latency_ms: list[float] = field(default_factory=list)


async def _throughput(kind: str, work: Path, *options: str) -> Throughput:
    """Warm up, then a burst of messages from many users, then single messages for latency."""
    async with BenchTelegram(flood=None) as fake, _bot(fake, kind, work, *options) as bot:
        numbers = itertools.count()

        async def burst(count: int) -> float:
            expected = fake.final_count + count
            started = time.monotonic()
            for _ in range(count):
                n = next(numbers)
                _private(fake, n % THROUGHPUT_USERS, f"{USER_TEXT}(q{n})")
            if not await fake.wait_finals(expected, 120):
                raise RuntimeError(f"{kind}: {fake.final_count} of {expected} answers:\n{bot.tail()}")
            return fake.last_final_at - started

        await burst(WARMUP_MESSAGES)
        await asyncio.sleep(SETTLE_S)
        calls, cpu = len(fake.calls), _cpu_seconds(bot.process.pid)
        elapsed = await burst(THROUGHPUT_MESSAGES)
        await asyncio.sleep(SETTLE_S)  # the bookkeeping after the last reply is part of the cost
        cpu = _cpu_seconds(bot.process.pid) - cpu
        calls = len(fake.calls) - calls  # every request meanwhile, getUpdates included
        result = Throughput(
            THROUGHPUT_MESSAGES / elapsed, cpu / THROUGHPUT_MESSAGES * 1e6, calls / THROUGHPUT_MESSAGES
        )
        for _ in range(LATENCY_SAMPLES):
            result.latency_ms.append(await burst(1) * 1e3)
        return result


@dataclass
class Flood:
    """The streaming run under flood limits."""

    flood_errors: int
    complete: int
    chats: int
    visible_delay_s: list[float]
    total_s: float


async def _flood(work: Path) -> Flood:
    """Streamed answers into many chats at once against Telegram's flood limits."""
    first_tokens = work / "first-tokens.txt"
    async with BenchTelegram(flood=FloodRules()) as fake:
        async with _bot(fake, "serve-bot", work, "--model", "stream", "--first-tokens", str(first_tokens)):
            tags: dict[int, str] = {}
            started = time.monotonic()
            for n in range(FLOOD_PRIVATE_CHATS):
                tags[PRIVATE_BASE_ID + n] = str(n)
                _private(fake, n, f"q{n} Tell me a long story, please.")
            for g in range(FLOOD_GROUP_CHATS):
                n = FLOOD_PRIVATE_CHATS + g
                chat = GROUP_BASE_ID - g
                tags[chat] = str(n)
                text = f"@{fake.bot_username} q{n} Tell me a long story, please."
                fake.push_update(fake.group_text(chat, PRIVATE_BASE_ID + n, text, title=f"Group {g}"))
            await fake.wait_finals(len(tags), FLOOD_TIMEOUT_S)
            total = (fake.last_final_at or time.monotonic()) - started
        first = {}
        for line in first_tokens.read_text().splitlines():
            tag, at = line.split()
            first[tag] = float(at)
        delays = [
            fake.first_visible[chat] - first[tag]
            for chat, tag in tags.items()
            if chat in fake.first_visible and tag in first
        ]
        if len(delays) < 2:
            raise RuntimeError(f"flood: first text in {len(delays)} of {len(tags)} chats")
        complete = sum(fake.texts(chat) == [STREAM_ANSWER] for chat in tags)
        return Flood(fake.flood_errors, complete, len(tags), delays, total)


@dataclass
class Load:
    """Many users at once with a slow model."""

    latency_s: list[float]  # of the chats answered right
    flood_errors: int


async def _load(work: Path, *, paced: bool) -> Load:
    """Seconds from message to final answer, LOAD_USERS users at once, a model thinking 2 s.

    `paced`: the fake enforces the flood limits and gptrelay paces as in production; otherwise
    neither (as in the throughput run).
    """
    options = ("--model", "slow") if paced else ("--model", "slow", "--no-pacing")
    async with BenchTelegram(flood=FloodRules() if paced else None) as fake:
        async with _bot(fake, "serve-bot", work, *options) as bot:
            pushed: dict[int, float] = {}
            for n in range(LOAD_USERS):
                pushed[PRIVATE_BASE_ID + n] = time.monotonic()
                _private(fake, n, f"q{n} What do you think?")
            await fake.wait_finals(LOAD_USERS, LOAD_TIMEOUT_S)
        right = [chat for chat in pushed if fake.texts(chat) == ["".join(ANSWER_CHUNKS)]]
        if len(right) < 2:
            raise RuntimeError(f"load: {len(right)} of {LOAD_USERS} answered right:\n{bot.tail()}")
        return Load([fake.finals[chat][0] - pushed[chat] for chat in right], fake.flood_errors)


async def run() -> list[Row]:
    """Every Telegram measurement, as table rows."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        floors: list[Throughput] = []
        relays: list[Throughput] = []
        for _ in range(ROUNDS):
            floors.append(await _throughput("serve-floor", work))
            relays.append(await _throughput("serve-bot", work, "--no-pacing", "--no-bursts"))
        floor = min(floors, key=lambda t: t.cpu_us)
        relay = min(relays, key=lambda t: t.cpu_us)
        flood = await _flood(work)
        load = await _load(work, paced=False)
        paced = await _load(work, paced=True)
    burst = f"{THROUGHPUT_MESSAGES:,} msgs from {THROUGHPUT_USERS} users at once"
    unlimited = "no flood rules in the fake, gptrelay's pacing waits off"
    setup = f"instant model, {unlimited}; best of {ROUNDS} alternating runs"
    streams = f"{FLOOD_PRIVATE_CHATS} private + {FLOOD_GROUP_CHATS} group chats"
    delays = [d * 1e3 for d in flood.visible_delay_s]
    return [
        Row(f"Telegram floor: bare PTB echo bot, {burst} ({setup})", floor.rate, "msg/s"),
        Row(f"Telegram gptrelay: adapter + core + SQLite, {burst} ({setup})", relay.rate, "msg/s"),
        Row("  Bot API requests per message, floor", floor.requests, ""),
        Row("  Bot API requests per message, gptrelay", relay.requests, ""),
        Row("  CPU per message of the bot process, floor", floor.cpu_us, "µs"),
        Row("  CPU per message of the bot process, gptrelay", relay.cpu_us, "µs"),
        Row("  gptrelay's CPU per message vs the floor's", relay.cpu_us / floor.cpu_us, "x", "<= 1.5"),
        Row("  latency, one message at a time, p50, floor", _pct(floor.latency_ms, 50), "ms"),
        Row("  latency, one message at a time, p50, gptrelay", _pct(relay.latency_ms, 50), "ms"),
        Row("  latency, one message at a time, p99, floor", _pct(floor.latency_ms, 99), "ms"),
        Row("  latency, one message at a time, p99, gptrelay", _pct(relay.latency_ms, 99), "ms"),
        Row(
            f"Telegram flood: 400-token answers into {streams} at once, fake enforcing the flood limits, "
            "flood errors",
            flood.flood_errors,
            "",
            "0",
        ),
        Row("  complete answers", flood.complete, f"of {flood.chats}", f"{flood.chats} of {flood.chats}"),
        Row("  first visible text after the model's first token, p50", _pct(delays, 50), "ms", "<= 500"),
        Row("  first visible text after the model's first token, max", max(delays), "ms", "<= 500"),
        Row("  until the last answer was complete", flood.total_s, "s"),
        Row(
            f"Telegram load: {LOAD_USERS} users at once, 2 s model ({unlimited}), p50",
            _pct(load.latency_s, 50),
            "s",
        ),
        Row(f"  slowest of the {len(load.latency_s)} right answers", max(load.latency_s), "s", "<= 4"),
        Row(
            f"  slowest of the {len(paced.latency_s)} right answers with gptrelay's pacing, "
            "fake enforcing the flood limits",
            max(paced.latency_s),
            "s",
        ),
        Row("  flood errors with gptrelay's pacing", paced.flood_errors, "", "0"),
    ]


if __name__ == "__main__":
    serve(sys.argv[1:])
