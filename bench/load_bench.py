"""Load: 1,000 conversations at once with a model that takes 1 s, through the HTTP API and the fake Telegram.

The bot under test runs in a subprocess of its own (`python -m bench.load_bench serve`: what `gptrelay run`
does, with a bench model injected, as in the Telegram benchmark), so its peak RSS (/proc/<pid>/status VmHWM)
holds none of the driver's work. The model waits MODEL_S before its first token, then answers with what it
was asked: `re <prompt>; before: <the earlier user turns it was given>`, so the driver can tell which
request an answer belongs to and what context it was built from.

* HTTP: CONVERSATIONS distinct `user` values each POST one prompt to /ask_gpt at the same moment; then each
  sends FOLLOW_UPS more, SEND_GAP_S apart without waiting for the answers (concurrent across users).
  Order check per conversation: every answer names its own prompt, the answers form one chain (each saw
  exactly the prompts answered before it, so none ran alongside another of its conversation), and the
  stored turns (SQLite, read after the bot stopped) are that chain, user and assistant alternating.
  The same first burst is measured again with the default GPTRELAY_MAX_CONCURRENT.
* Telegram: CONVERSATIONS private chats each send one message through the fake Bot API
  (tests.fakes.telegram_server, in the driver's process) with no flood rules, gptrelay's pacing waits off
  and bursts off (GPTRELAY_BURST_WINDOW_S=0), as the Telegram benchmark's unlimited runs.

The driver (the aiohttp client, the fake Telegram) shares the machine's cores with the bot, so wall times
include its work; the CPU rows are the bot process's own (/proc/<pid>/stat, all threads).
`python -m bench.load_bench serve [--profile FILE] ...` is the subprocess side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.core_bench import Row
from bench.fakes import PacedStream, run_profiled
from bench.telegram_bench import BenchTelegram
from bot.config import Settings
from bot.model import Completion, GenerationParams, Turn, Usage
from tests.fakes.telegram_server import DEFAULT_TOKEN

ROOT = Path(__file__).resolve().parents[1]
BOT_COMMAND = (sys.executable, "-m", "bench.load_bench", "serve")
STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
ROUND_TIMEOUT_S = 60.0

CONVERSATIONS = 1_000
MODEL_S = 1.0
FOLLOW_UPS = 3
SEND_GAP_S = 0.05
WARMUP_USERS = 20
# GPTRELAY_MAX_CONCURRENT: the whole burst at once (also the default since it rose to 1024).
MAX_CONCURRENT = CONVERSATIONS
DEFAULT_MAX_CONCURRENT = Settings.model_fields["max_concurrent"].default
# Sockets: the driver holds one per request in flight, the bot one per client connection.
OPEN_FILES = 4 * CONVERSATIONS * (1 + FOLLOW_UPS)
PRIVATE_BASE_ID = 5_200_000_001
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
TARGET_TOTAL_S = 3.0
TARGET_RSS_MB = 300.0

NO_EARLIER = "-"


# ---------------------------------------------------------------- the bot side (subprocess)


def answer_for(turns: Sequence[Turn]) -> str:
    """What the bench model says: the prompt, and the earlier user turns of its context in order."""
    users = [turn.content for turn in turns if turn.role == "user"]
    earlier = ", ".join(users[:-1]) or NO_EARLIER
    return f"re {users[-1]}; before: {earlier}"


class EchoModel:
    """ModelClient that answers after MODEL_S with what it was asked (see answer_for)."""

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> PacedStream:
        """The whole answer at MODEL_S after the request, as a slow server's stream."""
        text = answer_for(turns)
        middle = len(text) // 2
        return PacedStream((text[:middle], text[middle:]), MODEL_S, 0.0, lambda: None)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """The whole answer after MODEL_S."""
        await asyncio.sleep(MODEL_S)
        text = answer_for(turns)
        return Completion((text,), Usage(100, len(text.split())))

    async def aclose(self) -> None:
        """Nothing to release."""


