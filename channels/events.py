"""Channel events and their wire encodings.

An event's JSON is serialised once, when it is made; its SSE and WebSocket
frames are built at most once and then shared by every reader.
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

KEEPALIVE_SSE = b": keepalive\n\n"


class Event:
    """One entry of a channel's log: ``id`` is 1..n per channel, no gaps."""

    __slots__ = ("channel", "id", "type", "data_json", "terminal", "_sse", "_ws", "_ws_frame")

    def __init__(self, channel: str, id: int, type: str, data_json: bytes):
        self.channel = channel
        self.id = id
        self.type = type
        self.data_json = data_json
        # Read for every event by the store, the hub and each reader: decided once.
        self.terminal = type in TERMINAL_TYPES
        self._sse: bytes | None = None
        self._ws: str | None = None
        self._ws_frame: bytes | None = None

    @classmethod
    def make(cls, channel: str, id: int, type: str, data: dict[str, Any]) -> "Event":
        return cls(channel, id, type, compact_json(data))

    @property
    def data(self) -> dict[str, Any]:
        return orjson.loads(self.data_json)

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.type.encode(), self.data_json)
        return self._sse

    def ws(self) -> str:
        if self._ws is None:
            self._ws = self._ws_json().decode()
        return self._ws

    def ws_frame(self) -> bytes:
        """The whole WebSocket text frame (server frames are unmasked), built once for every reader."""
        if self._ws_frame is None:
            self._ws_frame = ws_text_frame(self._ws_json())
        return self._ws_frame

    def _ws_json(self) -> bytes:
        """The event as the API's WebSocket message: ``{"id", "event", "data"}``."""
        return b'{"id":%d,"event":"%s","data":%s}' % (self.id, self.type.encode(), self.data_json)

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


def sse_batch(events: list[Event]) -> bytes:
    """Several pending events as one write."""
    if len(events) == 1:
        return events[0].sse()
    return b"".join(event.sse() for event in events)


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455, section 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65_536:
        header = b"\x81\x7e" + length.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + length.to_bytes(8, "big")
    return header + payload


def ws_batch(events: list[Event]) -> bytes:
    """Several pending events, one frame each, as one write."""
    if len(events) == 1:
        return events[0].ws_frame()
    return b"".join(event.ws_frame() for event in events)
