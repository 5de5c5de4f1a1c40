"""Errors users may see: each carries a short, sanitised text; details stay in the logs."""

from __future__ import annotations

from enum import StrEnum


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


USER_TEXT: dict[ErrorKind, str] = {
    ErrorKind.AUTH: "The model service rejected the bot's credentials. Please tell the operator.",
    ErrorKind.QUOTA: "The model service's quota is used up. Please tell the operator.",
    ErrorKind.RATE_LIMIT: "The model is busy right now. Please try again in a moment.",
    ErrorKind.CONTEXT_TOO_LONG: "That message is too long for the model. Please shorten it or /reset.",
    ErrorKind.TIMEOUT: "The model took too long to answer. Please try again.",
    ErrorKind.SERVER: "The model service had an error. Please try again.",
    ErrorKind.CONNECTION: "The model service cannot be reached right now. Please try again later.",
    ErrorKind.EMPTY: "The model returned an empty answer. Please try again or rephrase.",
    ErrorKind.BAD_MODEL: "The model service does not know that model. Try /model to pick another.",
    ErrorKind.BAD_REQUEST: "The model service refused the request. Please try again or /reset.",
}


class UserError(Exception):
    """Something the user can fix; the message is safe to show as is."""


class ModelError(Exception):
    """A failed model call; `user_text` is what the user sees, str(self) is for logs."""

    def __init__(self, kind: ErrorKind, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.retry_after = retry_after

    @property
    def user_text(self) -> str:
        """The sanitised reply for the chat."""
        return USER_TEXT[self.kind]


class ShuttingDown(Exception):
    """The core takes no new messages; the platform should deliver this one again later."""
