"""The npm `openai` package (tests/node/client.mjs) against gptrelay's /v1 routes, gptrelay on FakeOpenAI."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import running_relay

NODE_DIR = Path(__file__).resolve().parent / "node"
CLIENT_SCRIPT = NODE_DIR / "client.mjs"
NODE_OPENAI = NODE_DIR / "node_modules" / "openai" / "package.json"
NODE_TIMEOUT_S = 30.0
API_ERROR_EXIT = 3  # client.mjs's exit code when the API answered with an error
RELAY_KEY = "relay-key-0123456789"
PROMPT = "Hello from Node!"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="`node` is not on PATH")


@pytest.fixture(autouse=True)
def _node_modules_installed() -> None:
    """The npm dependencies must be installed; CI installs them, so missing is a failure."""
    if not NODE_OPENAI.is_file():
        pytest.fail(
            f"{NODE_OPENAI.parent} is missing: run `make test` (it installs the Node client's "
            "dependencies) or `npm ci --prefix tests/node`"
        )


async def run_client(base_url: str, api_key: str, prompt: str = PROMPT) -> tuple[int, dict[str, Any]]:
    """`node client.mjs BASE_URL KEY PROMPT`: its exit code and the JSON line it printed."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(NODE_DIR)}
    process = await asyncio.create_subprocess_exec(
        "node",
        str(CLIENT_SCRIPT),
        base_url,
        api_key,
        prompt,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(NODE_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = stdout.decode().strip().splitlines()
    assert lines, f"client.mjs printed nothing (exit {process.returncode}): {stderr.decode()}"
    assert process.returncode is not None
    return process.returncode, json.loads(lines[-1])


SettingsFactory = Callable[..., Settings]


async def test_node_client_chats_with_gptrelay(
    make_settings: SettingsFactory, fake_openai: FakeOpenAI
) -> None:
    """A whole and a streamed completion: the same echoed text, several chunks, and usage."""
    async with running_relay(make_settings(http_port=0)) as relay:
        code, result = await run_client(relay.v1_url, "sk-anything")
    assert code == 0, result
    assert result["prompt"] == PROMPT
    assert result["text"] == f"echo: {PROMPT}"
    assert result["streamed_text"] == result["text"]
    assert result["chunks"] > 1
    usage = result["usage"]
    assert isinstance(usage, dict)
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(fake_openai.requests) == 2


async def test_node_client_with_the_right_key(make_settings: SettingsFactory) -> None:
    """With GPTRELAY_API_KEY set, the client sending it as its API key is served."""
    async with running_relay(make_settings(http_port=0, api_key=RELAY_KEY)) as relay:
        code, result = await run_client(relay.v1_url, RELAY_KEY, "keyed")
    assert code == 0, result
    assert result["text"] == "echo: keyed"
    assert result["streamed_text"] == "echo: keyed"


async def test_node_client_with_a_wrong_key(make_settings: SettingsFactory, fake_openai: FakeOpenAI) -> None:
    """A wrong key is the SDK's AuthenticationError (401), and nothing reaches the model."""
    async with running_relay(make_settings(http_port=0, api_key=RELAY_KEY)) as relay:
        code, result = await run_client(relay.v1_url, "sk-wrong-0123456789")
    assert code == API_ERROR_EXIT, result
    error = result["error"]
    assert error["status"] == 401
    assert error["name"] == "AuthenticationError"
    assert "API key" in error["message"]
    assert RELAY_KEY not in error["message"]
    assert fake_openai.requests == []
