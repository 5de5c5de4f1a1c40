"""The bot's own texts (help, errors, refusals, usage) in every language it speaks."""

# Chinese texts use full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from enum import StrEnum


class Lang(StrEnum):
    """Languages the bot's own texts exist in."""

    EN = "en"
    ZH = "zh"


_HELP_EN = """I answer your messages with an AI model and remember our conversation.

/reset - start a fresh conversation
/model [name] - show or switch the model
/system [text] - show or set the instructions I follow (/system default to restore)
/persona [name] - list or pick a persona
/usage - tokens you have used
/help - this message"""

_HELP_ZH = """我会用 AI 模型回答你的消息，并记住我们的对话。

/reset - 开始新的对话
/model [名称] - 查看或切换模型
/system [文本] - 查看或设置我遵循的指令（/system default 恢复默认）
/persona [名称] - 列出或选择角色
/usage - 你已使用的 token
/help - 显示本帮助"""

_ADMIN_HELP_EN = """Admin commands:
/stats - users, messages and tokens today
/ban <user> - stop answering a user
/unban <user> - answer a user again
/budget <user> <tokens> [month] - set a user's daily (or monthly) token limit; 'default' clears it"""

_ADMIN_HELP_ZH = """管理员命令：
/stats - 今日用户数、消息数和 token 数
/ban <用户> - 不再回答该用户
/unban <用户> - 恢复回答该用户
/budget <用户> <token 数> [month] - 设置用户每日（或每月）token 限额；'default' 清除"""

