"""Commands every platform shares: the user's own, and the admins' (/stats, /ban, /budget)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from bot.access import Access
from bot.budgets import Budgets
from bot.config import Settings
from bot.errors import UserError
from bot.texts import Lang, render, requests
from storage import Conversation, Store

# Longest system prompt a user may set, so one command cannot eat the whole context window.
MAX_SYSTEM_PROMPT_CHARS = 4_000
DEFAULT_WORD = "default"


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
    access: Access
    budgets: Budgets
    conversation: Conversation
    user_key: str
    platform: str
    lang: Lang = Lang.EN
    is_admin: bool = False
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
    return render("start", ctx.lang) + await _help(ctx, args)


async def _help(ctx: CommandContext, args: str) -> str:
    """List the commands (admins also see theirs)."""
    text = render("help", ctx.lang)
    return text + "\n\n" + render("admin_help", ctx.lang) if ctx.is_admin else text


async def _reset(ctx: CommandContext, args: str) -> str:
    """Start a fresh context; stored turns are kept."""
    await ctx.store.reset(ctx.conversation.id)
    return render("reset_done", ctx.lang)


async def _model(ctx: CommandContext, args: str) -> str:
    """Show or switch the conversation's model."""
    allowed = ctx.settings.models
    current = ctx.conversation.model or ctx.settings.model
    if not args:
        return render("model_show", ctx.lang, current=current, choices=", ".join(allowed))
    _require_change(ctx)
    if args not in allowed:
        raise UserError("model_unavailable", name=args, choices=", ".join(allowed))
    chosen = None if args == ctx.settings.model else args
    await ctx.store.set_model(ctx.conversation.id, chosen)
    return render("model_set", ctx.lang, name=args)


async def _system(ctx: CommandContext, args: str) -> str:
    """Show or set the conversation's system prompt."""
    if not args:
        return render("system_show", ctx.lang, text=system_prompt_of(ctx.settings, ctx.conversation))
    _require_change(ctx)
    if args.lower() == DEFAULT_WORD:
        await ctx.store.set_system_prompt(ctx.conversation.id, None)
        return render("system_default", ctx.lang)
    if len(args) > MAX_SYSTEM_PROMPT_CHARS:
        raise UserError("system_too_long", limit=MAX_SYSTEM_PROMPT_CHARS)
    await ctx.store.set_system_prompt(ctx.conversation.id, args)
    return render("system_set", ctx.lang)


async def _persona(ctx: CommandContext, args: str) -> str:
    """List the operator's personas, or pick one for the conversation."""
    personas = ctx.settings.personas
    if not personas:
        return render("persona_none", ctx.lang)
    choices = ", ".join(sorted(personas))
    name = args.strip().lower()
    if not name:
        current = ctx.conversation.persona or render("no_limit", ctx.lang)
        return render("persona_list", ctx.lang, current=current, choices=choices)
    _require_change(ctx)
    if name == DEFAULT_WORD:
        await ctx.store.set_persona(ctx.conversation.id, None)
        return render("persona_cleared", ctx.lang)
    if name not in personas:
        raise UserError("persona_unknown", name=args.strip(), choices=choices)
    await ctx.store.set_persona(ctx.conversation.id, name)
    return render("persona_set", ctx.lang, name=name)


def system_prompt_of(settings: Settings, conversation: Conversation) -> str:
    """The instructions in force: free text from /system, else the persona, else the default."""
    if conversation.system_prompt:
        return conversation.system_prompt
    if conversation.persona and conversation.persona in settings.personas:
        return settings.personas[conversation.persona]
    return settings.system_prompt


def _require_change(ctx: CommandContext) -> None:
    """Refuse a change to a conversation the user shares with others and does not administer."""
    if not ctx.may_change:
        raise UserError("admins_only_shared")


async def _usage(ctx: CommandContext, args: str) -> str:
    """Show the user's tokens today and this month, with their limits."""
    today = datetime.now(UTC).date()
    day = await ctx.store.usage(ctx.user_key, today.isoformat())
    month = await ctx.store.usage(ctx.user_key, today.replace(day=1).isoformat())
    limits = ctx.budgets.limits(ctx.user_key)
    return render(
        "usage",
        ctx.lang,
        day_tokens=day.total_tokens,
        day_requests=requests(day.requests, ctx.lang),
        day_limit=_limit_note(limits["day"], ctx),
        month_tokens=month.total_tokens,
        month_requests=requests(month.requests, ctx.lang),
        month_limit=_limit_note(limits["month"], ctx),
    )


