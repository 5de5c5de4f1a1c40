"""Helpers shared by the tests: free ports, gptrelay as a real process, and gptrelay served in-process."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from adapters.http import HttpAdapter
from bot.app import Runtime, open_runtime
from bot.config import Settings

HOST = "127.0.0.1"
# How long a `python -m bot run` may take to answer /healthz.
STARTUP_TIMEOUT_S = 15.0
# How long a bot process, killed or already exited, may take to be reaped at the end of a test.
REAP_TIMEOUT_S = 8.0
# The official client's timeout, unless a test asks for another.
CLIENT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- gptrelay as a real process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bot_env(openai_base_url: str, home: Path, **settings: str) -> dict[str, str]:
    """Environment of a `python -m bot` on `openai_base_url`, HOME and data dir in `home`, plus `settings`."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "OPENAI_BASE_URL": openai_base_url,
        "GPTRELAY_DATA_DIR": str(home / "data"),
        **settings,
    }


@asynccontextmanager
async def bot_subprocess(
    *args: str,
    env: dict[str, str],
    cwd: Path,
    stdin: int | None = None,
    stdout: int = asyncio.subprocess.DEVNULL,
    stderr: int | IO[Any] = asyncio.subprocess.PIPE,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m bot ARGS`, stderr piped; killed if still running at exit, reaped within REAP_TIMEOUT_S.

    A process that logs more than a pipe holds (64 KiB) before exit needs `stderr` to be a file.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        async with asyncio.timeout(REAP_TIMEOUT_S):
            await process.communicate()


async def wait_until_healthy(process: asyncio.subprocess.Process, port: int) -> None:
    """Poll /healthz until it answers, the process dies, or STARTUP_TIMEOUT_S pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if process.returncode is not None:
                pytest.fail(f"bot exited with {process.returncode} before serving")
            try:
                async with session.get(f"http://{HOST}:{port}/healthz") as response:
                    if response.status == 200 and await response.json() == {"status": "ok"}:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"bot did not answer /healthz within {STARTUP_TIMEOUT_S} s")


@asynccontextmanager
async def running_bot(env: dict[str, str], cwd: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m bot run`, yielded once /healthz answers; killed if the test leaves it running."""
    async with bot_subprocess("run", env=env, cwd=cwd) as process:
        await wait_until_healthy(process, port)
        yield process


# ---------------------------------------------------------------- gptrelay in-process


@dataclass
class Relay:
    """A running relay and a plain HTTP session pointed at its root."""

    port: int
    session: aiohttp.ClientSession
    runtime: Runtime

    @property
    def root_url(self) -> str:
        """Root URL of the relay, where /ask_gpt and /healthz are."""
        return f"http://{HOST}:{self.port}"

    @property
    def v1_url(self) -> str:
        """The relay's OpenAI-compatible base URL."""
        return f"{self.root_url}/v1"

    def openai_client(self, api_key: str = "sk-anything", timeout_s: float = CLIENT_TIMEOUT_S) -> AsyncOpenAI:
        """The official client pointed at the relay's /v1 routes, without retries of its own."""
        return AsyncOpenAI(base_url=self.v1_url, api_key=api_key, max_retries=0, timeout=timeout_s)


@asynccontextmanager
async def running_relay(settings: Settings, session_timeout_s: float | None = None) -> AsyncIterator[Relay]:
    """Serve the real HTTP adapter on the real runtime; the session has aiohttp's timeout unless told."""
    async with open_runtime(settings) as runtime:
        adapter = HttpAdapter(runtime.core, settings)
        await adapter.start()
        try:
            timeout = None if session_timeout_s is None else aiohttp.ClientTimeout(total=session_timeout_s)
            async with aiohttp.ClientSession(
                base_url=f"http://{HOST}:{adapter.port}", timeout=timeout
            ) as session:
                yield Relay(adapter.port, session, runtime)
        finally:
            await adapter.stop()


# ---------------------------------------------------------------- upstream requests


def roles_and_contents(body: dict[str, Any]) -> list[tuple[str, str]]:
    """The messages of an upstream request as (role, content) pairs."""
    return [(m["role"], m["content"]) for m in body["messages"]]
