"""Platform adapters: each translates its platform into the core's neutral message."""

from typing import Protocol


class Adapter(Protocol):
    """Something `gptrelay run` starts and stops."""

    name: str

    async def start(self) -> None:
        """Begin receiving messages."""
        ...

    async def stop(self) -> None:
        """Stop receiving messages and release resources."""
        ...