# Each text by key, then language; {name} fields are filled by render().
TEXTS: dict[str, dict[Lang, str]] = {
    "help": {Lang.EN: _HELP_EN, Lang.ZH: _HELP_ZH},
    "admin_help": {Lang.EN: _ADMIN_HELP_EN, Lang.ZH: _ADMIN_HELP_ZH},
    "start": {Lang.EN: "Hello! ", Lang.ZH: "你好！"},
    "generic_error": {
        Lang.EN: "Sorry, something went wrong while answering. Please try again.",
        Lang.ZH: "抱歉，回答时出了点问题。请再试一次。",
    },
    "empty_prompt": {
        Lang.EN: "Send me a question as text and I will answer it.",
        Lang.ZH: "请用文字发送你的问题，我会回答。",
    },
    "not_allowed": {
        Lang.EN: "Sorry, you are not allowed to use this bot here.",
        Lang.ZH: "抱歉，你无权在这里使用本机器人。",
    },
    "unsupported_content": {
        Lang.EN: "I can only read text messages. Please send your question as text.",
        Lang.ZH: "我只能读取文字消息。请用文字发送你的问题。",
    },
    "unknown_command": {
        Lang.EN: "Unknown command /{name}. Send /help for the list.",
        Lang.ZH: "未知命令 /{name}。发送 /help 查看命令列表。",
    },
    "model_unavailable": {
        Lang.EN: "Model '{name}' is not available. Choose one of: {choices}",
        Lang.ZH: "模型 '{name}' 不可用。可选：{choices}",
    },
    "max_tokens_too_big": {
        Lang.EN: "max_tokens {max_tokens} does not fit {model}'s window of {window} tokens.",
        Lang.ZH: "max_tokens {max_tokens} 超出了 {model} 的上下文窗口（{window} 个 token）。",
    },
    "prompt_too_long": {
        Lang.EN: "That message is too long for this model (about {tokens} tokens, the limit is {limit}). "
        "Please shorten it.",
        Lang.ZH: "这条消息对该模型来说太长了（约 {tokens} 个 token，上限 {limit}）。请缩短后再试。",
    },
    "system_too_long": {
        Lang.EN: "That system prompt is too long (max {limit} characters).",
        Lang.ZH: "系统提示太长了（最多 {limit} 个字符）。",
    },
    "admins_only_shared": {
        Lang.EN: "Only the bot's admins can change this in a shared group conversation.",
        Lang.ZH: "在共享的群组对话中，只有机器人管理员可以修改此设置。",
    },
    "admins_only": {
        Lang.EN: "Only the bot's admins can use /{name}.",
        Lang.ZH: "只有机器人管理员可以使用 /{name}。",
    },
    "reset_done": {
        Lang.EN: "Started a fresh conversation. Earlier messages no longer count.",
        Lang.ZH: "已开始新的对话。之前的消息不再计入上下文。",
    },
    "model_show": {
        Lang.EN: "Model: {current}\nAvailable: {choices}",
        Lang.ZH: "当前模型：{current}\n可选：{choices}",
    },
    "model_set": {Lang.EN: "Model set to {name}.", Lang.ZH: "模型已切换为 {name}。"},
    "system_show": {Lang.EN: "System prompt:\n{text}", Lang.ZH: "系统提示：\n{text}"},
    "system_default": {
        Lang.EN: "System prompt restored to the default.",
        Lang.ZH: "系统提示已恢复为默认。",
    },
    "system_set": {Lang.EN: "System prompt set.", Lang.ZH: "系统提示已设置。"},
    "persona_list": {
        Lang.EN: "Persona: {current}\nAvailable: {choices}\n"
        "Pick one with /persona <name>; /persona default to clear.",
        Lang.ZH: "当前角色：{current}\n可选：{choices}\n用 /persona <名称> 选择；/persona default 清除。",
    },
    "persona_none": {
        Lang.EN: "No personas are configured.",
        Lang.ZH: "没有配置任何角色。",
    },
    "persona_unknown": {
        Lang.EN: "There is no persona '{name}'. Choose one of: {choices}",
        Lang.ZH: "没有名为 '{name}' 的角色。可选：{choices}",
    },
    "persona_set": {Lang.EN: "Persona set to {name}.", Lang.ZH: "角色已设置为 {name}。"},
    "persona_cleared": {
        Lang.EN: "Persona cleared; the default instructions apply.",
        Lang.ZH: "已清除角色，使用默认指令。",
    },
    "usage": {
        Lang.EN: "Today: {day_tokens} tokens in {day_requests}{day_limit}\n"
        "This month: {month_tokens} tokens in {month_requests}{month_limit}",
        Lang.ZH: "今天：{day_tokens} 个 token，{day_requests}{day_limit}\n"
        "本月：{month_tokens} 个 token，{month_requests}{month_limit}",
    },
    "usage_limit": {Lang.EN: " (limit {limit})", Lang.ZH: "（限额 {limit}）"},
    "budget_exceeded": {
        Lang.EN: "You have used your {period} token limit ({limit}). It resets in {wait} ({at} UTC).",
        Lang.ZH: "你已用完{period} token 限额（{limit}）。将在 {wait} 后重置（UTC {at}）。",
    },
    "period_day": {Lang.EN: "daily", Lang.ZH: "每日"},
    "period_month": {Lang.EN: "monthly", Lang.ZH: "每月"},
    "rate_limited": {
        Lang.EN: "You are sending messages too fast. Please wait {wait} before the next one.",
        Lang.ZH: "你发送消息太快了。请等待 {wait} 后再发送。",
    },
    "chat_rate_limited": {
        Lang.EN: "This chat is sending messages too fast. Please wait {wait}.",
        Lang.ZH: "本聊天发送消息太快了。请等待 {wait}。",
    },
    "stats": {
        Lang.EN: "Today: {users} users, {requests} answered messages, {tokens} tokens.\n"
        "Banned users: {banned}",
        Lang.ZH: "今天：{users} 位用户，{requests} 条已回答消息，{tokens} 个 token。\n被封禁用户：{banned}",
    },
    "admin_usage": {
        Lang.EN: "Usage: /{name} {args}",
        Lang.ZH: "用法：/{name} {args}",
    },
    "banned": {Lang.EN: "User {user} is banned.", Lang.ZH: "用户 {user} 已被封禁。"},
    "unbanned": {Lang.EN: "User {user} is no longer banned.", Lang.ZH: "用户 {user} 已解除封禁。"},
    "budget_set": {
        Lang.EN: "{user}'s {period} limit is now {limit} tokens.",
        Lang.ZH: "{user} 的{period}限额现在是 {limit} 个 token。",
    },
    "budget_cleared": {
        Lang.EN: "{user}'s {period} limit is back to the default ({limit}).",
        Lang.ZH: "{user} 的{period}限额已恢复默认（{limit}）。",
    },
    "no_limit": {Lang.EN: "none", Lang.ZH: "无"},
    "model_error.auth": {
        Lang.EN: "The model service rejected the bot's credentials. Please tell the operator.",
        Lang.ZH: "模型服务拒绝了机器人的凭据。请告知管理员。",
    },
    "model_error.quota": {
        Lang.EN: "The model service's quota is used up. Please tell the operator.",
        Lang.ZH: "模型服务的配额已用完。请告知管理员。",
    },
    "model_error.rate_limit": {
        Lang.EN: "The model is busy right now. Please try again in a moment.",
        Lang.ZH: "模型现在很忙。请稍后再试。",
    },
    "model_error.context_too_long": {
        Lang.EN: "That message is too long for the model. Please shorten it or /reset.",
        Lang.ZH: "这条消息对模型来说太长了。请缩短或发送 /reset。",
    },
    "model_error.timeout": {
        Lang.EN: "The model took too long to answer. Please try again.",
        Lang.ZH: "模型回答超时。请再试一次。",
    },
    "model_error.server": {
        Lang.EN: "The model service had an error. Please try again.",
        Lang.ZH: "模型服务出错了。请再试一次。",
    },
    "model_error.connection": {
        Lang.EN: "The model service cannot be reached right now. Please try again later.",
        Lang.ZH: "暂时无法连接模型服务。请稍后再试。",
    },
    "model_error.empty": {
        Lang.EN: "The model returned an empty answer. Please try again or rephrase.",
        Lang.ZH: "模型返回了空回答。请再试一次或换个说法。",
    },
    "model_error.bad_model": {
        Lang.EN: "The model service does not know that model. Try /model to pick another.",
        Lang.ZH: "模型服务不认识该模型。请用 /model 选择其他模型。",
    },
    "model_error.bad_request": {
        Lang.EN: "The model service refused the request. Please try again or /reset.",
        Lang.ZH: "模型服务拒绝了请求。请再试一次或发送 /reset。",
    },
    "model_error.unavailable": {
        Lang.EN: "The model service is down right now. Please try again in a minute.",
        Lang.ZH: "模型服务暂时不可用。请一分钟后再试。",
    },
}


