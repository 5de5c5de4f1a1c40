"""The database URL setting: which store to open, printed with its password masked."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

POSTGRES_SCHEMES = ("postgresql", "postgres")
MASK = "****"
# libpq and asyncpg also take the password (or the client key's) as a query parameter.
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")


def mask_password(url: str) -> str:
    """The URL with any password replaced by ****."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        # Unparseable: show only the scheme rather than risk printing a secret.
        return url.partition("://")[0] + "://" + MASK
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        masked = f"{userinfo.partition(':')[0]}:{MASK}@{hosts}"
        url = url.replace(netloc, masked, 1)
    return _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", url)


class DatabaseUrl:
    """A database URL that prints (str, repr, JSON) with its password masked.

    The real URL is only handed out by get_secret_value(), as with pydantic's SecretStr.
    """

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        self._url = url.strip()
        if self._url and self.scheme not in POSTGRES_SCHEMES:
            schemes = " or ".join(f"{s}://" for s in POSTGRES_SCHEMES)
            raise ValueError(
                f"the database URL must start with {schemes} (got {self.scheme or 'no'} scheme); "
                "leave it unset to use SQLite at GPTRELAY_DATABASE_PATH"
            )

    @property
    def scheme(self) -> str:
        """The URL's scheme, lower case ('' when there is none)."""
        scheme, sep, _ = self._url.partition("://")
        return scheme.lower() if sep else ""

    @property
    def is_postgres(self) -> bool:
        """Whether the URL points at PostgreSQL."""
        return self.scheme in POSTGRES_SCHEMES

    def get_secret_value(self) -> str:
        """The URL itself, password included: pass it to the driver, never to a log."""
        return self._url

    def __bool__(self) -> bool:
        return bool(self._url)

    def __str__(self) -> str:
        return mask_password(self._url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatabaseUrl) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate from a string (or an instance); serialize masked."""
        return core_schema.no_info_plain_validator_function(
            cls._coerce, serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    @classmethod
    def _coerce(cls, value: object) -> DatabaseUrl:
        """A DatabaseUrl from a setting's value."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(value)
        raise ValueError("the database URL must be a string")
