"""Command line: `gptrelay run`, `gptrelay check`, `gptrelay chat`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapters.console import chat_loop
from bot.app import StartupError, open_runtime, serve
from bot.config import ConfigError, Settings, describe, load_settings, require_usable
from bot.logsetup import REDACTED, secrets_of, setup_logging
from bot.loop import loop_name, run

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    """Arguments of every subcommand."""
    parser = argparse.ArgumentParser(prog="gptrelay", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file with settings (environment wins)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start every configured adapter (HTTP API by default)")
    sub.add_parser("check", help="print the effective configuration and what would start")
    chat = sub.add_parser("chat", help="talk to the bot in this terminal")
    chat.add_argument("--user", help="whose conversation to continue (default: your login name)")
    return parser


def _check(settings: Settings) -> int:
    """Print settings (secrets masked), problems, and the adapters that would start."""
    for name, value in describe(settings).items():
        print(f"{name:24} {value}")
    problems = settings.problems()
    wanted = (
        ("http", settings.http_enabled),
        ("telegram", settings.telegram_bot_token),
        ("discord", settings.discord_bot_token),
    )
    adapters = [name for name, on in wanted if on]
    print(f"{'adapters':24} {', '.join(adapters) or 'none'}")
    print(f"{'answering model':24} {settings.model_summary()}")
    print(f"{'event loop':24} {loop_name(settings.event_loop)}")
    for problem in problems:
        print(f"problem: {problem}")
    return EXIT_CONFIG if problems else 0


async def _chat(settings: Settings, user: str | None) -> None:
    """Console conversation through the core."""
    async with open_runtime(settings) as runtime:
        await chat_loop(runtime.core, user=user)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gptrelay` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "check":
            return _check(settings)
        require_usable(settings)
    except ConfigError as exc:
        print(f"gptrelay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "chat" and "log_level" not in settings.model_fields_set:
        # INFO lines would interleave with the conversation on the same terminal.
        settings = settings.model_copy(update={"log_level": "WARNING"})
    setup_logging(settings)
    try:
        main_coroutine = serve(settings) if args.command == "run" else _chat(settings, args.user)
        run(main_coroutine, settings.event_loop)
    except KeyboardInterrupt:
        pass
    except (OSError, StartupError) as exc:  # a port in use, a data directory, a platform login
        message = str(exc)
        for secret in secrets_of(settings):
            message = message.replace(secret, REDACTED)
        print(f"gptrelay: {message}", file=sys.stderr)
        return 1
    return 0
