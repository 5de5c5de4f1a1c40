"""The bot core: decides whether and how to answer, keeps context, drives the reply sink."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from bot.access import Access
from bot.budgets import Budgets
from bot.bursts import Burst, Bursts
from bot.commands import CommandContext, parse_command, run_command
from bot.config import Settings
from bot.conversation import chat_prefix, conversation_key, user_key
from bot.errors import LimitExceeded, ModelError, ShuttingDown, UserError
from bot.limits import RateLimits
from bot.messages import ChatKind, IncomingMessage, ReplySink
from bot.metrics import Metrics
from bot.model import Completion, GenerationParams, ModelClient, ModelStream, Turn, Usage
from bot.ordering import ConversationQueue, Slot
from bot.planner import ContextPlanner
from bot.streaming import StreamWriter
from bot.text import split_for_limit
from bot.texts import Lang, duration, pick_language, render
from bot.tokens import message_tokens
from storage import Conversation, NewMessage, Store, TurnRecord
from storage.base import STATUS_FAILED, STATUS_PARTIAL

logger = logging.getLogger(__name__)

# Readiness probes answer within this, even when the store or backend hangs.
READY_PROBE_TIMEOUT_S = 5.0
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
    """One accepted message (or merged burst) waiting for its turn."""

    message: IncomingMessage
    key: str
    sink: ReplySink
    overrides: Overrides
    inbox_ids: tuple[int, ...]
    lang: Lang
    is_admin: bool
    burst: Burst | None = None


class BotCore:
    """Shared by every adapter: addressing, commands, context, streaming, failures."""

    def __init__(
        self, settings: Settings, store: Store, model: ModelClient, metrics: Metrics | None = None
    ) -> None:
        self._settings = settings
        self._store = store
        self._model = model
        self._queue: ConversationQueue[Reply] = ConversationQueue(settings.max_concurrent)
        self.metrics = metrics or Metrics()
        self.metrics.watch(lambda: self._queue.waiting, lambda: self._queue.running)
        self._closing = False
        self._access = Access(settings)
        self._budgets = Budgets(settings, store)
        self._limits = RateLimits(settings.user_messages_per_minute, settings.chat_messages_per_minute)
        self._bursts = Bursts(settings)
        self._planner = ContextPlanner(settings, store, model)

    async def start(self) -> None:
        """Load the admins' stored bans and limits; call once before submitting."""
        policies = await self._store.user_policies()
        for policy in policies:
            self._budgets.remember(policy)
            self._access.set_banned(policy.user_key, policy.banned)
        logger.info("loaded %d user policies (%d banned)", len(policies), len(self._access.banned))

    def language_of(self, message: IncomingMessage) -> Lang:
        """The language of the bot's own texts for this message's author."""
        return pick_language(message.language, self._settings.default_language)

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

    def accepts(self, message: IncomingMessage) -> bool:
        """Whether the core would answer this message (addressed, allowed, not banned)."""
        return (
            self.should_answer(message)
            and self._access.allows(message)
            and not self._access.is_banned(message)
        )

    async def submit(
        self, message: IncomingMessage, sink: ReplySink, overrides: Overrides | None = None
    ) -> asyncio.Future[Reply] | None:
        """Accept a message; return once it is recorded, with a future for its reply.

        None means the message is not for us, was received before, or comes from a banned
        user. Raises ShuttingDown while stopping, so the adapter leaves the message unconfirmed.
        """
        if self._closing:
            raise ShuttingDown
        if not self.should_answer(message):
            logger.debug("ignoring unaddressed %s message %s", message.platform, message.message_id)
            return None
        if self._access.is_banned(message):
            logger.info("ignoring %s message %s from a banned user", message.platform, message.message_id)
            return None
        key = conversation_key(message, self._settings.group_context)
        # Reserve the place before the first await, so arrival order is the answer order.
        slot = self._queue.reserve(key)
        try:
            inbox_id = await self._store.inbox_add(
                message.platform, message.chat_id, message.message_id, _payload(message), key
            )
        except BaseException:
            slot.skip()
            raise
        if inbox_id is None:
            logger.info("duplicate %s message %s ignored", message.platform, message.message_id)
            slot.skip()
            return None
        self.metrics.received.labels(message.platform).inc()
        return self._schedule(slot, key, message, sink, overrides or Overrides(), inbox_id)

    def _schedule(
        self,
        slot: Slot[Reply],
        key: str,
        message: IncomingMessage,
        sink: ReplySink,
        overrides: Overrides,
        inbox_id: int,
    ) -> asyncio.Future[Reply]:
        """Decide what a recorded message gets (burst, refusal, rate limit, answer); no awaits."""
        if (joined := self._bursts.join(key, message, sink, inbox_id)) is not None:
            slot.skip()
            return joined
        job = _Job(
            message,
            key,
            sink,
            overrides,
            (inbox_id,),
            self.language_of(message),
            self._access.is_admin(message),
        )
        if not self._access.allows(message):
            return slot.fill(lambda: self._refuse(job))
        if not job.is_admin and (
            limited := self._limits.check(user_key(message), chat_prefix(message.platform, message.chat_id))
        ):
            which, verdict = limited
            return slot.fill(lambda: self._limited(job, which, verdict.retry_after, verdict.notify))
        burst = self._bursts.open(key, message, sink, inbox_id)
        future = slot.fill(lambda: self._handle(replace(job, burst=burst)))
        if burst is not None:
            burst.future = future
        return future

    async def replay(
        self, platform: str, sink_for: Callable[[IncomingMessage], ReplySink | None]
    ) -> list[asyncio.Future[Reply]]:
        """Answer the platform's messages recorded before a stop or crash but never answered.

        Call before taking new messages, so replayed ones keep their place ahead of them.
        `sink_for` may return None when a message can no longer be answered (it is closed).
        """
        futures: list[asyncio.Future[Reply]] = []
        for entry in await self._store.inbox_claim(platform):
            message = _from_payload(entry.payload)
            sink = sink_for(message) if message is not None else None
            if message is None or sink is None:
                logger.warning("%s message %s cannot be answered after a restart", platform, entry.message_id)
                await self._store.inbox_finish(entry.id, "expired")
                continue
            logger.info("replaying %s message %s from before the restart", platform, entry.message_id)
            key = conversation_key(message, self._settings.group_context)
            futures.append(
                self._schedule(self._queue.reserve(key), key, message, sink, Overrides(), entry.id)
            )
        return futures

    async def expire_pending(self, platforms: Collection[str]) -> int:
        """Close unanswered entries whose caller is gone after a restart (an HTTP request, the console)."""
        expired = 0
        for platform in platforms:
            for entry in await self._store.inbox_claim(platform):
                await self._store.inbox_finish(entry.id, "expired")
                expired += 1
        if expired:
            logger.info("%d unanswered requests from before the restart expired", expired)
        return expired

    async def _refuse(self, job: _Job) -> Reply:
        """Not on the allow lists: a short reply when the bot was addressed, else silence."""
        message = job.message
        logger.info("refused %s user %s in chat %s", message.platform, message.user_id, message.chat_id)
        error = UserError("not_allowed")
        if message.addressed:
            await self._say_safely(job, error.render(job.lang))
        await self._finish_inbox(job, "refused")
        return Reply(error.render(job.lang), error=error)

    async def _limited(self, job: _Job, which: str, retry_after: float, notify: bool) -> Reply:
        """Over a rate limit: say so once per limited stretch, then stay silent until it clears."""
        key = "rate_limited" if which == "user" else "chat_rate_limited"
        error = LimitExceeded(key, retry_after, wait=duration(retry_after, job.lang))
        message = job.message
        logger.info(
            "%s message %s over the %s rate limit (retry in %.0f s)",
            message.platform,
            message.message_id,
            which,
            retry_after,
        )
        if notify:
            await self._say_safely(job, error.render(job.lang))
        await self._finish_inbox(job, "limited")
        return Reply(error.render(job.lang), error=error)

    async def _say_safely(self, job: _Job, text: str) -> None:
        """Send a notice; a platform failure is logged, not raised (the inbox still closes)."""
        try:
            await self._say(job.sink, text)
        except Exception:
            logger.exception(
                "could not send a notice to %s chat %s", job.message.platform, job.message.chat_id
            )

    async def _handle(self, job: _Job) -> Reply:
        """Answer one message; every failure becomes a short reply and a log entry."""
        if job.burst is not None:
            merged, inbox_ids = await self._bursts.settle(job.burst)
            job = replace(job, message=merged, inbox_ids=inbox_ids)
        message = job.message
        try:
            try:
                # Across workers sharing a database: this conversation's earlier messages first.
                async with self._store.conversation_turn(job.key, job.inbox_ids[0]):
                    reply, recorded = await self._dispatch(job)
                status = "answered"
            except UserError as exc:
                text = exc.render(job.lang)
                reply, recorded, status = Reply(text, error=exc), False, "refused"
                # A refusal that cannot be sent is a failure like any other (below).
                await self._say(job.sink, text)
        except Exception as exc:
            logger.exception(
                "failed to answer %s message %s in chat %s",
                message.platform,
                message.message_id,
                message.chat_id,
            )
            self.metrics.errors.labels("internal").inc()
            text = render("generic_error", job.lang)
            reply, recorded, status = Reply(text, error=exc), False, "failed"
            with suppress(Exception):
                await self._say(job.sink, text)
        if not recorded:
            await self._finish_inbox(job, status)
        else:
            self._count(job, _outcome(reply))
        return reply

    async def _finish_inbox(self, job: _Job, status: str) -> None:
        """Close the job's inbox entries without a stored turn."""
        self._count(job, status)
        for inbox_id in job.inbox_ids:
            await self._store.inbox_finish(inbox_id, status)

    def _count(self, job: _Job, outcome: str) -> None:
        """Count every message of a finished job under its outcome."""
        self.metrics.handled.labels(job.message.platform, outcome).inc(len(job.inbox_ids))

    async def _dispatch(self, job: _Job) -> tuple[Reply, bool]:
        """Route to a command or the model; the flag says the turn closed the inbox entry."""
        message = job.message
        conversation = await self._store.conversation(job.key)
        command = parse_command(message.text.strip())
        if command is not None:
            text = await run_command(command, self._command_context(job, conversation))
            await self._say(job.sink, text)
            return Reply(text), False
        return await self._chat(job, conversation), True

    def _command_context(self, job: _Job, conversation: Conversation) -> CommandContext:
        """What a command may see and change for this message's author."""
        message = job.message
        shared = message.chat_kind is ChatKind.GROUP and self._settings.group_context == "shared"
        # With no admins named for the platform, anyone may change a shared conversation.
        may_change = not shared or job.is_admin or not self._access.has_admins(message.platform)
        return CommandContext(
            settings=self._settings,
            store=self._store,
            access=self._access,
            budgets=self._budgets,
            conversation=conversation,
            user_key=user_key(message),
            platform=message.platform,
            lang=job.lang,
            is_admin=job.is_admin,
            may_change=may_change,
        )

    async def _chat(self, job: _Job, conversation: Conversation) -> Reply:
        """Ask the model with the conversation's context and record the turn."""
        await self._budgets.check(user_key(job.message), job.is_admin, job.lang)
        prompt = _prompt_of(job.message, named=self._settings.group_context == "shared")
        params = self.generation_params(conversation.model, job.overrides)
        conversation = await self._planner.fresh_if_idle(conversation)
        turns, prompt_tokens, extra = await self._planner.turns(conversation, prompt, params)
        logger.debug("conversation %s prompt: %s", conversation.id, prompt)
        writer = StreamWriter(job.sink)
        started = writer.clock()
        try:
            async with job.sink.typing():
                choices, usage = await self._generate(turns, params, writer)
        except ModelError as exc:
            self.metrics.errors.labels(exc.kind.value).inc()
            await self._record_failure(job, conversation, prompt, writer, exc)
            return Reply(exc.render(job.lang), error=exc)
        self._observe_model(writer, started, usage)
        answer = choices[0]
        usage = usage or Usage(prompt_tokens, message_tokens(answer), estimated=True)
        undelivered = await self._deliver(job, writer)
        charged = Usage(
            usage.prompt_tokens + extra.prompt_tokens, usage.completion_tokens + extra.completion_tokens
        )
        await self._store.record_turn(
            self._turn_record(
                job,
                conversation,
                (
                    NewMessage("user", prompt, message_tokens(prompt)),
                    NewMessage("assistant", answer, message_tokens(answer)),
                ),
                charged,
                "answered" if undelivered is None else "undelivered",
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
        return Reply(answer, choices, usage, error=undelivered)

    def _observe_model(self, writer: StreamWriter, started: float, usage: Usage | None) -> None:
        """Model latency (first token, whole answer) and token counts."""
        done = writer.clock()
        first = writer.first_delta_at
        metrics = self.metrics
        if first is not None:
            metrics.first_token_latency.observe(first - started)
        metrics.total_latency.observe(done - started)
        if usage is not None:
            metrics.prompt_tokens.observe(usage.prompt_tokens)
            metrics.completion_tokens.observe(usage.completion_tokens)

    async def _generate(
        self, turns: Sequence[Turn], params: GenerationParams, writer: StreamWriter
    ) -> tuple[tuple[str, ...], Usage | None]:
        """Run the model, rendering through the writer; return every choice and the usage."""
        if params.n > 1:
            completion = await self._model.complete(turns, params)
            await writer.feed(completion.choices[0])
            return completion.choices, completion.usage
        stream = self._model.stream(turns, params)
        async with aclosing(aiter(stream)) as deltas:
            async for delta in deltas:
                await writer.feed(delta)
        return (writer.text,), stream.usage

    async def _deliver(self, job: _Job, writer: StreamWriter) -> Exception | None:
        """Write the final answer; if the platform refuses it for good, log the ids and return why.

        The turn is stored either way: the answer exists and later context needs it.
        """
        try:
            await writer.finish()
        except Exception as exc:
            self.metrics.errors.labels("delivery").inc()
            logger.exception(
                "answer to %s message %s in chat %s could not be delivered; the turn is kept",
                job.message.platform,
                job.message.message_id,
                job.message.chat_id,
            )
            return exc
        return None

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
        await self._say(job.sink, exc.render(job.lang))

    def _turn_record(
        self,
        job: _Job,
        conversation: Conversation,
        messages: tuple[NewMessage, ...],
        usage: Usage,
        inbox_status: str = "answered",
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
            inbox_ids=job.inbox_ids,
            inbox_status=inbox_status,
        )

    def generation_params(self, model: str | None, overrides: Overrides | None = None) -> GenerationParams:
        """Settings merged with a conversation's model and a request's overrides."""
        o = overrides or Overrides()
        s = self._settings
        chosen = o.model or model or s.model
        if chosen not in s.models:
            raise UserError("model_unavailable", name=chosen, choices=", ".join(s.models))
        params = GenerationParams(
            model=chosen,
            max_tokens=o.max_tokens or s.max_tokens,
            temperature=s.temperature if o.temperature is None else o.temperature,
            stop=o.stop if o.stop is not None else (tuple(s.stop) if s.stop else None),
            n=o.n or s.n,
        )
        if params.max_tokens >= s.window_for(chosen):
            raise UserError(
                "max_tokens_too_big", max_tokens=params.max_tokens, model=chosen, window=s.window_for(chosen)
            )
        return params

    async def readiness(self) -> dict[str, str]:
        """Probe the store and the model backend: 'ok' or a short, secret-free reason for each."""
        checks = {"accepting": "no, shutting down" if self._closing else "ok"}
        probes = {"store": self._store.ping, "model": self._model.probe}
        for name, probe in probes.items():
            try:
                await asyncio.wait_for(probe(), READY_PROBE_TIMEOUT_S)
                checks[name] = "ok"
            except Exception as exc:  # any failure means not ready; details only in the log
                logger.warning("readiness: %s check failed: %s", name, exc)
                checks[name] = exc.kind.value if isinstance(exc, ModelError) else type(exc).__name__
        return checks

    def admit(self, platform: str, user_id: str) -> None:
        """Count a stateless request against the rate limits; raise LimitExceeded when over."""
        key = f"{platform}:{user_id}"
        if (limited := self._limits.check(key, key)) is not None:
            _, verdict = limited
            raise LimitExceeded("rate_limited", verdict.retry_after, wait=duration(verdict.retry_after))

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
        raise UserError("empty_prompt")
    if named and message.chat_kind is ChatKind.GROUP:
        text = f"{message.user_name}: {text}"
    if message.reply_to_text:
        quote = message.reply_to_text[:MAX_QUOTE_CHARS]
        return f'(In reply to: "{quote}")\n\n{text}'
    return text


def _outcome(reply: Reply) -> str:
    """How a message with a stored turn ended."""
    if reply.error is None:
        return "answered"
    return "failed" if isinstance(reply.error, ModelError) else "undelivered"


def _from_payload(payload: str) -> IncomingMessage | None:
    """A message back from its inbox JSON; None if it cannot be read (a newer or damaged entry)."""
    try:
        fields_ = json.loads(payload)
        fields_["chat_kind"] = ChatKind(fields_["chat_kind"])
        fields_["role_ids"] = tuple(fields_.get("role_ids", ()))
        return IncomingMessage(**fields_)
    except (ValueError, TypeError, KeyError):
        logger.exception("unreadable inbox payload")
        return None


def _payload(message: IncomingMessage) -> str:
    """The message as JSON for the inbox, without the platform object."""
    # Field by field: dataclasses.asdict deep-copies, and was the core's costliest line.
    return json.dumps({name: getattr(message, name) for name in _PAYLOAD_FIELDS}, ensure_ascii=False)
