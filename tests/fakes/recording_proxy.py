"""A recording reverse proxy on 127.0.0.1: forwards every request upstream and streams the answer back.

Usage::

    async with RecordingProxy("http://127.0.0.1:8000") as proxy:
        settings = Settings(openai_base_url=proxy.base_url, ...)
        ...
        proxy.requests[-1]["messages"]  # what the client sent upstream

Status, content type and body chunks are passed on as they arrive, so server-sent events still
stream. ``requests`` holds each request's parsed JSON body (``None`` without one); ``responses``
holds what the upstream answered (status and the whole body), in the same order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.local_server import HOST, LocalServer

UPSTREAM_TIMEOUT_S = 60.0
BAD_GATEWAY = 502
# Hop-by-hop headers (RFC 9110 section 7.6.1), plus those aiohttp recomputes for the new message.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)


@dataclass(frozen=True)
class ProxiedResponse:
    """What the upstream answered to one request."""

    status: int
    content_type: str
    body: bytes


class RecordingProxy(LocalServer):
    """A reverse proxy in front of ``upstream`` (a base URL such as ``http://127.0.0.1:8000``)."""

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.requests: list[Any] = []
        self.responses: list[ProxiedResponse] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL clients should use."""
        return f"http://{HOST}:{self.port}/v1"

    async def start(self) -> None:
        """Start serving on a free port of ``127.0.0.1``."""
        # A fresh upstream connection per request: a server that drops a connection after a
        # failed stream (llama.cpp does) must not turn the proxy itself into the problem.
        connector = aiohttp.TCPConnector(force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S),
        )
        await super().start()

    def build_app(self) -> web.Application:
        """One catch-all route that forwards."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        return app

    async def stop(self) -> None:
        """Stop serving and close the upstream connections."""
        await super().stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """Send the request upstream and relay the answer chunk by chunk."""
        assert self._session is not None
        body = await request.read()
        self.requests.append(_parse_json(body))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}
        url = self.upstream + request.rel_url.path_qs
        try:
            upstream = await self._session.request(request.method, url, data=body, headers=headers)
        except aiohttp.ClientConnectionError as exc:
            self.responses.append(ProxiedResponse(BAD_GATEWAY, "", b""))
            return web.json_response(
                {"error": {"message": f"upstream unreachable: {exc}"}}, status=BAD_GATEWAY
            )
        async with upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in NOT_FORWARDED},
            )
            await response.prepare(request)
            received = bytearray()
            async for chunk in upstream.content.iter_any():
                received += chunk
                await response.write(chunk)
            await response.write_eof()
        self.responses.append(ProxiedResponse(upstream.status, upstream.content_type, bytes(received)))
        return response


def _parse_json(body: bytes) -> Any:
    """The body as JSON, or ``None`` when it is empty or not JSON."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
