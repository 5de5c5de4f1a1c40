"""A fake Telegram Bot API server on 127.0.0.1 that speaks the real wire protocol.

Usage::

    async with FakeTelegram(token=TOKEN) as tg:
        builder = ApplicationBuilder().token(TOKEN).base_url(tg.base_url)
        app = builder.base_file_url(tg.base_file_url).build()
        tg.push_update(tg.private_text(5100000001, "hi"))
        ...
        assert tg.texts(5100000001) == ["echo: hi"]

Scripting: ``push_update``, ``push_json_file``, ``private_text``/``group_text`` (update builders, with
the ``mention``/``bot_command`` entities Telegram would attach), ``add_chat``, ``fail_next``,
``drop_next``. Reading: ``calls``/``calls_of`` (``Call(method, params, at, status)``),
``messages``/``texts`` (the bot's messages now, after edits), ``drafts``/``draft_records``, ``commands``,
``webhook_url``, ``webhook_secret``, ``confirmed_offset``, ``pending_updates``, ``flood_errors``.

Requests arrive at ``/bot<TOKEN>/<method>`` (method names are case-insensitive, as on Telegram), form
encoded, multipart or JSON; every form field that is not plain text is JSON inside the field, as
python-telegram-bot sends it. Answers are ``{"ok": true, "result": ...}`` or Telegram's error body
``{"ok": false, "error_code": N, "description": "..."}`` (429 adds ``"parameters": {"retry_after": N}``).

Methods: getMe, getUpdates (long poll), sendMessage, editMessageText, sendMessageDraft, deleteMessage,
sendChatAction, setMyCommands/getMyCommands/deleteMyCommands, setWebhook/deleteWebhook/getWebhookInfo,
close, logOut. Anything else: 404 "Not Found: method not found". A wrong token: 401 "Unauthorized".

What python-telegram-bot 22.8 raises for the answers:

* 400 ``BadRequest`` (PTB strips "Bad Request: " and capitalizes, so compare in lower case): "message is
  not modified: ...", "message text is empty", "message is too long" (sendMessage, sendMessageDraft) and
  "MESSAGE_TOO_LONG" (editMessageText, as real Telegram words it), "can't parse entities: ...", "message
  to edit not found", "message can't be edited", "chat not found", "message to be replied not found",
  "TEXTDRAFT_PEER_INVALID" (a draft outside a private chat), "RANDOM_ID_INVALID" (draft_id 0).
* 400 with ``migrate_to_chat_id`` (a write to a basic group pushed as migrated): ``ChatMigrated``.
* 401 and 404: ``InvalidToken`` (``EndPointNotFound`` from ``Bot.do_api_request`` once initialized).
* 409 ``Conflict``: a second getUpdates while one is waiting ends the older one, as on Telegram; and
  getUpdates while a webhook is set.
* 429 ``RetryAfter`` (flood rules or ``fail_next``); 5xx ``NetworkError``; a connection closed without
  an answer (``drop_next``): ``NetworkError`` ("httpx.RemoteProtocolError: Server disconnected ...").
  Reading ``RetryAfter.retry_after`` as an int makes PTB 22.8 warn (an error under ``filterwarnings=error``):
  set ``PTB_TIMEDELTA=1`` to get a ``timedelta``.

The two draft errors are worded as another Bot API emulator words them (not checked against live
Telegram); the others are Telegram's published or widely reported wording.

Texts are checked as Telegram does after entity parsing: length in UTF-16 code units (at most 4096),
``parse_mode`` MarkdownV2 / HTML / Markdown parsed into plain text + entities (reserved characters,
unclosed entities and unsupported or unclosed tags are errors with Telegram's wording), explicit
``entities`` must lie inside the text (offset >= 0, length >= 0, offset + length <= UTF-16 length, no
split surrogate pair; real Telegram may silently trim such entities instead: here it is an error so
offset bugs show). Stored messages hold the parsed text and entities.

Flood control (``FloodRules``, on by default, ``flood=None`` disables it) counts every applied write:
sendMessage, editMessageText and, unless ``count_drafts=False``, sendMessageDraft (against its chat's
rule only, unless ``drafts_in_global=True``: a draft is an ephemeral preview, not a message, and the
bot-wide limit Telegram publishes is on messages). A write that would
break a rule is answered 429 with ``retry_after`` = whole seconds (>= 1) until it would be accepted, is
not applied, is not counted, and adds 1 to ``flood_errors``. Requests refused for another reason are
not counted either. The rules, all checked on the instance's ``clock``:

* per chat (every chat): a token bucket holding ``per_chat_burst`` writes (3), refilled at
  ``per_chat_per_s`` (1/s): 3 writes at once pass and a 4th right after is refused; 1 write per
  second passes forever.
* per group (chat id < 0), on top of the per-chat rule: at most ``per_group_per_min`` writes (20) in
  any 60 s sliding window.
* global: at most ``global_per_s`` writes (30) in any 1 s sliding window, all chats together
  (drafts left out by default, above).

Updates: ``push_update`` queues one (assigning an increasing ``update_id`` when it is missing or not
above the last one) and wakes waiting getUpdates calls; getUpdates drops the updates below its
``offset`` (Telegram's confirmation; ``confirmed_offset`` keeps the highest offset sent), returns at
most ``limit`` and waits up to ``timeout`` seconds when none is pending.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.local_server import HOST, LocalServer

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
DEFAULT_BOT_ID = 7000000001
DEFAULT_BOT_USERNAME = "gptrelay_test_bot"
DEFAULT_TOKEN = f"{DEFAULT_BOT_ID}:AAFakeTokenForGptrelayTests0000000000"
BOT_FIRST_NAME = "GPT Relay (test)"
TELEGRAM_MAX_TEXT = 4096
MAX_UPDATES_LIMIT = 100
GROUP_WINDOW_S = 60.0
GLOBAL_WINDOW_S = 1.0
DEFAULT_RETRY_AFTER_S = 1


def _words(text: str) -> frozenset[str]:
    """The set of whitespace-separated words of ``text``."""
    return frozenset(text.split())


# Fields python-telegram-bot sends as plain strings: never JSON-decoded, even when they look like JSON.
STRING_FIELDS = _words(
    "text caption parse_mode caption_parse_mode action url secret_token ip_address language_code "
    "inline_message_id callback_query_id business_connection_id message_effect_id title description "
    "short_description name emoji query"
)
CHAT_ACTIONS = _words(
    "typing upload_photo record_video upload_video record_voice upload_voice upload_document "
    "choose_sticker find_location record_video_note upload_video_note"
)
ENTITY_TYPES = _words(
    "mention hashtag cashtag bot_command url email phone_number bold italic underline strikethrough "
    "spoiler blockquote expandable_blockquote code pre text_link text_mention custom_emoji date_time"
)
ENTITY_KEYS = ("type", "offset", "length", "url", "user", "language", "custom_emoji_id")
MESSAGE_KEYS = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
)
CHAT_KEYS = ("my_chat_member", "chat_member", "chat_join_request")

# Telegram's wording.
UNAUTHORIZED = "Unauthorized"
NOT_FOUND = "Not Found"
METHOD_NOT_FOUND = "Not Found: method not found"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
TEXT_EMPTY = "Bad Request: message text is empty"
TEXT_TOO_LONG = "Bad Request: message is too long"
EDIT_TEXT_TOO_LONG = "Bad Request: MESSAGE_TOO_LONG"
CANT_PARSE_ENTITIES = "Bad Request: can't parse entities: "
MESSAGE_TO_EDIT_NOT_FOUND = "Bad Request: message to edit not found"
MESSAGE_CANT_BE_EDITED = "Bad Request: message can't be edited"
MESSAGE_TO_DELETE_NOT_FOUND = "Bad Request: message to delete not found"
CHAT_NOT_FOUND = "Bad Request: chat not found"
REPLY_NOT_FOUND = "Bad Request: message to be replied not found"
DRAFT_CHAT_NOT_PRIVATE = "Bad Request: TEXTDRAFT_PEER_INVALID"
DRAFT_ID_INVALID = "Bad Request: RANDOM_ID_INVALID"
CHAT_ACTION_INVALID = "Bad Request: wrong parameter action in request"
PARSE_MODE_UNSUPPORTED = "Bad Request: unsupported parse_mode"
GROUP_MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
BOT_COMMAND_INVALID = "Bad Request: BOT_COMMAND_INVALID"
WEBHOOK_NOT_HTTPS = "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
POLL_CONFLICT = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
)
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the "
    "webhook first"
)
STATUS_PHRASES: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
DEFAULT_DETAILS: Mapping[int, str] = {400: "scripted failure", 403: "bot was blocked by the user"}

USERNAME_RE = r"[A-Za-z][A-Za-z0-9_]{4,31}"
MENTION_RE = re.compile(rf"(?<![A-Za-z0-9_@/])@{USERNAME_RE}(?![A-Za-z0-9_])")
COMMAND_RE = re.compile(rf"(?<!\S)/[A-Za-z0-9_]{{1,32}}(?:@{USERNAME_RE})?(?![A-Za-z0-9_@])")
URL_RE = re.compile(r"(?:(?:https?|tg|ton)://\S+|[\w-]+(?:\.[\w-]+)+(?:[/?#]\S*)?)", re.IGNORECASE)
CUSTOM_EMOJI_URL_RE = re.compile(r"tg://emoji\?id=(\d+)")


# ---------------------------------------------------------------- public value types


@dataclass(frozen=True)
class FloodRules:
    """Telegram's flood limits as the fake enforces them; ``None`` turns one rule off."""

    per_chat_per_s: float | None = 1.0
    per_chat_burst: int = 3
    per_group_per_min: int | None = 20
    global_per_s: int | None = 30
    count_drafts: bool = True
    drafts_in_global: bool = False


