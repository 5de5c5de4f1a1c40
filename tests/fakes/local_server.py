"""What every fake server shares: an aiohttp app on a free port of 127.0.0.1, as a context manager."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web

HOST = "127.0.0.1"
# Open long polls and streams are cut after this at stop, so a test's teardown never hangs.
SHUTDOWN_TIMEOUT_S = 1.0


class LocalServer:
    """Start with `async with`; subclasses provide the routes in `build_app`."""

    # aiohttp's per-request access log at INFO; a fake serving thousands of requests turns it off.
    access_log = True

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def build_app(self) -> web.Application:
        """The application to serve."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        """Start serving on a free port."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving."""
        await self.stop()

    async def start(self) -> None:
        """Start serving on a free port of ``127.0.0.1``."""
        options = {} if self.access_log else {"access_log": None}
        runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, **options
        )
        await runner.setup()
        await web.TCPSite(runner, HOST, 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and drop open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port
