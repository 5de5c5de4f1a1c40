"""OpenAI-compatible routes, so any official OpenAI SDK can use gptrelay by base URL."""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import aclosing
from typing import Any

from aiohttp import web

from adapters.http_schemas import ApiError, ChatRequest, client_id, parse_body, read_json_object
from bot.core import BotCore
from bot.errors import ModelError
from bot.model import Completion, Turn

PLATFORM = "http"

logger = logging.getLogger(__name__)

# Roles OpenAI added later that older servers do not know: map them to the classic ones.
ROLE_ALIASES = {"developer": "system", "tool": "user"}


def add_openai_routes(app: web.Application, core: BotCore) -> None:
    """Register /v1/chat/completions and /v1/models."""
    routes = _OpenAIRoutes(core)
    app.router.add_post("/v1/chat/completions", routes.chat_completions)
    app.router.add_get("/v1/models", routes.models)


class _OpenAIRoutes:
    """Handlers speaking OpenAI's wire format."""

    def __init__(self, core: BotCore) -> None:
        self._core = core

    async def models(self, request: web.Request) -> web.Response:
        """The models this operator allows."""
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "gptrelay"}
            for name in self._core.settings.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Stateless chat completion of the caller's messages, streamed or whole."""
        chat = parse_body(ChatRequest, await read_json_object(request))
        self._core.admit(PLATFORM, client_id(request))
        turns = [Turn(ROLE_ALIASES.get(m.role, m.role), m.text()) for m in chat.messages]
        overrides = chat.overrides()
        model = self._core.generation_params(None, overrides).model
        logger.info("chat.completions: %d messages, stream=%s", len(turns), chat.stream)
        if chat.stream:
            if (chat.n or 1) > 1:
                raise ApiError(400, "n > 1 is not supported with stream=true; ask without streaming")
            include_usage = bool((chat.stream_options or {}).get("include_usage"))
            return await self._stream(request, turns, chat, model, include_usage)
        completion = await self._core.complete(turns, overrides)
        return web.json_response(_completion_body(completion, model))

    async def _stream(
        self, request: web.Request, turns: list[Turn], chat: ChatRequest, model: str, include_usage: bool
    ) -> web.StreamResponse:
        """Relay the model's deltas as OpenAI SSE chunks."""
        chunk = _ChunkMaker(model)
        stream = self._core.stream(turns, chat.overrides())
        async with aclosing(aiter(stream)) as deltas:
            # Wait for the first delta before committing to 200, so early failures get a status.
            first = await anext(deltas)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            # One write for both: the caller's first token should not wait for a second send.
            await response.write(
                _event(chunk({"role": "assistant", "content": ""})) + _event(chunk({"content": first}))
            )
            try:
                async for delta in deltas:
                    await _send(response, chunk({"content": delta}))
            except ModelError as exc:
                logger.warning("model failed mid-stream: %s", exc)
                await _send(
                    response,
                    {"error": {"message": exc.user_text, "type": "server_error", "code": exc.kind.value}},
                )
                await response.write(b"data: [DONE]\n\n")
                return response
        await _send(response, chunk({}, finish_reason="stop"))
        if include_usage and stream.usage is not None:
            usage = stream.usage
            await _send(response, chunk.usage(usage.prompt_tokens, usage.completion_tokens))
        await response.write(b"data: [DONE]\n\n")
        return response


class _ChunkMaker:
    """Builds chat.completion.chunk objects sharing one id."""

    def __init__(self, model: str) -> None:
        self._base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def __call__(self, delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        """A chunk carrying one delta."""
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._base, "choices": [choice]}

    def usage(self, prompt: int, completion: int) -> dict[str, Any]:
        """The final usage chunk (no choices), as include_usage asks."""
        return {**self._base, "choices": [], "usage": _usage(prompt, completion)}


def _event(event: dict[str, Any]) -> bytes:
    """One SSE event."""
    return b"data: " + json.dumps(event).encode() + b"\n\n"


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    """Write one SSE event."""
    await response.write(_event(event))


def _usage(prompt: int, completion: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_body(completion: Completion, model: str) -> dict[str, Any]:
    """A chat.completion object with every choice."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": text},
            "finish_reason": completion.finish_reason or "stop",
            "logprobs": None,
        }
        for i, text in enumerate(completion.choices)
    ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(completion.usage.prompt_tokens, completion.usage.completion_tokens),
    }
