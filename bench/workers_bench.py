"""Workers: one message load through 1 worker on SQLite and 1, 2 and 3 workers on one PostgreSQL.

Each worker is a process of its own (`python -m bench.workers_bench serve`: `gptrelay run`'s wiring with
an instant bench model injected, as in the load benchmark) serving the HTTP API; the PostgreSQL runs get
a fresh schema each on the server at GPTRELAY_BENCH_POSTGRES_URL (default: the test server), the SQLite
run a file of its own. The driver sends MESSAGES messages from CONVERSATIONS conversations to POST
/ask_gpt, each message to a random worker (seeded, so every run and setup sends the same plan), a
conversation's next message SEND_GAP_S after the one before without waiting for its answer,
CONVERSATIONS_AT_ONCE conversations at a time; a last setup keeps each conversation on one of 3
workers instead. The model echoes its prompt and the earlier user turns it was given (as in the load
benchmark), so the driver checks every conversation's answers form one chain.

The driver, the workers and PostgreSQL share the machine's cores. The CPU rows split the time: the
workers' processes and the PostgreSQL backends serving them (/proc/<pid>/stat, backends found in
pg_stat_activity by application_name), the driver's own process, and the whole machine (/proc/stat).
`python -m bench.workers_bench serve --port N --data-dir DIR` is the subprocess side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from bench.core_bench import Row
from bench.fakes import PacedStream
from bench.load_bench import NO_EARLIER, answer_for
from bot.config import Settings
from bot.model import Completion, GenerationParams, Turn, Usage
from storage.url import mask_password

ROOT = Path(__file__).resolve().parents[1]
BOT_COMMAND = (sys.executable, "-m", "bench.workers_bench", "serve")
POSTGRES_URL = os.environ.get("GPTRELAY_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
# The workers' connections carry this name, so their backends can be found in pg_stat_activity.
APPLICATION_NAME = "gptrelay-workers-bench"
STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CORES = os.cpu_count() or 1

CONVERSATIONS = 300
MESSAGES_PER_CONVERSATION = 10
MESSAGES = CONVERSATIONS * MESSAGES_PER_CONVERSATION
CONVERSATIONS_AT_ONCE = 50
SEND_GAP_S = 0.01
MODEL_S = 0.0
WARMUP_PER_WORKER = 20
SEED = 8


@dataclass(frozen=True)
class Setup:
    """Which store, how many workers, and whether a conversation keeps to one worker."""

    store: str  # "sqlite" or "postgres"
    workers: int
    # Every message of a conversation to the worker its first went to, as a load balancer hashing
    # the `user` would do; otherwise each message to a random worker.
    sticky: bool = False

    @property
    def label(self) -> str:
        """As the table names it."""
        store = "SQLite" if self.store == "sqlite" else "PostgreSQL"
        workers = f"{self.workers} worker{'s' if self.workers > 1 else ''} on {store}"
        if self.workers == 1:
            return workers
        spread = "each conversation on one worker" if self.sticky else "each message to a random worker"
        return f"{workers}, {spread}"


SETUPS = (
    Setup("sqlite", 1),
    Setup("postgres", 1),
    Setup("postgres", 2),
    Setup("postgres", 3),
    Setup("postgres", 3, sticky=True),
)


# ---------------------------------------------------------------- the worker side (subprocess)


class InstantEchoModel:
    """ModelClient that answers after MODEL_S with the prompt and the earlier user turns (answer_for)."""

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> PacedStream:
        """The whole answer as one chunk."""
        return PacedStream((answer_for(turns),), MODEL_S, 0.0, lambda: None)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """The whole answer."""
        await asyncio.sleep(MODEL_S)
        text = answer_for(turns)
        return Completion((text,), Usage(100, len(text.split())))

    async def probe(self) -> None:
        """Always ready."""

    async def aclose(self) -> None:
        """Nothing to release."""


async def _serve_worker(args: argparse.Namespace) -> None:
    """What `gptrelay run` does (bot.app.serve) with the bench model; the store from GPTRELAY_* in env."""
    from bot.app import serve
    from bot.logsetup import setup_logging

    settings = Settings(
        http_port=args.port,
        data_dir=Path(args.data_dir),
        openai_base_url="http://127.0.0.1:9/v1",
        model="bench-model",
        _env_file=None,
    )  # type: ignore[call-arg]
    setup_logging(settings)
    await serve(settings, model=InstantEchoModel())


def serve(argv: list[str]) -> None:
    """Entry point of a worker subprocess."""
    parser = argparse.ArgumentParser(prog="python -m bench.workers_bench serve")
    parser.add_argument("--port", type=int, required=True, help="HTTP API port")
    parser.add_argument("--data-dir", required=True)
    asyncio.run(_serve_worker(parser.parse_args(argv)))


# ---------------------------------------------------------------- CPU accounting (Linux /proc)


def process_cpu_s(pid: int) -> float:
    """User + system CPU time of a process so far, all threads; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of every core since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class CpuSnapshot:
    """CPU seconds used so far by each part."""

    workers: float
    postgres: dict[int, float]
    driver: float
    busy: float
    total: float