@dataclass(slots=True)
class Call:
    """One request the fake received: the method as sent, its decoded parameters, and when."""

    method: str
    params: dict[str, Any]
    at: float
    status: int = 200


class ApiError(Exception):
    """An error answer of the Bot API."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    @classmethod
    def retry_after(cls, seconds: int) -> ApiError:
        """Telegram's 429 with ``retry_after``."""
        return cls(429, f"Too Many Requests: retry after {seconds}", {"retry_after": seconds})

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        payload: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            payload["parameters"] = self.parameters
        return payload


class EntityParseError(ValueError):
    """A text that Telegram cannot parse in the given parse mode (the message is Telegram's)."""


# ---------------------------------------------------------------- text helpers


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts text and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _pattern_entities(text: str, pattern: re.Pattern[str], kind: str) -> list[dict[str, Any]]:
    """Entities of ``kind`` for every match of ``pattern``, with UTF-16 offsets."""
    found = []
    for match in pattern.finditer(text):
        offset = utf16_len(text[: match.start()])
        found.append({"offset": offset, "length": utf16_len(match.group()), "type": kind})
    return found


def mention_entities(text: str) -> list[dict[str, Any]]:
    """The ``mention`` entities Telegram attaches to every ``@username`` in ``text`` (UTF-16 offsets)."""
    return _pattern_entities(text, MENTION_RE, "mention")


def command_entities(text: str) -> list[dict[str, Any]]:
    """The ``bot_command`` entities of ``/command`` and ``/command@bot`` words in ``text``."""
    return _pattern_entities(text, COMMAND_RE, "bot_command")


def text_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram detects in a user's plain text: bot commands and mentions, in order."""
    return sorted(command_entities(text) + mention_entities(text), key=lambda e: e["offset"])


def _byte_offset(text: str, index: int) -> int:
    """The UTF-8 byte offset of code point ``index`` (Telegram's parse errors count bytes)."""
    return len(text[:index].encode())


