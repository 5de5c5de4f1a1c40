"""Errors users may see: each carries a short, sanitised text; details stay in the logs."""

from __future__ import annotations

from enum import StrEnum

from bot.texts import Lang, render


class ErrorKind(StrEnum):
    """Why a model call failed, as far as the user needs to know."""

    AUTH = "auth"
    QUOTA = "quota"
    RATE_LIMIT = "rate_limit"
    CONTEXT_TOO_LONG = "context_too_long"
    TIMEOUT = "timeout"
    SERVER = "server"
    CONNECTION = "connection"
    EMPTY = "empty"
    BAD_MODEL = "bad_model"
    BAD_REQUEST = "bad_request"
    # The circuit breaker is open: the backend failed repeatedly, so it is not called for a while.
    UNAVAILABLE = "unavailable"


class UserError(Exception):
    """Something the user can fix: one of bot.texts' keys, rendered in the user's language."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(render(key, Lang.EN, **params))
        self.key = key
        self.params = params

    def render(self, lang: Lang) -> str:
        """The text for the user, in their language."""
        return render(self.key, lang, **self.params)


class LimitExceeded(UserError):
    """A budget or rate limit refused the message; `retry_after` s until it clears."""

    def __init__(self, key: str, retry_after: float, **params: object) -> None:
        super().__init__(key, **params)
        self.retry_after = retry_after


class ModelError(Exception):
    """A failed model call; `user_text` is what the user sees, str(self) is for logs."""

    def __init__(self, kind: ErrorKind, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.retry_after = retry_after

    @property
    def user_text(self) -> str:
        """The sanitised reply for the chat, in English."""
        return self.render(Lang.EN)

    def render(self, lang: Lang) -> str:
        """The sanitised reply for the chat, in the user's language."""
        return render(f"model_error.{self.kind.value}", lang)


class ShuttingDown(Exception):
    """The core takes no new messages; the platform should deliver this one again later."""
