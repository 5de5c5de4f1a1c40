"""The bot core: decides whether and how to answer, keeps context, drives the reply sink."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from bot.commands import CommandContext, parse_command, run_command
from bot.config import Settings
from bot.context import build_context, context_budget
from bot.conversation import chat_prefix, conversation_key, user_key
from bot.errors import ModelError, ShuttingDown, UserError
from bot.messages import ChatKind, IncomingMessage, ReplySink
from bot.model import Completion, GenerationParams, ModelClient, ModelStream, Turn, Usage
from bot.ordering import ConversationQueue
from bot.streaming import StreamWriter
from bot.text import split_for_limit
from bot.tokens import message_tokens
from storage import Conversation, NewMessage, Store, TurnRecord
from storage.base import STATUS_FAILED, STATUS_PARTIAL

logger = logging.getLogger(__name__)

GENERIC_ERROR_TEXT = "Sorry, something went wrong while answering. Please try again."
EMPTY_PROMPT_TEXT = "Send me a question as text and I will answer it."
# A quoted message from someone else is context, not the whole window.
MAX_QUOTE_CHARS = 2_000
# What the inbox keeps of a message: everything but the platform object.
_PAYLOAD_FIELDS = tuple(f.name for f in fields(IncomingMessage) if f.name != "raw")


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-request generation settings (the HTTP API's optional fields)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] | None = None
    n: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the core answered to one message."""

    text: str
    choices: tuple[str, ...] = ()
    usage: Usage | None = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    """One accepted message waiting for its turn."""

    message: IncomingMessage
    key: str
    sink: ReplySink
    overrides: Overrides
    inbox_id: int