def pick_language(code: str | None, default: Lang) -> Lang:
    """The bot's language for a platform language code ('zh-hans', 'zh-CN', 'en-US', ...)."""
    if code:
        base = code.replace("_", "-").split("-", 1)[0].lower()
        for lang in Lang:
            if base == lang.value:
                return lang
    return default


def render(key: str, lang: Lang = Lang.EN, **params: object) -> str:
    """One of the bot's texts in `lang` (English where a translation is missing)."""
    texts = TEXTS[key]
    template = texts.get(lang) or texts[Lang.EN]
    return template.format(**params) if params else template


def requests(count: int, lang: Lang = Lang.EN) -> str:
    """'1 request', '2 requests', '2 次请求'."""
    if lang is Lang.ZH:
        return f"{count} 次请求"
    return f"{count} request" if count == 1 else f"{count} requests"


def duration(seconds: float, lang: Lang = Lang.EN) -> str:
    """A short human wait: '45 s', '12 min', '3 h 5 min'."""
    seconds = max(1, round(seconds))
    if seconds < 60:
        return f"{seconds} s" if lang is Lang.EN else f"{seconds} 秒"
    minutes = -(-seconds // 60)
    if minutes < 60:
        return f"{minutes} min" if lang is Lang.EN else f"{minutes} 分钟"
    hours, rest = divmod(minutes, 60)
    if lang is Lang.ZH:
        return f"{hours} 小时 {rest} 分钟" if rest else f"{hours} 小时"
    return f"{hours} h {rest} min" if rest else f"{hours} h"