async def _backend_pids(admin: asyncpg.Connection | None) -> list[int]:
    """The PostgreSQL backends serving the workers."""
    if admin is None:
        return []
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME)
    return [row["pid"] for row in rows]


async def _snapshot(workers: list[Worker], admin: asyncpg.Connection | None) -> CpuSnapshot:
    """Every part's CPU time now."""
    busy, total = machine_cpu_s()
    return CpuSnapshot(
        workers=sum(process_cpu_s(w.process.pid) for w in workers),
        postgres={pid: process_cpu_s(pid) for pid in await _backend_pids(admin)},
        driver=time.process_time(),
        busy=busy,
        total=total,
    )


# ---------------------------------------------------------------- the driver side


@dataclass
class Worker:
    """A worker process and its HTTP API."""

    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        """Its POST /ask_gpt."""
        return f"http://127.0.0.1:{self.port}/ask_gpt"

    def tail(self) -> str:
        """The end of its log, for error messages."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def _free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Database:
    """A fresh PostgreSQL schema for one setup."""

    url: str  # for the workers
    admin: asyncpg.Connection  # the driver's own connection
    schema: str

    async def conversation_lookups(self) -> int:
        """Index and sequential scans of the conversations table so far (flushed by exited backends)."""
        # A backend reports its counts when it exits: wait until the workers' backends are gone.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not await _backend_pids(self.admin):
                break
            await asyncio.sleep(0.05)
        scans = await self.admin.fetchval(
            "SELECT COALESCE(idx_scan, 0) + COALESCE(seq_scan, 0) FROM pg_stat_user_tables "
            "WHERE schemaname = $1 AND relname = 'conversations'",
            self.schema,
        )
        return int(scans or 0)


@contextlib.asynccontextmanager
async def _postgres_schema() -> AsyncIterator[Database]:
    """A fresh schema, with an admin connection; dropped at exit."""
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"no PostgreSQL at {mask_password(POSTGRES_URL)} ({exc}): set GPTRELAY_BENCH_POSTGRES_URL"
        ) from exc
    schema = f"gptrelay_bench_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        join = "&" if "?" in POSTGRES_URL else "?"
        yield Database(
            f"{POSTGRES_URL}{join}search_path={schema}&application_name={APPLICATION_NAME}", admin, schema
        )
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


@contextlib.asynccontextmanager
async def _workers(work: Path, count: int, database_url: str | None) -> AsyncIterator[list[Worker]]:
    """`count` worker processes on one store, yielded once all answer; stopped with SIGTERM at exit."""
    ours = ("OPENAI_", "GPTRELAY_", "AZURE_", "TELEGRAM_", "DISCORD_")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    workers: list[Worker] = []
    try:
        for n in range(count):
            data_dir = work / f"worker-{time.monotonic_ns()}"
            data_dir.mkdir()
            env = {"GPTRELAY_WORKER_ID": f"bench-{n}", "GPTRELAY_MAX_CONCURRENT": "4096"}
            if database_url is not None:
                env["GPTRELAY_DATABASE_URL"] = database_url
            port = _free_port()
            log = data_dir / "worker.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    *BOT_COMMAND,
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data_dir),
                    cwd=ROOT,
                    env=clean | env,
                    stdout=out,
                    stderr=out,
                )
            workers.append(Worker(process, port, log))
        async with _session() as session:
            await asyncio.gather(*(_wait_ready(session, w) for w in workers))
        yield workers
    finally:
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.terminate()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()


def _session() -> aiohttp.ClientSession:
    """A client that opens as many connections as asked, each request bounded in time."""
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))


async def _wait_ready(session: aiohttp.ClientSession, worker: Worker) -> None:
    """Poll /healthz until the worker answers; fail if it exits or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    health = worker.url.replace("/ask_gpt", "/healthz")
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(health) as response:
                if response.status == 200:
                    return
        if worker.process.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"a worker did not start:\n{worker.tail()}")
        await asyncio.sleep(0.05)


