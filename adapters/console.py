"""`gptrelay chat`: talk to the bot in a terminal, through the same core as every platform."""

from __future__ import annotations

import asyncio
import getpass
import itertools
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TextIO

from bot.core import BotCore
from bot.messages import ChatKind, IncomingMessage
from bot.streaming import TYPING_MARKER

logger = logging.getLogger(__name__)

PLATFORM = "console"
CONSOLE_MAX_MESSAGE_LEN = 1_000_000
PROMPT = "you> "
BOT_LABEL = "bot> "
EXIT_WORDS = frozenset({"/quit", "/exit"})


class ConsoleSink:
    """Prints the answer as it streams: each edit only appends what is new."""

    max_message_len = CONSOLE_MAX_MESSAGE_LEN
    can_stream = True
    edit_interval_s = 0.05

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown: dict[str, str] = {}
        self._ids = itertools.count(1)

    async def send(self, text: str) -> str:
        """Start a new message on its own line."""
        message_id = str(next(self._ids))
        self._out.write(("\n" if self._shown else "") + BOT_LABEL)
        self._shown[message_id] = ""
        await self.edit(message_id, text)
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        """Print the part of `text` not shown yet (the answer only grows while streaming)."""
        text = text.removesuffix(TYPING_MARKER)
        shown = self._shown[message_id]
        if text.startswith(shown):
            self._out.write(text[len(shown) :])
        else:  # a rollover cut the message earlier than shown: print the new version whole
            self._out.write("\n" + BOT_LABEL + text)
        self._shown[message_id] = text
        self._out.flush()

    @asynccontextmanager
    async def typing(self) -> AsyncIterator[None]:
        """Nothing to show; the streamed text is the indicator."""
        yield


async def chat_loop(
    core: BotCore,
    read_line: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    user: str | None = None,
) -> None:
    """Read prompts until EOF or /quit, answering each through the core."""
    user = user or getpass.getuser()
    out.write("gptrelay console: type a message, /help for commands, /quit to leave.\n")
    for number in itertools.count(1):
        try:
            line = await asyncio.to_thread(read_line, PROMPT)
        except EOFError:
            break
        if line.strip() in EXIT_WORDS:
            break
        if not line.strip():
            continue
        message = IncomingMessage(
            platform=PLATFORM,
            chat_id=user,
            chat_kind=ChatKind.PRIVATE,
            user_id=user,
            user_name=user,
            message_id=f"{asyncio.get_running_loop().time():.6f}-{number}",
            text=line,
            addressed=True,
        )
        future = await core.submit(message, ConsoleSink(out))
        if future is not None:
            await future
        out.write("\n")
        out.flush()