async def _serve_bot(args: argparse.Namespace) -> None:
    """What `gptrelay run` does (bot.app.serve), with the bench model; limits from GPTRELAY_* in env."""
    from adapters import telegram_pacing
    from bot.app import serve as serve_bot
    from bot.logsetup import setup_logging

    telegram = args.telegram_base_url is not None
    if telegram:
        # As the Telegram benchmark's unlimited runs: the gate keeps its bookkeeping but never waits.
        telegram_pacing.PRIVATE_INTERVAL_S = 0.0
        telegram_pacing.GROUP_INTERVAL_S = 0.0
        telegram_pacing.GLOBAL_PER_S = 10**9
    settings = Settings(
        http_enabled=not telegram,
        http_port=args.port,
        telegram_bot_token=DEFAULT_TOKEN if telegram else None,
        telegram_api_base_url=args.telegram_base_url or "http://127.0.0.1:9/bot",
        data_dir=Path(args.data_dir),
        openai_base_url="http://127.0.0.1:9/v1",
        model="bench-model",
        log_level=args.log_level,
        _env_file=None,
    )  # type: ignore[call-arg]
    setup_logging(settings)
    await serve_bot(settings, model=EchoModel())


def serve(argv: list[str]) -> None:
    """Entry point of the bot subprocess."""
    parser = argparse.ArgumentParser(prog="python -m bench.load_bench serve")
    parser.add_argument("--port", type=int, default=0, help="HTTP API port")
    parser.add_argument("--telegram-base-url", help="serve Telegram from this Bot API instead of HTTP")
    parser.add_argument("--data-dir", default=".")
    parser.add_argument("--log-level", default="INFO", help="gptrelay's log level (INFO: as `run`)")
    parser.add_argument("--profile", help="write cProfile stats of the whole process here")
    args = parser.parse_args(argv)
    run_profiled(_serve_bot(args), args.profile, "auto")  # as `gptrelay run`


# ---------------------------------------------------------------- the driver side