def _sorted_entities(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Entities ordered as Telegram returns them: by offset, the longer first."""
    return sorted(entities, key=lambda e: (e["offset"], -e["length"]))


class _Output:
    """Parsed plain text under construction, with its length in UTF-16 code units."""

    __slots__ = ("parts", "units")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.units = 0

    def add(self, char: str) -> None:
        """Append one character."""
        self.parts.append(char)
        self.units += 2 if ord(char) > 0xFFFF else 1

    def since(self, index: int) -> str:
        return "".join(self.parts[index:])

    def text(self) -> str:
        return "".join(self.parts)


@dataclass(slots=True)
class _Open:
    """An entity whose start was seen and whose end was not yet."""

    kind: str
    start: int
    source_index: int
    part_index: int
    argument: str = ""
    expandable: bool = False


def _link_entity(url: str, start: int, length: int) -> dict[str, Any] | None:
    """A ``text_link`` for a valid URL; Telegram silently drops links it cannot read."""
    if not URL_RE.fullmatch(url):
        return None
    return {"offset": start, "length": length, "type": "text_link", "url": url}


def _reserved(char: str) -> EntityParseError:
    return EntityParseError(f"Character '{char}' is reserved and must be escaped with the preceding '\\'")


MDV2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
MDV2_TYPES = {
    "Bold": "bold",
    "Italic": "italic",
    "Underline": "underline",
    "Strikethrough": "strikethrough",
    "Spoiler": "spoiler",
    "Code": "code",
    "Pre": "pre",
}


def _mdv2_closes(kind: str, text: str, i: int) -> bool:
    """Whether the character at ``i`` ends the innermost open MarkdownV2 entity."""
    char = text[i]
    if kind == "Bold":
        return char == "*"
    if kind == "Italic":
        return char == "_" and not text.startswith("__", i)
    if kind == "Underline":
        return text.startswith("__", i)
    if kind == "Strikethrough":
        return char == "~"
    if kind == "Spoiler":
        return text.startswith("||", i)
    if kind == "Code":
        return char == "`"
    if kind == "Pre":
        return text.startswith("```", i)
    return char == "]"  # TextUrl, CustomEmoji


def _read_url(text: str, i: int) -> tuple[str, int]:
    """The ``(url)`` starting at ``text[i] == "("``: the unescaped URL and the index of ``)``."""
    start = i + 1
    i = start
    chars: list[str] = []
    while i < len(text) and text[i] != ")":
        if text[i] == "\\" and i + 1 < len(text) and 0 < ord(text[i + 1]) <= 126:
            chars.append(text[i + 1])
            i += 2
            continue
        chars.append(text[i])
        i += 1
    if i >= len(text):
        raise EntityParseError(f"Can't find end of a URL at byte offset {_byte_offset(text, start)}")
    return "".join(chars), i


def _open_pre(text: str, i: int) -> tuple[str, int]:
    """After an opening triple backtick at ``i - 3``: the language and the index of the content."""
    end = i
    while end < len(text) and not text[end].isspace() and text[end] != "`":
        end += 1
    language = ""
    if end != i and end < len(text) and text[end] != "`":
        language, i = text[i:end], end
    # One newline right after the opening fence is not part of the block.
    if i < len(text) and text[i] in "\r\n":
        pair = i + 1 < len(text) and text[i + 1] in "\r\n" and text[i] != text[i + 1]
        i += 2 if pair else 1
    return language, i


def parse_markdown_v2(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's MarkdownV2 as plain text + entities; raises ``EntityParseError`` like Telegram."""
    out = _Output()
    entities: list[dict[str, Any]] = []
    stack: list[_Open] = []
    quote_start: int | None = None
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        in_code = bool(stack) and stack[-1].kind in ("Code", "Pre")
        if char == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            out.add(text[i + 1])
            i += 2
            continue
        if char == ">" and not in_code and (i == 0 or text[i - 1] == "\n"):
            if quote_start is None:
                quote_start = out.units
            i += 1
            continue
        if char == "\n" and quote_start is not None and not text.startswith(">", i + 1):
            if out.units > quote_start:
                entities.append(
                    {"offset": quote_start, "length": out.units - quote_start, "type": "blockquote"}
                )
            quote_start = None
        if char not in ("`" if in_code else MDV2_RESERVED):
            out.add(char)
            i += 1
            continue
        if not stack or not _mdv2_closes(stack[-1].kind, text, i):
            i = _mdv2_open(text, i, out, stack)
            continue
        top = stack.pop()
        entity: dict[str, Any] | None = None
        length = out.units - top.start
        if top.kind in ("Underline", "Spoiler"):
            i += 1
        elif top.kind == "Pre":
            i += 2
        if top.kind == "TextUrl":
            url = out.since(top.part_index)
            if text.startswith("(", i + 1):
                url, i = _read_url(text, i + 1)
            entity = _link_entity(url, top.start, length)
        elif top.kind == "CustomEmoji":
            if not text.startswith("(", i + 1):
                raise EntityParseError("Custom emoji entity must contain a tg://emoji URL")
            url, i = _read_url(text, i + 1)
            emoji = CUSTOM_EMOJI_URL_RE.fullmatch(url)
            if emoji is None:
                raise EntityParseError(f"Invalid custom emoji URL specified: {url}")
            entity = {"offset": top.start, "length": length, "type": "custom_emoji"}
            entity["custom_emoji_id"] = emoji.group(1)
        else:
            entity = {"offset": top.start, "length": length, "type": MDV2_TYPES[top.kind]}
            if top.kind == "Pre" and top.argument:
                entity["language"] = top.argument
        if entity is not None and length > 0:
            entities.append(entity)
        i += 1
    if stack:
        top = stack[-1]
        offset = _byte_offset(text, top.source_index)
        raise EntityParseError(f"Can't find end of {top.kind} entity at byte offset {offset}")
    if quote_start is not None and out.units > quote_start:
        entities.append({"offset": quote_start, "length": out.units - quote_start, "type": "blockquote"})
    return out.text(), _sorted_entities(entities)


def _mdv2_open(text: str, i: int, out: _Output, stack: list[_Open]) -> int:
    """Open the MarkdownV2 entity whose marker is at ``i``; return the index after the marker."""
    char = text[i]
    start = i
    argument = ""
    if char == "_":
        kind = "Underline" if text.startswith("__", i) else "Italic"
        i += 2 if kind == "Underline" else 1
    elif char == "*":
        kind, i = "Bold", i + 1
    elif char == "~":
        kind, i = "Strikethrough", i + 1
    elif char == "|" and text.startswith("||", i):
        kind, i = "Spoiler", i + 2
    elif char == "[":
        kind, i = "TextUrl", i + 1
    elif char == "!" and text.startswith("[", i + 1):
        kind, i = "CustomEmoji", i + 2
    elif char == "`" and text.startswith("```", i):
        kind = "Pre"
        argument, i = _open_pre(text, i + 3)
    elif char == "`":
        kind, i = "Code", i + 1
    else:
        raise _reserved(char)
    stack.append(_Open(kind, out.units, start, len(out.parts), argument))
    return i


HTML_TAGS = _words("a b strong i em s strike del u ins tg-spoiler tg-emoji span pre code blockquote")
HTML_SIMPLE_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "u": "underline",
    "ins": "underline",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}
HTML_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def _html_entity(text: str, i: int) -> tuple[str | None, int]:
    """The character of the HTML entity at ``text[i] == "&"`` and the index after it, or ``None``."""
    end = text.find(";", i + 1, i + 12)
    if end < 0:
        return None, i
    name = text[i + 1 : end]
    if name in HTML_NAMED_ENTITIES:
        return HTML_NAMED_ENTITIES[name], end + 1
    if not name.startswith("#"):
        return None, i
    try:
        code = int(name[2:], 16) if name[1:2] in ("x", "X") else int(name[1:])
    except ValueError:
        return None, i
    if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
        return chr(code), end + 1
    return None, i