@dataclass(frozen=True, slots=True)
class Answer:
    """One /ask_gpt exchange as the client saw it."""

    conversation: int
    prompt: str
    message: str | None  # None: no 200 answer
    latency_s: float


async def _ask(session: aiohttp.ClientSession, worker: Worker, conversation: int, prompt: str) -> Answer:
    """POST one prompt in the conversation."""
    started = time.monotonic()
    try:
        async with session.post(worker.url, json={"prompt": prompt, "user": f"w{conversation}"}) as response:
            body = await response.json()
            message = body.get("message") if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        message = None
    return Answer(conversation, prompt, message, time.monotonic() - started)


def _plan() -> list[list[float]]:
    """Per conversation, a number in [0, 1) per message that picks its worker (the same in every setup)."""
    rng = random.Random(SEED)
    return [[rng.random() for _ in range(MESSAGES_PER_CONVERSATION)] for _ in range(CONVERSATIONS)]


async def _send(workers: list[Worker], picks: list[list[float]], sticky: bool) -> list[Answer]:
    """Every conversation's messages, SEND_GAP_S apart, CONVERSATIONS_AT_ONCE conversations at a time."""
    at_once = asyncio.Semaphore(CONVERSATIONS_AT_ONCE)

    async def conversation(c: int, session: aiohttp.ClientSession) -> list[Answer]:
        async with at_once:
            sends = []
            for k, pick in enumerate(picks[c]):
                if k:
                    await asyncio.sleep(SEND_GAP_S)
                worker = workers[int((picks[c][0] if sticky else pick) * len(workers))]
                sends.append(asyncio.create_task(_ask(session, worker, c, f"c{c}-m{k}")))
            return list(await asyncio.gather(*sends))

    async with _session() as session:
        done = await asyncio.gather(*(conversation(c, session) for c in range(CONVERSATIONS)))
    return [answer for answers in done for answer in answers]


async def _warm_up(workers: list[Worker]) -> None:
    """A few conversations per worker: connections, pools and code paths warm."""
    async with _session() as session:
        await asyncio.gather(
            *(
                _ask(session, w, -1 - n - i * WARMUP_PER_WORKER, "warm up")
                for i, w in enumerate(workers)
                for n in range(WARMUP_PER_WORKER)
            )
        )


def _in_order(answers: list[Answer]) -> int:
    """Conversations whose answers form one chain: each saw exactly the prompts answered before it."""
    by_conversation: dict[int, list[Answer]] = {}
    for answer in answers:
        by_conversation.setdefault(answer.conversation, []).append(answer)
    ok = 0
    for mine in by_conversation.values():
        seen: list[tuple[list[str], str]] = []
        for answer in mine:
            if answer.message is None:
                break
            named, _, earlier = answer.message.removeprefix("re ").partition("; before: ")
            if named != answer.prompt:
                break
            seen.append(([] if earlier == NO_EARLIER else earlier.split(", "), answer.prompt))
        else:
            seen.sort(key=lambda item: len(item[0]))
            ok += all(before == [p for _, p in seen[:i]] for i, (before, _) in enumerate(seen))
    return ok


