"""Three `gptrelay run` workers on one PostgreSQL, each conversation's messages spread over them at random.

3,000 messages of 300 conversations go to POST /ask_gpt of a random worker each, a conversation's next
message 20-100 ms after the one before without waiting for its answer. The fake model answers with the
prompt and the earlier user turns it was sent, so each answer shows its context. Arrival order is inbox
id order (the database's sequence); every message must be answered once, in that order, having seen
exactly the turns that arrived before it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from storage.postgres import PostgresStore
from storage.url import mask_password
from tests.fakes.openai_server import CONTEXT_JOIN, CONTEXT_MARK, ECHO_PREFIX, FakeOpenAI
from tests.helpers import HOST, bot_env, bot_subprocess, free_port, wait_until_healthy

# Read at import: the autouse clean_environment fixture removes GPTRELAY_* before each test.
POSTGRES_URL = os.environ.get("GPTRELAY_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("GPTRELAY_REQUIRE_POSTGRES") == "1"
POSTGRES_PROBE_TIMEOUT_S = 3.0

WORKERS = 3
CONVERSATIONS = 300
MESSAGES_PER_CONVERSATION = 10
# A conversation's next message follows the one before by this much (s), its answer not awaited.
SEND_GAP_S = (0.02, 0.1)
# Conversations sending at once: enough to keep every worker busy, few enough for 2 cores.
CONVERSATIONS_AT_ONCE = 60
# Messages that must reach a worker while their predecessor is being answered by another.
MIN_OVERLAPPING = 300
# Fixed, so a failure can be replayed with the same plan.
SEED = 8
REQUEST_TIMEOUT_S = 60.0
# More inserts at once than the store's pool has connections.
CONCURRENT_ADDS = 100
STOP_TIMEOUT_S = 30.0
# What a worker logs when it gives up waiting for another worker's earlier message.
ORDER_GIVEN_UP = "unanswered for"


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The test server's URL with a fresh, uniquely named schema as search_path; dropped afterwards."""
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=POSTGRES_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problem = (
            f"no PostgreSQL at {mask_password(POSTGRES_URL)} ({type(exc).__name__}: {exc}); "
            "set GPTRELAY_TEST_POSTGRES_URL to a server where tests may create schemas"
        )
        if REQUIRE_POSTGRES:
            pytest.fail(f"GPTRELAY_REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)
    schema = f"gptrelay_test_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


# ---------------------------------------------------------------- the workers


@dataclass
class Worker:
    """One `gptrelay run` process and where it listens and logs."""

    process: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def ask_url(self) -> str:
        """Its POST /ask_gpt."""
        return f"http://{HOST}:{self.port}/ask_gpt"

    async def stop(self) -> int:
        """SIGTERM, then its exit code."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            return await self.process.wait()


@asynccontextmanager
async def running_workers(fake: FakeOpenAI, tmp_path: Path, database_url: str) -> AsyncIterator[list[Worker]]:
    """WORKERS `gptrelay run` processes on one database, yielded once all serve; killed if left running."""
    async with AsyncExitStack() as stack:
        workers = []
        for n in range(WORKERS):
            home = tmp_path / f"worker{n}"
            home.mkdir()
            port = free_port()
            env = bot_env(
                fake.base_url,
                home,
                GPTRELAY_HTTP_PORT=str(port),
                GPTRELAY_DATABASE_URL=database_url,
                GPTRELAY_WORKER_ID=f"worker-{n}",
                GPTRELAY_MAX_CONCURRENT="4096",
                # Every turn goes to the model, none summarised or dropped.
                GPTRELAY_CONTEXT_OVERFLOW="drop",
                GPTRELAY_CONTEXT_WINDOWS=json.dumps({"gpt-4o-mini": 1_000_000}),
            )
            log = home / "bot.log"
            # A file, not a pipe: thousands of INFO lines would fill a pipe nobody reads.
            stderr = stack.enter_context(log.open("wb"))
            process = await stack.enter_async_context(bot_subprocess("run", env=env, cwd=home, stderr=stderr))
            workers.append(Worker(process, port, log))
        await asyncio.gather(*(wait_until_healthy(w.process, w.port) for w in workers))
        yield workers


# ---------------------------------------------------------------- the client


@dataclass(frozen=True)
class Sent:
    """One POST /ask_gpt and what came back."""

    user: str
    prompt: str
    worker: int
    status: int
    message: str | None


def plan(rng: random.Random) -> list[list[tuple[str, int, float]]]:
    """Per conversation: (prompt, worker, delay after the previous message) of each message."""
    return [
        [
            (f"c{c}-m{k}", rng.randrange(WORKERS), 0.0 if k == 0 else rng.uniform(*SEND_GAP_S))
            for k in range(MESSAGES_PER_CONVERSATION)
        ]
        for c in range(CONVERSATIONS)
    ]


async def ask(session: aiohttp.ClientSession, worker: Worker, index: int, user: str, prompt: str) -> Sent:
    """POST one prompt in the user's conversation; status 0 when no response came."""
    try:
        async with session.post(worker.ask_url, json={"prompt": prompt, "user": user}) as response:
            body = await response.json(content_type=None)
            message = body.get("message") if isinstance(body, dict) else None
            return Sent(user, prompt, index, response.status, message)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sent(user, prompt, index, 0, repr(exc))


async def send_all(workers: list[Worker], messages: list[list[tuple[str, int, float]]]) -> list[Sent]:
    """Every conversation's messages on schedule, CONVERSATIONS_AT_ONCE conversations at a time."""
    at_once = asyncio.Semaphore(CONVERSATIONS_AT_ONCE)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def conversation(c: int, session: aiohttp.ClientSession) -> list[Sent]:
        user = f"conv{c}"
        async with at_once:
            sends = []
            for prompt, index, gap in messages[c]:
                await asyncio.sleep(gap)
                sends.append(asyncio.create_task(ask(session, workers[index], index, user, prompt)))
            return list(await asyncio.gather(*sends))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        done = await asyncio.gather(*(conversation(c, session) for c in range(CONVERSATIONS)))
    return [sent for sends in done for sent in sends]


def seen_in(answer: str, prompt: str) -> list[str] | None:
    """The earlier user turns an answer says the model saw; None if it is not the answer to `prompt`."""
    head = f"{ECHO_PREFIX}{prompt}{CONTEXT_MARK}"
    if not answer.startswith(head):
        return None
    counts, _, listed = answer[len(head) :].partition(": ")
    earlier = listed.split(CONTEXT_JOIN) if listed else []
    users, answers = (int(part.split()[0]) for part in counts.split(", "))
    if users != len(earlier) or answers != len(earlier):
        return None  # the model did not get each earlier turn's answer with it
    return earlier


# ---------------------------------------------------------------- the tests


async def test_inbox_ids_follow_the_order_of_the_calls(postgres_url: str) -> None:
    """A conversation's messages are queued in call order; their ids must agree, or workers deadlock."""
    store = await PostgresStore.open(postgres_url, worker="worker-0")
    try:
        calls = [
            asyncio.create_task(store.inbox_add("http", "c", f"m{n}", "{}", "http:chat:c"))
            for n in range(CONCURRENT_ADDS)
        ]
        ids = await asyncio.gather(*calls)
    finally:
        await store.close()
    assert ids == sorted(ids)
    assert None not in ids


@pytest.mark.timeout(240)
async def test_three_workers_answer_every_message_once_in_arrival_order(
    tmp_path: Path, postgres_url: str
) -> None:
    """3,000 messages of 300 conversations over 3 workers: each answered once, in order, with its context."""
    messages = plan(random.Random(SEED))
    fake = FakeOpenAI(echo_context=True)
    fake.access_log = False  # 3,000 access lines would only slow the test
    async with fake, running_workers(fake, tmp_path, postgres_url) as workers:
        started = time.monotonic()
        sent = await send_all(workers, messages)
        took = time.monotonic() - started
        codes = [await worker.stop() for worker in workers]
    logs = [worker.log.read_text(errors="replace") for worker in workers]
    total = CONVERSATIONS * MESSAGES_PER_CONVERSATION
    print(f"{total} messages through {WORKERS} workers in {took:.1f} s ({total / took:.0f}/s)")

    # Every request answered with its own answer; the model asked once per message.
    assert len(sent) == total
    failed = [s for s in sent if s.status != 200 or s.message is None]
    assert failed == [], f"{len(failed)} requests failed, e.g. {failed[:3]}"
    answers = {s.prompt: s.message for s in sent}
    asked = Counter(
        r.body["messages"][-1]["content"] for r in fake.requests if r.path == "/v1/chat/completions"
    )
    assert set(asked) == set(answers)
    assert max(asked.values()) == 1

    db = await asyncpg.connect(postgres_url)
    try:
        inbox = await db.fetch(
            "SELECT id, conversation_key, worker, status, payload, received_at, finished_at FROM inbox "
            "ORDER BY id"
        )
        stored = await db.fetch(
            "SELECT c.key, m.role, m.content, m.status FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id ORDER BY c.key, m.seq"
        )
        locked = await db.fetchval("SELECT COUNT(*) FROM conversations WHERE lock_owner IS NOT NULL")
    finally:
        await db.close()

    # Arrival order: inbox ids. Each message recorded once, by the worker it was sent to, and answered.
    assert len(inbox) == total
    assert Counter(row["status"] for row in inbox) == {"answered": total}
    sent_to = {s.prompt: f"worker-{s.worker}" for s in sent}
    arrived: dict[str, list[str]] = defaultdict(list)
    for row in inbox:
        prompt = json.loads(row["payload"])["text"]
        assert row["worker"] == sent_to[prompt]
        arrived[row["conversation_key"]].append(prompt)
    assert locked == 0

    # Stored turns: user and assistant alternating in arrival order; each answer saw exactly the
    # user turns that arrived before it, in that order.
    turns: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for row in stored:
        turns[row["key"]].append((row["role"], row["content"], row["status"]))
    assert sum(role == "user" for rows in turns.values() for role, _, _ in rows) == total
    assert set(turns) == set(arrived)
    disordered = []
    for key, prompts in arrived.items():
        expected = [turn for p in prompts for turn in (("user", p, "ok"), ("assistant", answers[p], "ok"))]
        if turns[key] != expected:
            disordered.append(key)
            continue
        for position, prompt in enumerate(prompts):
            assert seen_in(answers[prompt], prompt) == prompts[:position], (key, prompt)
    assert disordered == [], f"{len(disordered)} conversations stored out of arrival order: {disordered[:5]}"

    # The order was really kept across workers: many messages reached a worker while the message
    # before them was still being answered by another, so they had to wait for it.
    by_key: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in inbox:
        by_key[row["conversation_key"]].append(row)
    overlapping = sum(
        later["worker"] != earlier["worker"] and later["received_at"] < earlier["finished_at"]
        for rows in by_key.values()
        for earlier, later in itertools.pairwise(rows)
    )
    print(f"{overlapping} messages waited for their predecessor on another worker")
    assert overlapping >= MIN_OVERLAPPING

    # Clean stops, and no worker ever gave up waiting for another's earlier message.
    assert codes == [0] * WORKERS, [log[-3000:] for log in logs]
    for log in logs:
        assert "Traceback" not in log, log[-3000:]
        assert ORDER_GIVEN_UP not in log, log[-3000:]