class BotCore:
    """Shared by every adapter: addressing, commands, context, streaming, failures."""

    def __init__(self, settings: Settings, store: Store, model: ModelClient) -> None:
        self._settings = settings
        self._store = store
        self._model = model
        self._queue: ConversationQueue[Reply] = ConversationQueue(settings.max_concurrent)
        self._closing = False

    @property
    def settings(self) -> Settings:
        """The settings the core runs with."""
        return self._settings

    def should_answer(self, message: IncomingMessage) -> bool:
        """Private chats always; groups when addressed, or every message with text if configured."""
        if message.chat_kind is ChatKind.PRIVATE or message.addressed:
            return True
        # Without text (a join, a photo, content hidden by Discord) there is nothing to answer.
        return self._settings.group_answer_all and bool(message.text.strip())

    async def submit(
        self, message: IncomingMessage, sink: ReplySink, overrides: Overrides | None = None
    ) -> asyncio.Future[Reply] | None:
        """Accept a message; return once it is recorded, with a future for its reply.

        None means the message is not for us or was received before. Raises ShuttingDown
        while stopping, so the adapter leaves the message unconfirmed.
        """
        if self._closing:
            raise ShuttingDown
        if not self.should_answer(message):
            logger.debug("ignoring unaddressed %s message %s", message.platform, message.message_id)
            return None
        key = conversation_key(message, self._settings.group_context)
        # Reserve the place before the first await, so arrival order is the answer order.
        slot = self._queue.reserve(key)
        try:
            inbox_id = await self._store.inbox_add(
                message.platform, message.chat_id, message.message_id, _payload(message)
            )
        except BaseException:
            slot.skip()
            raise
        if inbox_id is None:
            logger.info("duplicate %s message %s ignored", message.platform, message.message_id)
            slot.skip()
            return None
        job = _Job(message, key, sink, overrides or Overrides(), inbox_id)
        return slot.fill(lambda: self._handle(job))

    async def _handle(self, job: _Job) -> Reply:
        """Answer one message; every failure becomes a short reply and a log entry."""
        message = job.message
        try:
            try:
                reply, recorded = await self._dispatch(job)
                status = "answered"
            except UserError as exc:
                reply, recorded, status = Reply(str(exc), error=exc), False, "refused"
                # A refusal that cannot be sent is a failure like any other (below).
                await self._say(job.sink, str(exc))
        except Exception as exc:
            logger.exception(
                "failed to answer %s message %s in chat %s",
                message.platform,
                message.message_id,
                message.chat_id,
            )
            reply, recorded, status = Reply(GENERIC_ERROR_TEXT, error=exc), False, "failed"
            with suppress(Exception):
                await self._say(job.sink, GENERIC_ERROR_TEXT)
        if not recorded:
            await self._store.inbox_finish(job.inbox_id, status)
        return reply

    async def _dispatch(self, job: _Job) -> tuple[Reply, bool]:
        """Route to a command or the model; the flag says the turn closed the inbox entry."""
        message = job.message
        conversation = await self._store.conversation(job.key)
        command = parse_command(message.text.strip())
        if command is not None:
            shared = message.chat_kind is ChatKind.GROUP and self._settings.group_context == "shared"
            context = CommandContext(
                self._settings, self._store, conversation, user_key(message), not shared or message.is_admin
            )
            text = await run_command(command, context)
            await self._say(job.sink, text)
            return Reply(text), False
        return await self._chat(job, conversation), True

    async def _chat(self, job: _Job, conversation: Conversation) -> Reply:
        """Ask the model with the conversation's context and record the turn."""
        prompt = _prompt_of(job.message, named=self._settings.group_context == "shared")
        params = self.generation_params(conversation.model, job.overrides)
        system = conversation.system_prompt or self._settings.system_prompt
        budget = context_budget(self._settings.window_for(params.model), params.max_tokens)
        turns, prompt_tokens = await build_context(self._store, conversation, system, prompt, budget)
        logger.debug("conversation %s prompt: %s", conversation.id, prompt)
        writer = StreamWriter(job.sink)
        try:
            async with job.sink.typing():
                choices, usage = await self._generate(turns, params, writer)
        except ModelError as exc:
            await self._record_failure(job, conversation, prompt, writer, exc)
            return Reply(exc.user_text, error=exc)
        answer = choices[0]
        usage = usage or Usage(prompt_tokens, message_tokens(answer), estimated=True)
        await self._store.record_turn(
            self._turn_record(
                job,
                conversation,
                (
                    NewMessage("user", prompt, message_tokens(prompt)),
                    NewMessage("assistant", answer, message_tokens(answer)),
                ),
                usage,
            )
        )
        logger.info(
            "answered %s message %s: %d+%d tokens, %d chars",
            job.message.platform,
            job.message.message_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            len(answer),
        )
        return Reply(answer, choices, usage)

    async def _generate(
        self, turns: Sequence[Turn], params: GenerationParams, writer: StreamWriter
    ) -> tuple[tuple[str, ...], Usage | None]:
        """Run the model, rendering through the writer; return every choice and the usage."""
        if params.n > 1:
            completion = await self._model.complete(turns, params)
            await writer.feed(completion.choices[0])
            await writer.finish()
            return completion.choices, completion.usage
        stream = self._model.stream(turns, params)
        async with aclosing(aiter(stream)) as deltas:
            async for delta in deltas:
                await writer.feed(delta)
        await writer.finish()
        return (writer.text,), stream.usage

    async def _record_failure(
        self,
        job: _Job,
        conversation: Conversation,
        prompt: str,
        writer: StreamWriter,
        exc: ModelError,
    ) -> None:
        """Tell the user, keep partial text visible, store the turn out of future context."""
        logger.warning(
            "model failed for %s message %s (conversation %s): %s",
            job.message.platform,
            job.message.message_id,
            conversation.id,
            exc,
        )
        partial = writer.text
        messages = [NewMessage("user", prompt, message_tokens(prompt), STATUS_FAILED)]
        if partial.strip():
            messages.append(NewMessage("assistant", partial, message_tokens(partial), STATUS_PARTIAL))
        record = self._turn_record(job, conversation, tuple(messages), Usage(0, 0, estimated=True))
        # Stored before anything is sent, so a failing sink cannot lose the turn.
        await self._store.record_turn(replace(record, inbox_status="failed"))
        if partial.strip():
            await writer.finish()
        await self._say(job.sink, exc.user_text)

    def _turn_record(
        self, job: _Job, conversation: Conversation, messages: tuple[NewMessage, ...], usage: Usage
    ) -> TurnRecord:
        """The store write for one handled message."""
        return TurnRecord(
            conversation_id=conversation.id,
            messages=messages,
            user_key=user_key(job.message),
            user_name=job.message.user_name,
            day=datetime.now(UTC).date().isoformat(),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            inbox_id=job.inbox_id,
        )

    def generation_params(self, model: str | None, overrides: Overrides | None = None) -> GenerationParams:
        """Settings merged with a conversation's model and a request's overrides."""
        o = overrides or Overrides()
        s = self._settings
        chosen = o.model or model or s.model
        if chosen not in s.models:
            raise UserError(f"Model '{chosen}' is not available. Choose one of: {', '.join(s.models)}")
        params = GenerationParams(
            model=chosen,
            max_tokens=o.max_tokens or s.max_tokens,
            temperature=s.temperature if o.temperature is None else o.temperature,
            stop=o.stop if o.stop is not None else (tuple(s.stop) if s.stop else None),
            n=o.n or s.n,
        )
        if params.max_tokens >= s.window_for(chosen):
            raise UserError(
                f"max_tokens {params.max_tokens} does not fit {chosen}'s window of "
                f"{s.window_for(chosen)} tokens."
            )
        return params

    async def complete(self, turns: Sequence[Turn], overrides: Overrides | None = None) -> Completion:
        """Stateless completion of caller-supplied turns (the OpenAI-compatible API)."""
        if self._closing:
            raise ShuttingDown
        return await self._model.complete(turns, self.generation_params(None, overrides))

    def stream(self, turns: Sequence[Turn], overrides: Overrides | None = None) -> ModelStream:
        """Stateless streamed completion of caller-supplied turns."""
        if self._closing:
            raise ShuttingDown
        params = self.generation_params(None, overrides)
        return self._model.stream(turns, replace(params, n=1))

    async def move_chat(self, platform: str, old_chat_id: str, new_chat_id: str) -> None:
        """A chat changed id (a Telegram group became a supergroup): its context follows."""
        moved = await self._store.move_conversations(
            chat_prefix(platform, old_chat_id), chat_prefix(platform, new_chat_id)
        )
        logger.info("%s chat %s became %s: %d conversations moved", platform, old_chat_id, new_chat_id, moved)

    async def _say(self, sink: ReplySink, text: str) -> None:
        """Send a whole text, split to the sink's limit."""
        for part in split_for_limit(text, sink.max_message_len):
            await sink.send(part)

    async def close(self, timeout: float) -> bool:
        """Take no new messages; let in-flight answers finish within `timeout` s."""
        self._closing = True
        finished = await self._queue.join(timeout)
        if not finished:
            logger.warning("shutdown timeout: %d conversations still answering", self._queue.active)
            await self._queue.cancel()
        return finished


def _prompt_of(message: IncomingMessage, named: bool = False) -> str:
    """The user's text, with a quoted message from someone else as context.

    In a shared group context each turn is prefixed with its author, so the model can tell
    the speakers apart.
    """
    text = message.text.strip()
    if not text:
        raise UserError(EMPTY_PROMPT_TEXT)
    if named and message.chat_kind is ChatKind.GROUP:
        text = f"{message.user_name}: {text}"
    if message.reply_to_text:
        quote = message.reply_to_text[:MAX_QUOTE_CHARS]
        return f'(In reply to: "{quote}")\n\n{text}'
    return text


def _payload(message: IncomingMessage) -> str:
    """The message as JSON for the inbox, without the platform object."""
    # Field by field: dataclasses.asdict deep-copies, and was the core's costliest line.
    return json.dumps({name: getattr(message, name) for name in _PAYLOAD_FIELDS}, ensure_ascii=False)