@dataclass
class Bot:
    """A bot under test in its own process."""

    process: asyncio.subprocess.Process
    data_dir: Path

    @property
    def db_path(self) -> Path:
        """Its SQLite file (the default inside the data directory)."""
        return self.data_dir / "gptrelay.sqlite3"

    def tail(self) -> str:
        """The end of its output, for error messages."""
        log = self.data_dir / "bot.log"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def cpu_s(self) -> float:
        """User + system CPU time so far, all threads (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def peak_rss_mb(self) -> float:
        """Peak resident memory so far (Linux /proc VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc")


def _raise_open_files() -> None:
    """Enough file descriptors for every request in flight (the bot inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _free_port() -> int:
    """An unused TCP port on loopback."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _bot(work: Path, env: dict[str, str], *options: str) -> AsyncIterator[Bot]:
    """Start the bot subprocess; yield it once started (the caller checks readiness); stop it."""
    data_dir = work / f"data-{time.monotonic_ns()}"
    data_dir.mkdir()
    ours = ("OPENAI_", "GPTRELAY_", "AZURE_", "TELEGRAM_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    args = (*BOT_COMMAND, "--data-dir", str(data_dir), *options)
    with (data_dir / "bot.log").open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, env=clean | env, stdout=out, stderr=out
        )
    bot = Bot(process, data_dir)
    try:
        yield bot
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_until(ready: Callable[[], Awaitable[bool]], bot: Bot) -> None:
    """Poll `ready` until it says True; fail if the bot exits or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not await ready():
        if bot.process.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the bot did not start:\n{bot.tail()}")
        await asyncio.sleep(0.05)


def _pct(samples: list[float], pct: int) -> float:
    """The pct-th percentile."""
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


# ---------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class Answer:
    """One /ask_gpt exchange as the client saw it."""

    prompt: str
    message: str | None  # None: no 200 answer
    latency_s: float


@dataclass
class Burst:
    """Every conversation sending at once."""

    answers: list[Answer]
    total_s: float
    bot_cpu_s: float

    @property
    def answered(self) -> int:
        """Requests answered with 200."""
        return sum(a.message is not None for a in self.answers)


async def _ask(session: aiohttp.ClientSession, url: str, user: str, prompt: str) -> Answer:
    """POST one prompt in the user's conversation."""
    started = time.monotonic()
    try:
        async with session.post(url, json={"prompt": prompt, "user": user}) as response:
            body = await response.json()
            message = body.get("message") if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        message = None
    return Answer(prompt, message, time.monotonic() - started)


def _user(n: int) -> str:
    return f"load-{n}"


def _prompt(n: int, k: int) -> str:
    return f"u{n} m{k}"


async def _first_burst(bot: Bot, session: aiohttp.ClientSession, url: str) -> Burst:
    """One prompt from each user, all at once."""
    started, cpu = time.monotonic(), bot.cpu_s()
    sends = (_ask(session, url, _user(n), _prompt(n, 0)) for n in range(CONVERSATIONS))
    answers = await asyncio.wait_for(asyncio.gather(*sends), ROUND_TIMEOUT_S)
    return Burst(list(answers), time.monotonic() - started, bot.cpu_s() - cpu)


async def _follow_ups(bot: Bot, session: aiohttp.ClientSession, url: str) -> Burst:
    """FOLLOW_UPS more prompts per user, SEND_GAP_S apart without waiting for answers."""

    async def one(n: int, k: int) -> Answer:
        await asyncio.sleep((k - 1) * SEND_GAP_S)
        return await _ask(session, url, _user(n), _prompt(n, k))

    started, cpu = time.monotonic(), bot.cpu_s()
    sends = (one(n, k) for n in range(CONVERSATIONS) for k in range(1, FOLLOW_UPS + 1))
    answers = await asyncio.wait_for(asyncio.gather(*sends), ROUND_TIMEOUT_S)
    return Burst(list(answers), time.monotonic() - started, bot.cpu_s() - cpu)


@dataclass
class Order:
    """The per-conversation order check."""

    ok: int  # answers match prompts, one chain, stored turns are that chain
    in_send_order: int  # ... and the chain is the order the client sent in


def _check_order(answers: list[Answer], db_path: Path) -> Order:
    """Check every conversation's answers against each other and against the stored turns."""
    by_user: dict[str, list[Answer]] = {}
    for answer in answers:
        by_user.setdefault(answer.prompt.split()[0], []).append(answer)
    ok = in_send_order = 0
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        for n in range(CONVERSATIONS):
            chain = _chain(by_user.get(f"u{n}", []))
            if chain is None or _stored(db, _user(n)) != chain:
                continue
            ok += 1
            sent = [_prompt(n, k) for k in range(FOLLOW_UPS + 1)]
            in_send_order += [prompt for role, prompt in chain[::2]] == sent
    return Order(ok, in_send_order)


def _chain(answers: list[Answer]) -> list[tuple[str, str]] | None:
    """The conversation's turns as the answers show them, or None if they contradict each other."""
    if len(answers) != FOLLOW_UPS + 1 or any(a.message is None for a in answers):
        return None
    parsed = []
    for answer in answers:
        assert answer.message is not None
        named, _, earlier = answer.message.removeprefix("re ").partition("; before: ")
        if named != answer.prompt:
            return None  # an answer to another request
        seen = [] if earlier == NO_EARLIER else earlier.split(", ")
        parsed.append((seen, answer))
    parsed.sort(key=lambda item: len(item[0]))
    turns: list[tuple[str, str]] = []
    for seen, answer in parsed:
        if seen != [prompt for role, prompt in turns[::2]]:
            return None  # it did not see exactly the prompts answered before it
        assert answer.message is not None
        turns += [("user", answer.prompt), ("assistant", answer.message)]
    return turns


def _stored(db: sqlite3.Connection, user: str) -> list[tuple[str, str]]:
    """The conversation's stored messages in sequence order."""
    rows = db.execute(
        "SELECT m.role, m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.key = ? ORDER BY m.seq",
        (f"http:chat:{user}",),
    )
    return [(role, content) for role, content in rows]


@dataclass
class HttpLoad:
    """The HTTP measurements."""

    first: Burst
    follow: Burst
    order: Order
    peak_rss_mb: float


def _healthy(session: aiohttp.ClientSession, base: str) -> Callable[[], Awaitable[bool]]:
    """Whether /healthz answers."""

    async def check() -> bool:
        try:
            async with session.get(f"{base}/healthz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    return check


def _session() -> aiohttp.ClientSession:
    """A client that opens as many connections as asked, each request bounded in time."""
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


@contextlib.asynccontextmanager
async def _http_bot(work: Path, max_concurrent: int) -> AsyncIterator[tuple[Bot, aiohttp.ClientSession, str]]:
    """A bot serving HTTP, warmed up; yields it, a client session and the /ask_gpt URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"GPTRELAY_MAX_CONCURRENT": str(max_concurrent)}
    async with _bot(work, env, "--port", str(port)) as bot, _session() as session:
        await _wait_until(_healthy(session, base), bot)
        url = f"{base}/ask_gpt"
        await asyncio.gather(*(_ask(session, url, f"warm-{n}", "warm up") for n in range(WARMUP_USERS)))
        yield bot, session, url


async def _http(work: Path) -> HttpLoad:
    """The first burst, the follow-ups, the order check and the bot's peak RSS."""
    async with _http_bot(work, MAX_CONCURRENT) as (bot, session, url):
        first = await _first_burst(bot, session, url)
        follow = await _follow_ups(bot, session, url)
        peak = bot.peak_rss_mb()
    return HttpLoad(first, follow, _check_order(first.answers + follow.answers, bot.db_path), peak)


async def _http_default_limit(work: Path) -> Burst:
    """The first burst again, with the default GPTRELAY_MAX_CONCURRENT."""
    async with _http_bot(work, DEFAULT_MAX_CONCURRENT) as (bot, session, url):
        return await _first_burst(bot, session, url)


# ---------------------------------------------------------------- Telegram


@dataclass
class TelegramLoad:
    """The Telegram measurements."""

    right: int  # chats whose only message from the bot is the right answer
    latency_s: list[float]  # of the chats answered right
    total_s: float
    bot_cpu_s: float
    peak_rss_mb: float


def _polling(fake: BenchTelegram) -> Callable[[], Awaitable[bool]]:
    """Whether the bot has started polling."""

    async def check() -> bool:
        return bool(fake.calls_of("getUpdates"))

    return check


async def _telegram(work: Path) -> TelegramLoad:
    """One message from each of CONVERSATIONS private chats at once."""
    env = {"GPTRELAY_MAX_CONCURRENT": str(MAX_CONCURRENT), "GPTRELAY_BURST_WINDOW_S": "0"}
    async with (
        BenchTelegram(flood=None) as fake,
        _bot(work, env, "--telegram-base-url", fake.base_url) as bot,
    ):
        await _wait_until(_polling(fake), bot)
        for n in range(WARMUP_USERS):
            fake.push_update(fake.private_text(PRIVATE_BASE_ID + CONVERSATIONS + n, "warm up"))
        if not await fake.wait_finals(WARMUP_USERS, ROUND_TIMEOUT_S):
            raise RuntimeError(f"telegram warm-up unanswered:\n{bot.tail()}")
        pushed: dict[int, float] = {}
        started, cpu = time.monotonic(), bot.cpu_s()
        for n in range(CONVERSATIONS):
            pushed[PRIVATE_BASE_ID + n] = time.monotonic()
            fake.push_update(fake.private_text(PRIVATE_BASE_ID + n, f"t{n}", first_name=f"User{n}"))
        await fake.wait_finals(WARMUP_USERS + CONVERSATIONS, ROUND_TIMEOUT_S)
        total = (fake.last_final_at or time.monotonic()) - started
        cpu = bot.cpu_s() - cpu
        peak = bot.peak_rss_mb()
    expected = {PRIVATE_BASE_ID + n: f"re t{n}; before: {NO_EARLIER}" for n in range(CONVERSATIONS)}
    right = [chat for chat, text in expected.items() if fake.texts(chat) == [text]]
    if len(right) < 2:
        raise RuntimeError(f"telegram: {len(right)} of {CONVERSATIONS} answered right:\n{bot.tail()}")
    latency = [fake.finals[chat][0] - pushed[chat] for chat in right]
    return TelegramLoad(len(right), latency, total, cpu, peak)


# ---------------------------------------------------------------- the table


async def run() -> list[Row]:
    """Every load measurement, as table rows."""
    _raise_open_files()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        http = await _http(work)
        default = await _http_default_limit(work)
        telegram = await _telegram(work)
    n = CONVERSATIONS
    first = [a.latency_s for a in http.first.answers if a.message is not None]
    model = f"{MODEL_S:.0f} s model"
    limit = f"GPTRELAY_MAX_CONCURRENT={MAX_CONCURRENT}"
    all_of = f"{n:,} of {n:,}"
    follow = n * FOLLOW_UPS
    return [
        Row(
            f"Load, HTTP: {n:,} conversations at once, one POST /ask_gpt each, {model} ({limit}), "
            "until the last answer",
            http.first.total_s,
            "s",
            f"< {TARGET_TOTAL_S:.0f}",
        ),
        Row("  answered", http.first.answered, f"of {n:,}", all_of),
        Row("  latency p50", _pct(first, 50), "s"),
        Row("  latency p99", _pct(first, 99), "s"),
        Row("  CPU of the bot process per message", http.first.bot_cpu_s / n * 1e3, "ms"),
        Row(
            f"  then {FOLLOW_UPS} more per conversation, {SEND_GAP_S * 1e3:.0f} ms apart without waiting "
            "(all conversations at once), until the last answer",
            http.follow.total_s,
            "s",
        ),
        Row("  answered", http.follow.answered, f"of {follow:,}", f"{follow:,} of {follow:,}"),
        Row("  CPU of the bot process per message", http.follow.bot_cpu_s / follow * 1e3, "ms"),
        Row(
            "  conversations in order: each answer names its prompt and saw exactly the earlier turns, "
            "stored turns in that order",
            http.order.ok,
            f"of {n:,}",
            all_of,
        ),
        # Each request has its own connection: HTTP promises no order across connections.
        Row("  of which the core took in the order sent", http.order.in_send_order, f"of {n:,}"),
        Row("  peak RSS of the bot process", http.peak_rss_mb, "MB", f"< {TARGET_RSS_MB:.0f}"),
        Row(
            f"  the first burst with the default GPTRELAY_MAX_CONCURRENT={DEFAULT_MAX_CONCURRENT}, "
            "until the last answer",
            default.total_s,
            "s",
        ),
        Row(
            f"Load, Telegram: {n:,} private chats at once, one message each, {model} ({limit}, no flood "
            "rules in the fake, gptrelay's pacing waits off, bursts off), until the last answer",
            telegram.total_s,
            "s",
        ),
        Row("  answered right", telegram.right, f"of {n:,}", all_of),
        Row("  latency p50", _pct(telegram.latency_s, 50), "s"),
        Row("  latency p99", _pct(telegram.latency_s, 99), "s"),
        Row("  CPU of the bot process per message", telegram.bot_cpu_s / n * 1e3, "ms"),
        Row("  peak RSS of the bot process", telegram.peak_rss_mb, "MB", f"< {TARGET_RSS_MB:.0f}"),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m bench load (this module's own entry point is the bot side: serve ...)")
    serve(sys.argv[2:])