def _skip_spaces(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _html_start_tag(text: str, begin: int, out: _Output, stack: list[_Open]) -> int:
    """Read the start tag at ``text[begin] == "<"``; return the index after its ``>``."""
    n = len(text)
    offset = _byte_offset(text, begin)
    i = begin + 1
    while i < n and not text[i].isspace() and text[i] != ">":
        i += 1
    if i >= n:
        raise EntityParseError(f"Unclosed start tag at byte offset {offset}")
    tag = text[begin + 1 : i].lower()
    if tag not in HTML_TAGS:
        raise EntityParseError(f'Unsupported start tag "{tag}" at byte offset {offset}')
    argument = ""
    expandable = False
    while True:
        i = _skip_spaces(text, i)
        if i >= n:
            raise EntityParseError(f'Unclosed start tag "{tag}" at byte offset {offset}')
        if text[i] == ">":
            break
        name_start = i
        while i < n and not text[i].isspace() and text[i] not in "=>":
            i += 1
        name = text[name_start:i].lower()
        i = _skip_spaces(text, i)
        if i >= n or text[i] != "=":
            if tag == "blockquote" and name == "expandable":
                expandable = True
                continue
            raise EntityParseError(
                f'Expected equal sign in declaration of an attribute of the tag "{tag}" '
                f"at byte offset {offset}"
            )
        i = _skip_spaces(text, i + 1)
        if i >= n:
            raise EntityParseError(f'Unclosed start tag "{tag}" at byte offset {offset}')
        value, i = _html_attribute_value(text, i, tag, offset)
        if tag == "a" and name == "href":
            argument = value
        elif tag == "code" and name == "class" and value.startswith("language-"):
            argument = value.removeprefix("language-")
        elif tag == "span" and name == "class" and value.startswith("tg-"):
            argument = value.removeprefix("tg-")
        elif tag == "tg-emoji" and name == "emoji-id":
            argument = value
    if tag == "span" and argument != "spoiler":
        raise EntityParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {offset}')
    stack.append(_Open(tag, out.units, begin, len(out.parts), argument, expandable))
    return i + 1


def _html_attribute_value(text: str, i: int, tag: str, offset: int) -> tuple[str, int]:
    """An attribute value (quoted or a bare name token) at ``i``; the index after it."""
    n = len(text)
    if text[i] not in "'\"":
        start = i
        while i < n and (text[i].isalnum() or text[i] in ".-"):
            i += 1
        if i == start:
            raise EntityParseError(
                f'Expected quote in declaration of an attribute of the tag "{tag}" at byte offset {offset}'
            )
        return text[start:i], i
    quote = text[i]
    i += 1
    chars: list[str] = []
    while i < n and text[i] != quote:
        if text[i] == "&":
            decoded, after = _html_entity(text, i)
            if decoded is not None:
                chars.append(decoded)
                i = after
                continue
        chars.append(text[i])
        i += 1
    if i >= n:
        raise EntityParseError(f"Unclosed end of attribute value at byte offset {offset}")
    return "".join(chars), i + 1


def _html_end_tag(
    text: str, begin: int, out: _Output, stack: list[_Open], entities: list[dict[str, Any]]
) -> int:
    """Close the innermost tag at ``text[begin:begin + 2] == "</"``; return the index after ``>``."""
    offset = _byte_offset(text, begin)
    if not stack:
        raise EntityParseError(f"Unexpected end tag at byte offset {offset}")
    n = len(text)
    i = begin + 2
    while i < n and not text[i].isspace() and text[i] != ">":
        i += 1
    name = text[begin + 2 : i].lower()
    i = _skip_spaces(text, i)
    if i >= n or text[i] != ">":
        raise EntityParseError(f"Unclosed end tag at byte offset {offset}")
    top = stack[-1]
    if name and name != top.kind:
        raise EntityParseError(
            f'Unmatched end tag at byte offset {offset}, expected "</{top.kind}>", found "</{name}>"'
        )
    stack.pop()
    length = out.units - top.start
    if length > 0:
        entity = _html_entity_for(top, length, out, entities)
        if entity is not None:
            entities.append(entity)
    return i + 1


def _html_entity_for(
    top: _Open, length: int, out: _Output, entities: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The entity a closed HTML tag makes (``None`` when Telegram would drop it)."""
    entity: dict[str, Any] = {"offset": top.start, "length": length}
    if top.kind in HTML_SIMPLE_TYPES:
        entity["type"] = HTML_SIMPLE_TYPES[top.kind]
    elif top.kind == "a":
        return _link_entity(top.argument or out.since(top.part_index), top.start, length)
    elif top.kind == "code":
        entity["type"] = "code"
        if top.argument:
            entity["language"] = top.argument  # kept only if a <pre> around it takes it
    elif top.kind == "pre":
        last = entities[-1] if entities else None
        if (
            last is not None
            and last["type"] == "code"
            and (last["offset"], last["length"]) == (top.start, length)
            and "language" in last
        ):
            entities.pop()
            return {"offset": top.start, "length": length, "type": "pre", "language": last["language"]}
        entity["type"] = "pre"
    elif top.kind == "blockquote":
        entity["type"] = "expandable_blockquote" if top.expandable else "blockquote"
    elif top.argument.isdigit():  # tg-emoji
        entity["type"] = "custom_emoji"
        entity["custom_emoji_id"] = top.argument
    else:
        return None
    return entity


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML parse mode as plain text + entities; raises ``EntityParseError`` like Telegram."""
    out = _Output()
    entities: list[dict[str, Any]] = []
    stack: list[_Open] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "&":
            decoded, after = _html_entity(text, i)
            if decoded is not None:
                out.add(decoded)
                i = after
                continue
        if char != "<":
            out.add(char)
            i += 1
        elif text.startswith("</", i):
            i = _html_end_tag(text, i, out, stack, entities)
        else:
            i = _html_start_tag(text, i, out, stack)
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].kind}"')
    for entity in entities:
        if entity["type"] == "code":
            entity.pop("language", None)
    return out.text(), _sorted_entities(entities)


MARKDOWN_TYPES = {"_": "italic", "*": "bold", "`": "code"}


