"""The log's event: one entry of a channel, its JSON serialised once, when it is made.

How an event travels (an SSE frame, a WebSocket frame, a polling page) is the
transports' business, in ``routes/encoders``. Each keeps the bytes it built for
an event in ``Event.encoded``, so they are built once and every reader of that
transport is sent the same bytes.
"""

from __future__ import annotations

from typing import Any

import orjson

META = "meta"
DELTA = "delta"
USAGE = "usage"
DONE = "done"
ERROR = "error"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"

TERMINAL_TYPES = frozenset({DONE, ERROR, CANCELLED, INTERRUPTED})
EVENT_TYPES = frozenset({META, DELTA, USAGE}) | TERMINAL_TYPES


class Event:
    """One entry of a channel's log: ``id`` is 1..n per channel, no gaps."""

    __slots__ = ("channel", "id", "type", "data_json", "terminal", "encoded")

    def __init__(self, channel: str, id: int, type: str, data_json: bytes):
        self.channel = channel
        self.id = id
        self.type = type
        self.data_json = data_json
        # Read for every event by the store, the hub and each reader: decided once.
        self.terminal = type in TERMINAL_TYPES
        # The bytes each transport sends for this event, at the slot its encoder took
        # (routes/encoders). A list, made on first use: an event in a hub tail costs a
        # pointer until some reader is sent it, and a dict per event cost three times the list.
        self.encoded: list[bytes | None] | None = None

    @classmethod
    def make(cls, channel: str, id: int, type: str, data: dict[str, Any]) -> Event:
        return cls(channel, id, type, compact_json(data))

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(self.data_json)
        return data

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.type, "data": self.data}

    def __repr__(self) -> str:
        return f"Event({self.channel!r}, {self.id}, {self.type!r}, {self.data_json!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Event) and (self.channel, self.id, self.type, self.data_json)
                == (other.channel, other.id, other.type, other.data_json))

    __hash__ = None  # type: ignore[assignment]


def compact_json(data: dict[str, Any]) -> bytes:
    """``orjson.dumps(data)`` in a buffer of its own size.

    orjson's result keeps the 4 KiB it was written into (``sys.getsizeof`` does
    not show it): a hub tail of such events cost ~0.5 MB per running answer.
    """
    return bytes(memoryview(orjson.dumps(data)))