def _limit_note(limit: int | None, ctx: CommandContext) -> str:
    """' (limit 5000)' after a usage line, or nothing when unlimited or exempt."""
    if limit is None or ctx.is_admin:
        return ""
    return render("usage_limit", ctx.lang, limit=limit)


def _require_admin(ctx: CommandContext, name: str) -> None:
    """Admin commands check the platform identity, never anything the user typed."""
    if not ctx.is_admin:
        raise UserError("admins_only", name=name)


def _target(ctx: CommandContext, arg: str) -> str:
    """A user key from an admin's argument: 'platform:id', or an id on the admin's platform."""
    return arg if ":" in arg else f"{ctx.platform}:{arg}"


async def _stats(ctx: CommandContext, args: str) -> str:
    """Users, answered messages and tokens today."""
    _require_admin(ctx, "stats")
    stats = await ctx.store.day_stats(datetime.now(UTC).date().isoformat())
    banned = ", ".join(sorted(ctx.access.banned)) or render("no_limit", ctx.lang)
    return render(
        "stats", ctx.lang, users=stats.users, requests=stats.requests, tokens=stats.tokens, banned=banned
    )


async def _ban(ctx: CommandContext, args: str, banned: bool = True) -> str:
    """Stop (or resume) answering a user."""
    name = "ban" if banned else "unban"
    _require_admin(ctx, name)
    if not args or len(args.split()) != 1:
        raise UserError("admin_usage", name=name, args="<user id>")
    key = _target(ctx, args.strip())
    policy = replace(ctx.budgets.policy(key), banned=banned)
    await ctx.store.save_user_policy(policy)
    ctx.budgets.remember(policy)
    ctx.access.set_banned(key, banned)
    return render("banned" if banned else "unbanned", ctx.lang, user=key)


async def _unban(ctx: CommandContext, args: str) -> str:
    """Answer a banned user again."""
    return await _ban(ctx, args, banned=False)


async def _budget(ctx: CommandContext, args: str) -> str:
    """Set a user's own daily (or monthly) token limit, or clear it back to the default."""
    _require_admin(ctx, "budget")
    words = args.split()
    period = "month" if len(words) == 3 and words[2].lower() in ("month", "monthly") else "day"
    valid = len(words) == 2 or (len(words) == 3 and words[2].lower() in ("day", "daily", "month", "monthly"))
    amount = words[1].lower() if len(words) >= 2 else ""
    if not valid or not (amount == DEFAULT_WORD or (amount.isdigit() and int(amount) > 0)):
        raise UserError("admin_usage", name="budget", args="<user id> <tokens|default> [day|month]")
    key = _target(ctx, words[0])
    tokens = None if amount == DEFAULT_WORD else int(amount)
    await ctx.budgets.set_limit(key, period, tokens)
    period_name = render(f"period_{period}", ctx.lang)
    if tokens is None:
        default = ctx.budgets.limits(key)[period]
        shown = default if default is not None else render("no_limit", ctx.lang)
        return render("budget_cleared", ctx.lang, user=key, period=period_name, limit=shown)
    return render("budget_set", ctx.lang, user=key, period=period_name, limit=tokens)


# Shown by platforms that list commands (Telegram's menu, Discord's slash commands).
COMMAND_DESCRIPTIONS: dict[str, str] = {
    "start": "Introduction",
    "help": "What I can do",
    "reset": "Start a fresh conversation",
    "model": "Show or switch the model",
    "system": "Show or set my instructions",
    "persona": "List or pick a persona",
    "usage": "Tokens you have used",
}
# Admin commands are not advertised in platform menus; /help lists them to admins.
ADMIN_COMMANDS = frozenset({"stats", "ban", "unban", "budget"})

COMMANDS: dict[str, Handler] = {
    "start": _start,
    "help": _help,
    "reset": _reset,
    "model": _model,
    "system": _system,
    "persona": _persona,
    "usage": _usage,
    "stats": _stats,
    "ban": _ban,
    "unban": _unban,
    "budget": _budget,
}


async def run_command(command: Command, ctx: CommandContext) -> str:
    """Run a command and return its reply text."""
    handler = COMMANDS.get(command.name)
    if handler is None:
        raise UserError("unknown_command", name=command.name)
    return await handler(ctx, command.args)