def parse_markdown(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's legacy Markdown as plain text + entities; raises ``EntityParseError`` like Telegram."""
    out = _Output()
    entities: list[dict[str, Any]] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.add(text[i + 1])
            i += 2
            continue
        if char not in "_*`[":
            out.add(char)
            i += 1
            continue
        begin = i
        end_char = "]" if char == "[" else char
        is_pre = text.startswith("```", i)
        language = ""
        if is_pre:
            language, i = _open_pre(text, i + 3)
        else:
            i += 1
        start, part_index = out.units, len(out.parts)
        while i < n and (text[i] != end_char or (is_pre and not text.startswith("```", i))):
            out.add(text[i])
            i += 1
        if i >= n:
            offset = _byte_offset(text, begin)
            raise EntityParseError(f"Can't find end of the entity starting at byte offset {offset}")
        length = out.units - start
        entity: dict[str, Any] | None = None
        if char == "[":
            url = out.since(part_index)
            if text.startswith("(", i + 1):
                end = text.find(")", i + 2)
                end = n if end < 0 else end
                url, i = text[i + 2 : end], end
            entity = _link_entity(url, start, length)
        elif is_pre:
            entity = {"offset": start, "length": length, "type": "pre"}
            if language:
                entity["language"] = language
            i += 2
        else:
            entity = {"offset": start, "length": length, "type": MARKDOWN_TYPES[char]}
        if entity is not None and length > 0:
            entities.append(entity)
        i += 1
    return out.text(), _sorted_entities(entities)


PARSERS: Mapping[str, Callable[[str], tuple[str, list[dict[str, Any]]]]] = {
    "markdownv2": parse_markdown_v2,
    "html": parse_html,
    "markdown": parse_markdown,
}


def checked_entities(raw: Any, text: str) -> list[dict[str, Any]]:
    """Explicit ``entities`` validated against ``text`` (UTF-16 offsets) and normalized."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if not isinstance(raw, list):
        raise ApiError(400, CANT_PARSE_ENTITIES + "entities must be a JSON array")
    units = utf16_len(text)
    starts: set[int] | None = None
    entities: list[dict[str, Any]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ApiError(400, CANT_PARSE_ENTITIES + "entity must be a JSON object")
        kind, offset, length = item.get("type"), item.get("offset"), item.get("length")
        if kind not in ENTITY_TYPES:
            raise ApiError(400, CANT_PARSE_ENTITIES + f'unsupported entity type "{kind}"')
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise ApiError(400, CANT_PARSE_ENTITIES + f"wrong offset or length of a {kind} entity")
        if offset + length > units:
            raise ApiError(
                400,
                CANT_PARSE_ENTITIES + f"{kind} entity at offset {offset} with length {length} is beyond "
                f"the end of the text ({units} UTF-16 code units)",
            )
        if kind == "text_link" and not isinstance(item.get("url"), str):
            raise ApiError(400, CANT_PARSE_ENTITIES + "text_link entity without url")
        if length == 0:
            continue  # Telegram drops empty entities
        if units != len(text):
            starts = starts if starts is not None else _utf16_boundaries(text)
            if offset not in starts or offset + length not in starts:
                raise ApiError(400, CANT_PARSE_ENTITIES + f"{kind} entity splits a surrogate pair")
        entities.append({key: item[key] for key in ENTITY_KEYS if key in item})
    return _sorted_entities(entities)


def _utf16_boundaries(text: str) -> set[int]:
    """Every UTF-16 offset that falls between two characters of ``text``."""
    boundaries = {0}
    units = 0
    for char in text:
        units += 2 if ord(char) > 0xFFFF else 1
        boundaries.add(units)
    return boundaries


# ---------------------------------------------------------------- flood control


class FloodControl:
    """Applies ``FloodRules`` to writes; O(1) per write."""

    def __init__(self, rules: FloodRules, clock: Callable[[], float]) -> None:
        self.rules = rules
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}
        self._groups: dict[int, deque[float]] = {}
        self._global: deque[float] = deque(maxlen=rules.global_per_s or 1)

    def admit(self, chat_id: int | None, bot_wide: bool = True) -> int | None:
        """Count the write and return ``None``, or return the seconds to wait without counting it.

        ``bot_wide=False`` leaves the global rule out (a draft, by default).
        """
        rules = self.rules
        now = self._clock()
        waits: list[float] = []
        tokens = 0.0
        if rules.per_chat_per_s and chat_id is not None:
            tokens, last = self._buckets.get(chat_id, (float(rules.per_chat_burst), now))
            tokens = min(float(rules.per_chat_burst), tokens + (now - last) * rules.per_chat_per_s)
            if tokens < 1.0:
                waits.append((1.0 - tokens) / rules.per_chat_per_s)
        group = None
        if rules.per_group_per_min and chat_id is not None and chat_id < 0:
            group = self._groups.get(chat_id)
            if group is None:
                group = self._groups[chat_id] = deque(maxlen=rules.per_group_per_min)
            if len(group) == rules.per_group_per_min and group[0] > now - GROUP_WINDOW_S:
                waits.append(group[0] + GROUP_WINDOW_S - now)
        recent = self._global
        global_rule = bool(rules.global_per_s) and bot_wide
        if global_rule and len(recent) == rules.global_per_s and recent[0] > now - GLOBAL_WINDOW_S:
            waits.append(recent[0] + GLOBAL_WINDOW_S - now)
        if waits:
            return max(1, math.ceil(max(waits)))
        if rules.per_chat_per_s and chat_id is not None:
            self._buckets[chat_id] = (tokens - 1.0, now)
        if group is not None:
            group.append(now)
        if global_rule:
            recent.append(now)
        return None


DEFAULT_FLOOD_RULES = FloodRules()


# ---------------------------------------------------------------- the server


@dataclass(slots=True)
class _Chat:
    """What the fake knows about one chat."""

    chat: dict[str, Any]
    known: bool = False
    next_message_id: int = 1
    sent: dict[int, dict[str, Any]] = field(default_factory=dict)
    seen: dict[int, dict[str, Any]] = field(default_factory=dict)
    drafts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _ScriptedFailure:
    status: int
    description: str
    retry_after: int | None


def _json_response(payload: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode(),
        content_type=JSON_CONTENT_TYPE,
    )


def _ok(result: Any, description: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"ok": True, "result": result}
    if description is not None:
        payload["description"] = description
    return payload


def _decode_field(name: str, value: str) -> Any:
    """A form field as Telegram reads it: JSON inside the field unless the field is plain text."""
    if name in STRING_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _int_param(params: Mapping[str, Any], name: str, *, required: bool = True) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"Bad Request: {name} is empty")
        return None
    if isinstance(value, bool):
        raise ApiError(400, f"Bad Request: invalid {name} specified")
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        if name == "chat_id":
            raise ApiError(400, CHAT_NOT_FOUND) from None
        raise ApiError(400, f"Bad Request: invalid {name} specified") from None


def _scope_key(params: Mapping[str, Any]) -> tuple[str, str]:
    scope = params.get("scope") or {"type": "default"}
    return json.dumps(scope, sort_keys=True), str(params.get("language_code") or "")


def _without_reply(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as it appears inside ``reply_to_message`` (Telegram nests one level only)."""
    return {key: value for key, value in message.items() if key != "reply_to_message"}


class FakeTelegram(LocalServer):
    """A fake Telegram Bot API on ``127.0.0.1``: ``async with FakeTelegram() as tg: tg.base_url``."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_username: str = DEFAULT_BOT_USERNAME,
        bot_id: int = DEFAULT_BOT_ID,
        flood: FloodRules | None = DEFAULT_FLOOD_RULES,
        clock: Callable[[], float] = time.monotonic,
        latency_s: float = 0.0,
    ) -> None:
        """Serve the bot ``bot_username``/``bot_id`` under ``token``.

        Args:
            flood: the flood rules, or ``None`` for none.
            clock: monotonic seconds for flood control and ``Call.at`` (tests may pass a fake clock).
            latency_s: sleep this long before answering each request (a network round trip).
        """
        super().__init__()
        self.token = token
        self.bot_username = bot_username
        self.bot_id = bot_id
        self.flood = flood
        self.latency_s = latency_s
        self.calls: list[Call] = []
        self.flood_errors = 0
        self.confirmed_offset = 0
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self._clock = clock
        self._flood = FloodControl(flood, clock) if flood is not None else None
        self._calls_by_method: dict[str, list[Call]] = {}
        self._chats: dict[int, _Chat] = {}
        self._migrated: dict[int, int] = {}
        self._pending: deque[dict[str, Any]] = deque()
        self._last_update_id = 0
        self._wakeup = asyncio.Event()
        self._poll_generation = 0
        self._commands: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._failures: dict[str, deque[_ScriptedFailure]] = {}
        self._drops: dict[str, int] = {}
        self._webhook_params: dict[str, Any] = {}
        self._sender = {"id": bot_id, "is_bot": True, "first_name": BOT_FIRST_NAME, "username": bot_username}
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "getme": self._get_me,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "sendmessagedraft": self._send_message_draft,
            "deletemessage": self._delete_message,
            "sendchataction": self._send_chat_action,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "close": lambda params: _ok(True),
            "logout": lambda params: _ok(True),
        }

    # ------------------------------------------------------------ lifecycle

    def build_app(self) -> web.Application:
        """Every Bot API method under /bot<token>/, 404 elsewhere."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give python-telegram-bot (the token is appended to it)."""
        return f"http://{HOST}:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        """The ``base_file_url`` to give python-telegram-bot (no file is served: 404)."""
        return f"http://{HOST}:{self.port}/file/bot"

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot as ``getMe`` returns it."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": BOT_FIRST_NAME,
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
            "has_topics_enabled": False,
        }

    # ------------------------------------------------------------ what tests read

    def calls_of(self, method: str) -> list[Call]:
        """The calls of one method (case-insensitive), in order."""
        return list(self._calls_by_method.get(method.lower(), ()))

    def messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat as they are now (after edits, without deleted ones), in order."""
        state = self._chats.get(chat_id)
        return [dict(message) for message in state.sent.values()] if state else []

    def texts(self, chat_id: int) -> list[str]:
        """The current text of each of the bot's messages in a chat."""
        return [message["text"] for message in self.messages(chat_id)]

    def drafts(self, chat_id: int) -> list[str]:
        """The texts of the drafts the bot sent to a chat, in order."""
        state = self._chats.get(chat_id)
        return [draft["text"] for draft in state.drafts] if state else []

    def draft_records(self, chat_id: int) -> list[dict[str, Any]]:
        """Each draft as received: ``draft_id``, ``text``, ``entities`` and ``message_thread_id``."""
        state = self._chats.get(chat_id)
        return [dict(draft) for draft in state.drafts] if state else []

    def commands(
        self, scope: Mapping[str, Any] | None = None, language_code: str = ""
    ) -> list[dict[str, Any]]:
        """The commands set for a scope (default scope when ``None``) and language."""
        key = _scope_key({"scope": scope, "language_code": language_code})
        return list(self._commands.get(key, ()))

    @property
    def pending_updates(self) -> int:
        """How many updates are queued and not yet confirmed."""
        return len(self._pending)

    # ------------------------------------------------------------ scripting

    def fail_next(
        self,
        method: str,
        status: int = 429,
        *,
        retry_after: int = DEFAULT_RETRY_AFTER_S,
        description: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with this error instead of applying them.

        ``description`` gets Telegram's prefix for the status ("Bad Request: ...") when it lacks one;
        a 429 carries ``retry_after`` (at least 1) in ``parameters``.
        """
        phrase = STATUS_PHRASES.get(status, "Error")
        if status == 429:
            retry: int | None = max(1, int(retry_after))
            text = description or f"retry after {retry}"
        else:
            retry = None
            text = description or DEFAULT_DETAILS.get(status, "")
        if not text.startswith(phrase):
            text = f"{phrase}: {text}" if text else phrase
        queue = self._failures.setdefault(method.lower(), deque())
        queue.extend(_ScriptedFailure(status, text, retry) for _ in range(times))

    def drop_next(self, method: str, *, times: int = 1) -> None:
        """Close the connection of the next ``times`` calls of ``method`` without answering or applying them.

        Their ``Call`` keeps the parameters and has ``status`` 0 (no answer).
        """
        key = method.lower()
        self._drops[key] = self._drops.get(key, 0) + times

    def add_chat(
        self, chat_id: int, *, chat_type: str | None = None, title: str | None = None, is_forum: bool = False
    ) -> dict[str, Any]:
        """Make a chat known without pushing an update (a group the bot is in); returns the chat."""
        kind = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id}
        if kind == "private":
            chat["first_name"] = title or "Test"
        else:
            chat["title"] = title or "Test Group"
        if is_forum:
            chat["is_forum"] = True
        chat["type"] = kind
        return self._learn_chat(chat).chat

    # ------------------------------------------------------------ updates

    def push_update(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates and wake waiting polls; returns it with its ``update_id``."""
        queued = dict(update)
        update_id = queued.get("update_id")
        if not isinstance(update_id, int) or update_id <= self._last_update_id:
            update_id = self._last_update_id + 1
            queued["update_id"] = update_id
        self._last_update_id = update_id
        self._learn_update(queued)
        self._pending.append(queued)
        self._wake_polls()
        return queued

    def push_json_file(self, path: str | Path) -> dict[str, Any]:
        """Queue an update read from a JSON file (one of the payload samples); returns it."""
        return self.push_update(json.loads(Path(path).read_text(encoding="utf-8")))

    def private_text(
        self,
        user_id: int,
        text: str,
        first_name: str = "Test",
        message_id: int | None = None,
        *,
        username: str | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An update (without ``update_id``) with a user's text in their private chat with the bot."""
        user = self._user(user_id, first_name, username)
        chat: dict[str, Any] = {"id": user_id, "first_name": first_name}
        if username:
            chat["username"] = username
        chat["type"] = "private"
        message = self._user_message(chat, user, text, entities, message_id)
        return {"message": message}

    def group_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        entities: list[dict[str, Any]] | None = None,
        reply_to: int | Mapping[str, Any] | None = None,
        thread_id: int | None = None,
        chat_type: str = "supergroup",
        *,
        first_name: str = "Test",
        username: str | None = None,
        title: str | None = None,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """An update (without ``update_id``) with a user's text in a group.

        ``entities=None`` detects bot commands and ``@username`` mentions as Telegram does (``[]``: none).
        ``reply_to`` is a message id of the chat (or a whole message); ``thread_id`` makes the chat a
        forum and the message a topic message whose implicit ``reply_to_message`` is the topic's
        creation message, as Telegram sends it.
        """
        known = self._chats.get(chat_id)
        if known is not None and known.known:
            chat = dict(known.chat)
        else:
            chat = {"id": chat_id, "title": title or "Test Group", "type": chat_type}
        if thread_id is not None and not chat.get("is_forum"):
            chat = {
                "id": chat_id,
                "title": chat.get("title", "Test Group"),
                "is_forum": True,
                "type": chat["type"],
            }
        user = self._user(user_id, first_name, username)
        replied: dict[str, Any] | None = None
        if reply_to is not None:
            replied = self._reply_target(chat, reply_to)
        elif thread_id is not None:
            replied = {
                "message_id": thread_id,
                "from": user,
                "chat": chat,
                "date": int(time.time()),
                "message_thread_id": thread_id,
                "forum_topic_created": {"name": f"Topic {thread_id}", "icon_color": 7322096},
                "is_topic_message": True,
            }
        message = self._user_message(
            chat, user, text, entities, message_id, thread_id=thread_id, replied=replied
        )
        return {"message": message}

    def _user(self, user_id: int, first_name: str, username: str | None) -> dict[str, Any]:
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        user["language_code"] = "en"
        return user

    def _user_message(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        text: str,
        entities: list[dict[str, Any]] | None,
        message_id: int | None,
        *,
        thread_id: int | None = None,
        replied: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A user's text message, keys in the order Telegram sends them; reserves its message id."""
        state = self._state(chat["id"], chat)
        if thread_id is not None:
            state.next_message_id = max(state.next_message_id, thread_id + 1)
        if message_id is None:
            message_id = state.next_message_id
        state.next_message_id = max(state.next_message_id, message_id + 1)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": user,
            "chat": chat,
            "date": int(time.time()),
        }
        if thread_id is not None:
            message["message_thread_id"] = thread_id
        if replied is not None:
            message["reply_to_message"] = replied
        message["text"] = text
        found = text_entities(text) if entities is None else entities
        if found:
            message["entities"] = found
        if thread_id is not None:
            message["is_topic_message"] = True
        return message

    def _reply_target(self, chat: dict[str, Any], reply_to: int | Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(reply_to, int):
            return dict(reply_to)
        state = self._chats.get(chat["id"])
        target = state and (state.sent.get(reply_to) or state.seen.get(reply_to))
        if target:
            return _without_reply(target)
        return {"message_id": reply_to, "chat": chat, "date": int(time.time())}

    def _state(self, chat_id: int, chat: dict[str, Any] | None = None) -> _Chat:
        state = self._chats.get(chat_id)
        if state is None:
            default = {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"}
            state = self._chats[chat_id] = _Chat(chat or default)
        return state

    def _learn_chat(self, chat: Mapping[str, Any]) -> _Chat:
        state = self._state(int(chat["id"]))
        state.chat = dict(chat)
        state.known = True
        return state

    def _learn_message(self, message: Mapping[str, Any]) -> None:
        chat = message.get("chat")
        if not isinstance(chat, dict) or "id" not in chat:
            return
        state = self._learn_chat(chat)
        message_id = message.get("message_id")
        if isinstance(message_id, int):
            if message_id not in state.sent:
                state.seen[message_id] = dict(message)
            state.next_message_id = max(state.next_message_id, message_id + 1)
        replied = message.get("reply_to_message")
        if isinstance(replied, dict) and replied.get("chat", {}).get("id") == chat["id"]:
            replied_id = replied.get("message_id")
            if isinstance(replied_id, int) and replied_id not in state.sent and replied_id not in state.seen:
                state.seen[replied_id] = dict(replied)
        new_id = message.get("migrate_to_chat_id")
        if isinstance(new_id, int):
            self._migrated[int(chat["id"])] = new_id
            self._learn_chat({"id": new_id, "title": chat.get("title", ""), "type": "supergroup"})
        old_id = message.get("migrate_from_chat_id")
        if isinstance(old_id, int):
            self._migrated[old_id] = int(chat["id"])

    def _learn_update(self, update: Mapping[str, Any]) -> None:
        """Remember the chats and messages an update shows, so the bot can answer and reply to them."""
        for key in MESSAGE_KEYS:
            message = update.get(key)
            if isinstance(message, dict):
                self._learn_message(message)
        callback = update.get("callback_query")
        if isinstance(callback, dict) and isinstance(callback.get("message"), dict):
            self._learn_message(callback["message"])
        for key in CHAT_KEYS:
            member = update.get(key)
            if isinstance(member, dict) and isinstance(member.get("chat"), dict):
                self._learn_chat(member["chat"])

    def _wake_polls(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    # ------------------------------------------------------------ HTTP

    async def _not_found(self, request: web.Request) -> web.Response:
        return _json_response({"ok": False, "error_code": 404, "description": NOT_FOUND}, 404)

    async def _read_params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = {key: _decode_field(key, value) for key, value in request.query.items()}
        if not request.body_exists:
            return params
        if request.content_type == JSON_CONTENT_TYPE:
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON object") from None
            if isinstance(body, dict):
                params.update(body)
            return params
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                params[key] = {"filename": value.filename, "content_type": value.content_type}
            else:
                params[key] = _decode_field(key, str(value))
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        call = Call(method, {}, self._clock())
        self.calls.append(call)
        self._calls_by_method.setdefault(method.lower(), []).append(call)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self._drops.get(method.lower()):
            return await self._drop(request, call)
        try:
            call.params = await self._read_params(request)
            payload = await self._dispatch(request.match_info["token"], method.lower(), call.params)
        except ApiError as error:
            call.status = error.status
            logger.debug("%s -> %s %s", method, error.status, error.description)
            return _json_response(error.body(), error.status)
        return _json_response(payload)

    async def _drop(self, request: web.Request, call: Call) -> web.Response:
        """Read the request, then close the connection without an answer (a ``drop_next`` call)."""
        self._drops[call.method.lower()] -= 1
        call.status = 0
        with suppress(ApiError):
            call.params = await self._read_params(request)
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=499)  # never sent: the connection is gone

    async def _dispatch(self, token: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if token != self.token:
            raise ApiError(401, UNAUTHORIZED)
        handler = self._methods.get(method)
        if handler is None and method != "getupdates":
            raise ApiError(404, METHOD_NOT_FOUND)
        failures = self._failures.get(method)
        if failures:
            failure = failures.popleft()
            parameters = {"retry_after": failure.retry_after} if failure.retry_after else None
            raise ApiError(failure.status, failure.description, parameters)
        if handler is None:
            return _ok(await self._get_updates(params))
        return handler(params)

    # ------------------------------------------------------------ methods

    def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return _ok(self.bot_user)

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise ApiError(409, WEBHOOK_CONFLICT)
        offset = _int_param(params, "offset", required=False) or 0
        limit = _int_param(params, "limit", required=False) or MAX_UPDATES_LIMIT
        limit = min(max(limit, 1), MAX_UPDATES_LIMIT)
        timeout = float(params.get("timeout") or 0)
        self._confirm(offset)
        # A newer poll ends any older one still waiting, as Telegram does.
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_polls()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if generation != self._poll_generation:
                raise ApiError(409, POLL_CONFLICT)
            if self._pending or timeout <= 0:
                return list(itertools.islice(self._pending, limit))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            wakeup = self._wakeup
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return []

    def _confirm(self, offset: int) -> None:
        """Forget the updates an offset confirms (all below it; a negative one keeps the last -offset)."""
        pending = self._pending
        if offset > 0:
            self.confirmed_offset = max(self.confirmed_offset, offset)
            while pending and pending[0]["update_id"] < offset:
                pending.popleft()
        elif offset < 0:
            while len(pending) > -offset:
                pending.popleft()

    def _chat_for_write(self, params: Mapping[str, Any]) -> _Chat:
        chat_id = _int_param(params, "chat_id") or 0
        if chat_id in self._migrated and self._migrated[chat_id] != chat_id:
            raise ApiError(400, GROUP_MIGRATED, {"migrate_to_chat_id": self._migrated[chat_id]})
        state = self._chats.get(chat_id)
        if chat_id < 0 and (state is None or not state.known):
            raise ApiError(400, CHAT_NOT_FOUND)
        return state or self._state(chat_id)

    def _formatted_text(
        self, params: Mapping[str, Any], *, allow_empty: bool = False
    ) -> tuple[str, list[Any]]:
        """The text and entities after entity parsing; Telegram's errors for empty or broken text."""
        raw = params.get("text")
        text = "" if raw is None else raw if isinstance(raw, str) else json.dumps(raw)
        mode = params.get("parse_mode")
        if mode:
            parser = PARSERS.get(str(mode).lower())
            if parser is None:
                raise ApiError(400, PARSE_MODE_UNSUPPORTED)
            try:
                text, entities = parser(text)
            except EntityParseError as exc:
                raise ApiError(400, CANT_PARSE_ENTITIES + str(exc)) from None
        else:
            entities = None
        if not allow_empty and not text.strip():
            raise ApiError(400, TEXT_EMPTY)
        if entities is None:
            entities = checked_entities(params.get("entities"), text)
        return text, entities

    def _admit(self, chat_id: int | None, bot_wide: bool = True) -> None:
        """Count a write against the flood rules, or refuse it with 429."""
        if self._flood is None:
            return
        wait = self._flood.admit(chat_id, bot_wide)
        if wait is not None:
            self.flood_errors += 1
            raise ApiError.retry_after(wait)

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        state = self._chat_for_write(params)
        text, entities = self._formatted_text(params)
        if utf16_len(text) > TELEGRAM_MAX_TEXT:
            raise ApiError(400, TEXT_TOO_LONG)
        reply = self._reply_for(state, params)
        self._admit(state.chat["id"])
        message_id = state.next_message_id
        state.next_message_id += 1
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self._sender,
            "chat": state.chat,
            "date": int(time.time()),
        }
        thread_id = _int_param(params, "message_thread_id", required=False)
        if thread_id:
            message["message_thread_id"] = thread_id
        if reply is not None:
            message["reply_to_message"] = reply
        message["text"] = text
        if entities:
            message["entities"] = entities
        if thread_id and state.chat.get("is_forum"):
            message["is_topic_message"] = True
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        state.sent[message_id] = message
        return _ok(message)

    def _reply_for(self, state: _Chat, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The ``reply_to_message`` a send asks for; Telegram's error when it does not exist."""
        reply = params.get("reply_parameters")
        legacy_id = _int_param(params, "reply_to_message_id", required=False)
        if not isinstance(reply, dict):
            if legacy_id is None:
                return None
            reply = {"message_id": legacy_id}
        message_id = _int_param(reply, "message_id") or 0
        target = state.sent.get(message_id) or state.seen.get(message_id)
        if target is not None:
            return _without_reply(target)
        if reply.get("allow_sending_without_reply") or params.get("allow_sending_without_reply"):
            return None
        raise ApiError(400, REPLY_NOT_FOUND)

    def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("inline_message_id"):
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")
        state = self._chat_for_write(params)
        message_id = _int_param(params, "message_id") or 0
        text, entities = self._formatted_text(params)
        if utf16_len(text) > TELEGRAM_MAX_TEXT:
            raise ApiError(400, EDIT_TEXT_TOO_LONG)
        current = state.sent.get(message_id)
        if current is None:
            raise ApiError(
                400, MESSAGE_CANT_BE_EDITED if message_id in state.seen else MESSAGE_TO_EDIT_NOT_FOUND
            )
        markup = params.get("reply_markup")
        markup = markup if isinstance(markup, dict) and "inline_keyboard" in markup else None
        if (current["text"], current.get("entities", []), current.get("reply_markup")) == (
            text,
            entities,
            markup,
        ):
            raise ApiError(400, NOT_MODIFIED)
        self._admit(state.chat["id"])
        edited = {key: value for key, value in current.items() if key not in ("entities", "reply_markup")}
        edited["text"] = text
        edited["edit_date"] = int(time.time())
        if entities:
            edited["entities"] = entities
        if markup is not None:
            edited["reply_markup"] = markup
        state.sent[message_id] = edited
        return _ok(edited)

    def _send_message_draft(self, params: dict[str, Any]) -> dict[str, Any]:
        state = self._chat_for_write(params)
        draft_id = _int_param(params, "draft_id", required=False)
        if not draft_id:
            raise ApiError(400, DRAFT_ID_INVALID)
        if state.chat["id"] <= 0 or state.chat.get("type", "private") != "private":
            raise ApiError(400, DRAFT_CHAT_NOT_PRIVATE)
        text, entities = self._formatted_text(params, allow_empty=True)
        if utf16_len(text) > TELEGRAM_MAX_TEXT:
            raise ApiError(400, TEXT_TOO_LONG)
        if self.flood is not None and self.flood.count_drafts:
            self._admit(state.chat["id"], bot_wide=self.flood.drafts_in_global)
        draft: dict[str, Any] = {"draft_id": draft_id, "text": text, "entities": entities}
        thread_id = _int_param(params, "message_thread_id", required=False)
        if thread_id:
            draft["message_thread_id"] = thread_id
        state.drafts.append(draft)
        return _ok(True)

    def _delete_message(self, params: dict[str, Any]) -> dict[str, Any]:
        state = self._chat_for_write(params)
        message_id = _int_param(params, "message_id") or 0
        if state.sent.pop(message_id, None) is None and state.seen.pop(message_id, None) is None:
            raise ApiError(400, MESSAGE_TO_DELETE_NOT_FOUND)
        return _ok(True)

    def _send_chat_action(self, params: dict[str, Any]) -> dict[str, Any]:
        if str(params.get("action") or "").lower() not in CHAT_ACTIONS:
            raise ApiError(400, CHAT_ACTION_INVALID)
        self._chat_for_write(params)
        return _ok(True)

    def _set_my_commands(self, params: dict[str, Any]) -> dict[str, Any]:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        for command in commands:
            name = command.get("command") if isinstance(command, dict) else None
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", name.removeprefix("/")):
                raise ApiError(400, BOT_COMMAND_INVALID)
        cleaned = [
            {"command": c["command"].removeprefix("/"), "description": c.get("description", "")}
            for c in commands
        ]
        self._commands[_scope_key(params)] = cleaned
        return _ok(True)

    def _get_my_commands(self, params: dict[str, Any]) -> dict[str, Any]:
        return _ok(self._commands.get(_scope_key(params), []))

    def _delete_my_commands(self, params: dict[str, Any]) -> dict[str, Any]:
        self._commands.pop(_scope_key(params), None)
        return _ok(True)

    def _set_webhook(self, params: dict[str, Any]) -> dict[str, Any]:
        url = str(params.get("url") or "")
        if not url:
            return self._delete_webhook(params)
        if not url.lower().startswith("https://"):
            raise ApiError(400, WEBHOOK_NOT_HTTPS)
        if params.get("drop_pending_updates"):
            self._pending.clear()
        self.webhook_url = url
        self.webhook_secret = params.get("secret_token") or None
        self._webhook_params = {k: params[k] for k in ("max_connections", "allowed_updates") if k in params}
        self._wake_polls()
        return _ok(True, "Webhook was set")

    def _delete_webhook(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("drop_pending_updates"):
            self._pending.clear()
        was_set = bool(self.webhook_url)
        self.webhook_url = ""
        self.webhook_secret = None
        self._webhook_params = {}
        return _ok(True, "Webhook was deleted" if was_set else "Webhook is already deleted")

    def _get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }
        if self.webhook_url:
            info["max_connections"] = self._webhook_params.get("max_connections", 40)
            if "allowed_updates" in self._webhook_params:
                info["allowed_updates"] = self._webhook_params["allowed_updates"]
        return _ok(info)
