"""A circuit breaker around the model: stop hammering a dead backend, and notice when it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from bot.errors import ErrorKind, ModelError
from bot.model import Completion, GenerationParams, ModelClient, ModelStream, Turn, Usage

logger = logging.getLogger(__name__)

# Failures that say the backend itself is unwell; a refused request (bad model, too long)
# says nothing about the backend and never trips the breaker, nor do rejected credentials
# (users should keep hearing "tell the operator", not "the service is down").
BACKEND_FAILURES = frozenset(
    {ErrorKind.SERVER, ErrorKind.CONNECTION, ErrorKind.TIMEOUT, ErrorKind.RATE_LIMIT}
)


class CircuitBreaker:
    """Opens after `threshold` backend failures in a row; after `cooldown_s` one trial call decides."""

    def __init__(
        self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        """Whether calls are refused right now."""
        return self._opened_at is not None

    def before_call(self) -> None:
        """Raise ModelError(UNAVAILABLE) while open, except for one trial call after the cooldown."""
        if self._opened_at is None:
            return
        waited = self._clock() - self._opened_at
        if waited < self._cooldown_s or self._trial_running:
            left = max(0.0, self._cooldown_s - waited)
            raise ModelError(
                ErrorKind.UNAVAILABLE,
                f"circuit open after {self._failures} failures; next try in {left:.0f} s",
            )
        self._trial_running = True

    def succeeded(self) -> None:
        """A call worked: close the circuit."""
        if self._opened_at is not None:
            logger.info("model backend answers again: circuit closed")
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def abandoned(self) -> None:
        """The caller stopped reading before an outcome: let the next call be the trial."""
        self._trial_running = False

    def failed(self, error: ModelError) -> None:
        """A call failed; backend failures count toward opening (or re-opening) the circuit."""
        self._trial_running = False
        if error.kind not in BACKEND_FAILURES:
            return
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            if self._opened_at is None:
                logger.warning("model backend failed %d times in a row: circuit open", self._failures)
            self._opened_at = self._clock()


class GuardedModel:
    """A ModelClient whose calls go through a circuit breaker."""

    def __init__(self, model: ModelClient, breaker: CircuitBreaker) -> None:
        self._model = model
        self._breaker = breaker

    def stream(self, turns: Sequence[Turn], params: GenerationParams) -> ModelStream:
        """Stream one answer, unless the circuit is open."""
        return _GuardedStream(self._model, self._breaker, turns, params)

    async def complete(self, turns: Sequence[Turn], params: GenerationParams) -> Completion:
        """Return every choice of one answer, unless the circuit is open."""
        self._breaker.before_call()
        try:
            completion = await self._model.complete(turns, params)
        except ModelError as exc:
            self._breaker.failed(exc)
            raise
        self._breaker.succeeded()
        return completion

    async def probe(self) -> None:
        """Unavailable while the circuit is open; otherwise ask the backend."""
        if self._breaker.is_open:
            raise ModelError(ErrorKind.UNAVAILABLE, "circuit open")
        await self._model.probe()

    async def aclose(self) -> None:
        """Release the wrapped model."""
        await self._model.aclose()


class _GuardedStream:
    """A stream that reports its outcome to the breaker."""

    def __init__(
        self, model: ModelClient, breaker: CircuitBreaker, turns: Sequence[Turn], params: GenerationParams
    ) -> None:
        self._model = model
        self._breaker = breaker
        self._turns = turns
        self._params = params
        self.usage: Usage | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield the wrapped stream's deltas."""
        self._breaker.before_call()
        stream = self._model.stream(self._turns, self._params)
        try:
            async for delta in stream:
                yield delta
        except ModelError as exc:
            self._breaker.failed(exc)
            raise
        except BaseException:  # closed early or cancelled: no verdict on the backend
            self._breaker.abandoned()
            raise
        self.usage = stream.usage
        self._breaker.succeeded()