@dataclass
class Result:
    """One setup's measurements."""

    setup: Setup
    took_s: float
    answers: list[Answer]
    in_order: int
    workers_cpu_s: float
    postgres_cpu_s: float
    driver_cpu_s: float
    busy_cpu_s: float
    total_cpu_s: float
    conversation_lookups: int | None  # PostgreSQL only; warm-up included

    @property
    def answered(self) -> int:
        """Requests answered with 200."""
        return sum(a.message is not None for a in self.answers)

    def latency_ms(self, pct: int) -> float:
        """The pct-th percentile of the answered requests' latency."""
        samples = [a.latency_s * 1e3 for a in self.answers if a.message is not None]
        return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


async def _measure(setup: Setup, work: Path) -> Result:
    """Start the setup's workers on a fresh store, send the plan, stop them."""
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(_postgres_schema()) if setup.store == "postgres" else None
        admin = database.admin if database else None
        async with _workers(work, setup.workers, database.url if database else None) as workers:
            await _warm_up(workers)
            before = await _snapshot(workers, admin)
            started = time.monotonic()
            answers = await _send(workers, _plan(), setup.sticky)
            took = time.monotonic() - started
            after = await _snapshot(workers, admin)
        lookups = await database.conversation_lookups() if database else None
    postgres = sum(cpu - before.postgres.get(pid, 0.0) for pid, cpu in after.postgres.items())
    return Result(
        setup,
        took,
        answers,
        _in_order(answers),
        after.workers - before.workers,
        postgres,
        after.driver - before.driver,
        after.busy - before.busy,
        after.total - before.total,
        lookups,
    )


def _rows(result: Result) -> list[Row]:
    """One setup's table rows."""
    per_message = 1e3 / MESSAGES
    ours = result.workers_cpu_s + result.postgres_cpu_s + result.driver_cpu_s
    rows = [
        Row(
            f"Workers, {result.setup.label}: {MESSAGES:,} messages from {CONVERSATIONS} conversations, "
            f"{CONVERSATIONS_AT_ONCE} conversations at a time, instant model",
            MESSAGES / result.took_s,
            "msg/s",
        ),
        Row("  latency p50", result.latency_ms(50), "ms"),
        Row("  latency p99", result.latency_ms(99), "ms"),
        Row("  answered", result.answered, f"of {MESSAGES:,}"),
        Row(
            "  conversations in order: each answer saw exactly the prompts answered before it",
            result.in_order,
            f"of {CONVERSATIONS}",
        ),
        Row("  CPU per message: the workers", result.workers_cpu_s * per_message, "ms"),
        Row("  CPU per message: their PostgreSQL backends", result.postgres_cpu_s * per_message, "ms"),
        Row("  CPU per message: the driver (client)", result.driver_cpu_s * per_message, "ms"),
        Row(
            f"  {CORES} cores / the three's CPU per message: the rate on an idle machine (estimate)",
            CORES * MESSAGES / ours,
            "msg/s",
        ),
        Row(f"  machine CPU busy ({CORES} cores)", 100 * result.busy_cpu_s / result.total_cpu_s, "%"),
        Row(
            "  of which other processes (PostgreSQL's own, other jobs on the machine)",
            # Clock ticks (10 ms) are read at slightly different moments: a tiny negative is zero.
            max(0.0, 100 * (result.busy_cpu_s - ours) / result.total_cpu_s),
            "%",
        ),
    ]
    if result.conversation_lookups is not None:
        warm = WARMUP_PER_WORKER * result.setup.workers
        rows.append(
            Row(
                "  PostgreSQL: conversation row lookups per message (each poll for a turn is one)",
                result.conversation_lookups / (MESSAGES + warm),
                "",
            )
        )
    return rows


async def run() -> list[Row]:
    """Every setup in turn, as table rows."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for setup in SETUPS:
            rows += _rows(await _measure(setup, Path(tmp)))
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit(
            "usage: python -m bench workers (this module's own entry point is the worker side: serve ...)"
        )
    serve(sys.argv[2:])
