"""The command line for real: `main()` in process for configuration, `python -m bot run` for shutdown."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.cli import main
from tests.fakes.openai_server import FakeOpenAI, HangReply, TextReply
from tests.helpers import HOST, bot_env, free_port, running_bot

SECRET = "some-long-secret-value"
MASK = "**********"
UNUSED_BASE_URL = "http://127.0.0.1:9/v1"
CHAT_PATH = "/v1/chat/completions"
# `check` prints each setting as a name padded to this width, a space, then the value.
NAME_WIDTH = 24
REQUEST_TIMEOUT_S = 10.0
LATE_REQUEST_TIMEOUT_S = 5.0
EXIT_BOUND_S = 8.0
POLL_TIMEOUT_S = 10.0

CONNECTION_ERROR = "connection error"


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run in tmp_path, so only a .env a test writes there is read."""
    monkeypatch.chdir(tmp_path)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`gptrelay ARGS` in process: exit code, stdout, stderr."""
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def shown_settings(out: str) -> dict[str, str]:
    """The `name value` lines of `gptrelay check`, as a dict."""
    shown: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("problem:") or len(line) <= NAME_WIDTH:
            continue
        shown[line[:NAME_WIDTH].strip()] = line[NAME_WIDTH + 1 :]
    return shown


def block_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data directory that cannot be created, so a `run` that got past the checks fails fast."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("GPTRELAY_DATA_DIR", str(blocker / "data"))
    return blocker


# ---------------------------------------------------------------- gptrelay check


def test_check_masks_the_key_and_lists_adapters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Effective settings are printed with the API key masked; the HTTP adapter would start."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    monkeypatch.setenv("GPTRELAY_API_KEY", SECRET)
    code, out, err = run_main(["check"], capsys)
    assert code == 0, out + err
    assert SECRET not in out + err
    shown = shown_settings(out)
    assert shown["api_key"] == MASK
    assert shown["openai_base_url"] == UNUSED_BASE_URL
    assert shown["backend"] == "openai-compatible"
    assert shown["adapters"] == "http"
    assert "problem" not in out


@pytest.mark.parametrize(
    ("choice", "shown"), [(None, "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_check_names_the_event_loop(
    choice: str | None, shown: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvloop by default where installed (make installs it); GPTRELAY_EVENT_LOOP=asyncio opts out."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    if choice is not None:
        monkeypatch.setenv("GPTRELAY_EVENT_LOOP", choice)
    code, out, err = run_main(["check"], capsys)
    assert code == 0, out + err
    assert shown_settings(out)["event loop"] == shown


def test_check_without_a_usable_model_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No remote model (and no embedded model file): exit 2, and the problem says what to set."""
    monkeypatch.setenv("GPTRELAY_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    code, out, _ = run_main(["check"], capsys)
    assert code == 2
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problems
    assert any("OPENAI_API_KEY" in p for p in problems)


# ---------------------------------------------------------------- gptrelay run: refused configurations


def test_run_reports_every_malformed_value_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A bad port and an out-of-range temperature are both named in one run, exit 2."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    monkeypatch.setenv("GPTRELAY_HTTP_PORT", "abc")
    monkeypatch.setenv("GPTRELAY_TEMPERATURE", "5")
    blocker = block_data_dir(monkeypatch, tmp_path)
    code, out, err = run_main(["run"], capsys)
    assert code == 2, err
    assert "GPTRELAY_HTTP_PORT" in err
    assert "GPTRELAY_TEMPERATURE" in err
    assert "Traceback" not in err
    assert out == ""
    assert blocker.is_file()


def test_run_with_an_unreachable_platform_exits_1_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A platform that cannot be reached stops `run` with one line naming the adapter, token hidden."""
    token = "123456:unreachable-bot-token-value"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    monkeypatch.setenv("GPTRELAY_HTTP_ENABLED", "false")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", token)
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", f"http://{HOST}:{free_port()}/bot")
    code, _, err = run_main(["run"], capsys)
    assert code == 1, err
    assert "telegram adapter could not start" in err
    assert "Traceback" not in err
    assert token not in err


def test_run_on_a_public_address_needs_an_api_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Binding 0.0.0.0 without GPTRELAY_API_KEY stops before serving, exit 2."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    monkeypatch.setenv("GPTRELAY_HTTP_HOST", "0.0.0.0")
    block_data_dir(monkeypatch, tmp_path)
    code, _, err = run_main(["run"], capsys)
    assert code == 2, err
    assert "GPTRELAY_API_KEY" in err
    assert "0.0.0.0" in err


# ---------------------------------------------------------------- configuration sources


TOML_CONFIG = """
model = "gpt-4o"
max_tokens = 1000
allowed_models = ["gpt-4o-mini", "gpt-4.1"]
"""


@pytest.fixture
def toml_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TOML config file setting model, max_tokens and allowed_models; a model server in the env."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    path = tmp_path / "gptrelay.toml"
    path.write_text(TOML_CONFIG, encoding="utf-8")
    return path


def test_config_file_values_are_used(toml_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config FILE check` shows the file's values."""
    code, out, err = run_main(["--config", str(toml_path), "check"], capsys)
    assert code == 0, out + err
    shown = shown_settings(out)
    assert shown["model"] == "gpt-4o"
    assert shown["max_tokens"] == "1000"
    assert shown["allowed_models"] == "['gpt-4o-mini', 'gpt-4.1']"


def test_environment_beats_the_config_file(
    toml_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An environment variable wins over the TOML value; the file's other values stay."""
    monkeypatch.setenv("GPTRELAY_MAX_TOKENS", "700")
    code, out, err = run_main(["--config", str(toml_path), "check"], capsys)
    assert code == 0, out + err
    shown = shown_settings(out)
    assert shown["max_tokens"] == "700"
    assert shown["model"] == "gpt-4o"


def test_missing_config_file_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config file that does not exist is named in a one-line error, exit 2."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    missing = tmp_path / "nope.toml"
    code, out, err = run_main(["--config", str(missing), "check"], capsys)
    assert code == 2
    assert str(missing) in err
    assert "does not exist" in err
    assert "Traceback" not in err
    assert out == ""


def test_invalid_toml_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config file that is not TOML is named with the parser's complaint, exit 2."""
    monkeypatch.setenv("OPENAI_BASE_URL", UNUSED_BASE_URL)
    broken = tmp_path / "broken.toml"
    broken.write_text('model = "unterminated\n', encoding="utf-8")
    code, out, err = run_main(["--config", str(broken), "check"], capsys)
    assert code == 2
    assert str(broken) in err
    assert "not valid TOML" in err
    assert "line 1" in err
    assert "Traceback" not in err
    assert out == ""


def test_dotenv_in_cwd_is_read_and_environment_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`.env` in the working directory is read, beats the TOML file, and loses to the environment."""
    (tmp_path / ".env").write_text(
        f"OPENAI_BASE_URL={UNUSED_BASE_URL}\nGPTRELAY_MAX_TOKENS=300\nGPTRELAY_SYSTEM_PROMPT=Be brief.\n",
        encoding="utf-8",
    )
    config = tmp_path / "gptrelay.toml"
    config.write_text(TOML_CONFIG, encoding="utf-8")

    code, out, err = run_main(["check"], capsys)
    assert code == 0, out + err
    shown = shown_settings(out)
    assert shown["openai_base_url"] == UNUSED_BASE_URL
    assert shown["max_tokens"] == "300"
    assert shown["system_prompt"] == "Be brief."

    code, out, _ = run_main(["--config", str(config), "check"], capsys)
    assert code == 0
    shown = shown_settings(out)
    assert shown["max_tokens"] == "300"  # .env beats the TOML file
    assert shown["model"] == "gpt-4o"  # set only in the TOML file

    monkeypatch.setenv("GPTRELAY_MAX_TOKENS", "400")
    code, out, _ = run_main(["check"], capsys)
    assert code == 0
    shown = shown_settings(out)
    assert shown["max_tokens"] == "400"
    assert shown["system_prompt"] == "Be brief."


# ---------------------------------------------------------------- graceful shutdown of the real process


async def wait_exit(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """Exit code and stderr of a process told to stop, within EXIT_BOUND_S."""
    async with asyncio.timeout(EXIT_BOUND_S):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode(errors="replace")


async def poll(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds, at most POLL_TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + POLL_TIMEOUT_S
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def chat_requests(fake: FakeOpenAI) -> int:
    """How many chat completion requests reached the fake."""
    return sum(1 for r in fake.requests if r.path == CHAT_PATH)


async def ask(port: int, body: dict[str, Any], timeout_s: float) -> tuple[int, Any] | str:
    """POST /ask_gpt; the status and JSON body, or CONNECTION_ERROR. A hang fails the test."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(f"http://{HOST}:{port}/ask_gpt", json=body) as response,
        ):
            return response.status, await response.json()
    except aiohttp.ClientConnectionError:
        return CONNECTION_ERROR
    except TimeoutError:
        pytest.fail(f"POST /ask_gpt {body} hung for {timeout_s} s")


def inbox_rows(db_path: Path, chat_id: str) -> list[tuple[str, str]]:
    """(status, payload) of a chat's inbox entries, read with plain sqlite3."""
    with closing(sqlite3.connect(db_path)) as db:
        query = "SELECT status, payload FROM inbox WHERE platform = 'http' AND chat_id = ? ORDER BY id"
        return db.execute(query, (chat_id,)).fetchall()


async def test_sigterm_finishes_the_answer_in_flight(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """SIGTERM during a streamed answer: it still completes, later requests are refused, exit 0."""
    fake_openai.enqueue(TextReply(("slow", " answer"), chunk_delay_s=0.6))
    port = free_port()
    env = bot_env(
        fake_openai.base_url, tmp_path, GPTRELAY_HTTP_PORT=str(port), GPTRELAY_SHUTDOWN_TIMEOUT_S="10"
    )
    loop = asyncio.get_running_loop()
    async with running_bot(env, tmp_path, port) as process:
        in_flight = asyncio.create_task(
            ask(port, {"prompt": "take your time", "user": "dave"}, REQUEST_TIMEOUT_S)
        )
        await poll(lambda: chat_requests(fake_openai) == 1, "the model is asked")
        signalled = loop.time()
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)  # the answer still needs ~1 s: the bot is draining now

        late = await ask(port, {"prompt": "too late", "user": "erin"}, LATE_REQUEST_TIMEOUT_S)
        assert not in_flight.done()  # the refusal came while the first answer was still streaming
        if late != CONNECTION_ERROR:
            status, body = late
            assert status == 503, body
            assert "shutting down" in body["error"]["message"]

        assert await in_flight == (200, {"message": "slow answer"})
        code, stderr = await wait_exit(process)
        assert code == 0, stderr
        assert loop.time() - signalled < EXIT_BOUND_S
        assert "Traceback" not in stderr
        assert "(event loop: uvloop)" in stderr  # the default where uvloop is installed

    assert chat_requests(fake_openai) == 1  # the late prompt never reached the model
    db_path = tmp_path / "data" / "gptrelay.sqlite3"
    assert [status for status, _ in inbox_rows(db_path, "dave")] == ["answered"]
    assert inbox_rows(db_path, "erin") == []


async def test_sigterm_with_an_answer_too_slow_keeps_it_pending(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """An answer that cannot finish within the shutdown timeout: exit 0 in time, message kept as pending."""
    fake_openai.enqueue(HangReply(5))
    port = free_port()
    env = bot_env(
        fake_openai.base_url, tmp_path, GPTRELAY_HTTP_PORT=str(port), GPTRELAY_SHUTDOWN_TIMEOUT_S="1"
    )
    db_path = tmp_path / "data" / "gptrelay.sqlite3"
    loop = asyncio.get_running_loop()
    async with running_bot(env, tmp_path, port) as process:
        in_flight = asyncio.create_task(
            ask(port, {"prompt": "never finishes", "user": "frank"}, REQUEST_TIMEOUT_S)
        )
        await poll(lambda: chat_requests(fake_openai) == 1, "the model is asked")
        signalled = loop.time()
        process.send_signal(signal.SIGTERM)
        code, stderr = await wait_exit(process)
        exited_after = loop.time() - signalled
        assert code == 0, stderr
        assert 0.9 < exited_after < EXIT_BOUND_S
        assert "Traceback" not in stderr
        outcome = await in_flight
        assert outcome != CONNECTION_ERROR, "the client should be told, not dropped"
        assert outcome[0] == 503  # shutting down: retry later; the inbox keeps the message

    rows = inbox_rows(db_path, "frank")
    assert len(rows) == 1
    status, payload = rows[0]
    assert status == "pending"
    assert "never finishes" in payload

    async with running_bot(env, tmp_path, port) as process:
        process.send_signal(signal.SIGTERM)
        code, stderr = await wait_exit(process)
        assert code == 0, stderr
    # The HTTP caller was told 503 and is gone: the next start closes the entry instead of
    # answering nobody (platform messages are replayed instead; see the crash tests).
    assert [status for status, _ in inbox_rows(db_path, "frank")] == ["expired"]
