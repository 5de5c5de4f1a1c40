"""Commands every platform shares: /start, /help, /reset, /model, /system, /usage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.config import Settings
from bot.errors import UserError
from storage import Conversation, Store

# Longest system prompt a user may set, so one command cannot eat the whole context window.
MAX_SYSTEM_PROMPT_CHARS = 4_000

HELP_TEXT = """I answer your messages with an AI model and remember our conversation.

/reset - start a fresh conversation
/model [name] - show or switch the model
/system [text] - show or set the instructions I follow (/system default to restore)
/usage - tokens you have used
/help - this message"""


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed `/name args` message."""

    name: str
    args: str


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a command may read and change."""

    settings: Settings
    store: Store
    conversation: Conversation
    user_key: str
    # False in a group's shared conversation for non-admins: a change there affects everyone.
    may_change: bool = True


Handler = Callable[[CommandContext, str], Awaitable[str]]


def parse_command(text: str) -> Command | None:
    """Parse `/name@bot args`; None when the text is not a command."""
    if not text.startswith("/") or len(text) < 2 or text[1].isspace():
        return None
    head, _, args = text[1:].partition(" ")
    name = head.split("@", 1)[0].strip().lower()
    return Command(name, args.strip()) if name else None


async def _start(ctx: CommandContext, args: str) -> str:
    """Greet and explain."""
    return "Hello! " + HELP_TEXT


async def _help(ctx: CommandContext, args: str) -> str:
    """List the commands."""
    return HELP_TEXT


async def _reset(ctx: CommandContext, args: str) -> str:
    """Start a fresh context; stored turns are kept."""
    await ctx.store.reset(ctx.conversation.id)
    return "Started a fresh conversation. Earlier messages no longer count."


async def _model(ctx: CommandContext, args: str) -> str:
    """Show or switch the conversation's model."""
    allowed = ctx.settings.models
    current = ctx.conversation.model or ctx.settings.model
    if not args:
        return f"Model: {current}\nAvailable: {', '.join(allowed)}"
    _require_change(ctx)
    if args not in allowed:
        raise UserError(f"'{args}' is not available. Choose one of: {', '.join(allowed)}")
    chosen = None if args == ctx.settings.model else args
    await ctx.store.set_model(ctx.conversation.id, chosen)
    return f"Model set to {args}."


async def _system(ctx: CommandContext, args: str) -> str:
    """Show or set the conversation's system prompt."""
    if not args:
        current = ctx.conversation.system_prompt or ctx.settings.system_prompt
        return f"System prompt:\n{current}"
    _require_change(ctx)
    if args.lower() == "default":
        await ctx.store.set_system_prompt(ctx.conversation.id, None)
        return "System prompt restored to the default."
    if len(args) > MAX_SYSTEM_PROMPT_CHARS:
        raise UserError(f"That system prompt is too long (max {MAX_SYSTEM_PROMPT_CHARS} characters).")
    await ctx.store.set_system_prompt(ctx.conversation.id, args)
    return "System prompt set."


def _require_change(ctx: CommandContext) -> None:
    """Refuse a change to a conversation the user shares with others and does not administer."""
    if not ctx.may_change:
        raise UserError("Only the bot's admins can change this in a shared group conversation.")


async def _usage(ctx: CommandContext, args: str) -> str:
    """Show the user's tokens today and this month."""
    today = datetime.now(UTC).date()
    day = await ctx.store.usage(ctx.user_key, today.isoformat())
    month = await ctx.store.usage(ctx.user_key, today.replace(day=1).isoformat())
    return (
        f"Today: {day.total_tokens} tokens in {_requests(day.requests)}\n"
        f"This month: {month.total_tokens} tokens in {_requests(month.requests)}"
    )


def _requests(count: int) -> str:
    """'1 request', '2 requests'."""
    return f"{count} request" if count == 1 else f"{count} requests"


# Shown by platforms that list commands (Telegram's menu, Discord's slash commands).
COMMAND_DESCRIPTIONS: dict[str, str] = {
    "start": "Introduction",
    "help": "What I can do",
    "reset": "Start a fresh conversation",
    "model": "Show or switch the model",
    "system": "Show or set my instructions",
    "usage": "Tokens you have used",
}

COMMANDS: dict[str, Handler] = {
    "start": _start,
    "help": _help,
    "reset": _reset,
    "model": _model,
    "system": _system,
    "usage": _usage,
}


async def run_command(command: Command, ctx: CommandContext) -> str:
    """Run a command and return its reply text."""
    handler = COMMANDS.get(command.name)
    if handler is None:
        raise UserError(f"Unknown command /{command.name}. Send /help for the list.")
    return await handler(ctx, command.args)
