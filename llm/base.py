"""The model provider seam: what a generation needs from a model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a streamed answer: text, and/or usage, and/or the finish reason."""

    content: str = ""
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Per-answer settings a client asked for; None keeps the server's own."""

    temperature: float | None = None
    max_tokens: int | None = None


NO_OPTIONS = ModelOptions()


class ModelError(Exception):
    """A failure the user should read: ``code`` and ``message`` go into the ``error`` event.

    The message never carries the API key or internals.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


# Given to ``Provider.stream``: takes a chunk where it arrives, without the consumer's task
# (True), or refuses it (False: the chunk, and every one after it, is yielded as usual).
Take = Callable[[Chunk], bool]


class Provider(Protocol):
    name: str

    def stream(self, messages: list[dict[str, str]], options: ModelOptions = NO_OPTIONS, *,
               take: Take | None = None) -> AsyncIterator[Chunk]:
        """Stream the answer to ``messages`` (OpenAI chat format, system prompt first).

        Closing the iterator (or cancelling its consumer) must close the
        upstream request promptly. A provider may hand chunks to ``take`` as they
        arrive, in order, before yielding the first one it refuses; it may also
        never call it.
        """
        ...

    async def close(self) -> None: ...
