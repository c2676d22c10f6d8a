"""WebSocket (API.md, "WebSocket"): one text frame ``{"id", "event", "data"}`` per event.

Server frames are unmasked, so an event's whole frame (RFC 6455 header and
payload) is the same for every reader without a negotiated extension: it is
built once. With an extension (compression) the frames differ per
connection, and the reader sends ``message(event)`` through Sanic instead.
"""

from __future__ import annotations

from channels.events import Event
from routes.encoders import StreamEncoder, remember, take_slot

SLOT = take_slot("ws")


def payload(event: Event) -> bytes:
    return b'{"id":%d,"event":"%s","data":%s}' % (event.id, event.type.encode(), event.data_json)


def message(event: Event) -> str:
    """The event as the text of one message, for a connection that frames it itself."""
    return payload(event).decode()


def frame(event: Event) -> bytes:
    """The event's whole text frame, built once and sent to every WebSocket reader."""
    encoded = event.encoded
    if encoded is not None and len(encoded) > SLOT:
        built = encoded[SLOT]
        if built is not None:
            return built
    return remember(event, SLOT, text_frame(payload(event)))


def encode(events: list[Event]) -> bytes:
    """Several pending events, one frame each, as one write."""
    if len(events) == 1:
        return frame(events[0])
    return b"".join([frame(event) for event in events])


def text_frame(data: bytes) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455, section 5.2)."""
    length = len(data)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65_536:
        header = b"\x81\x7e" + length.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + length.to_bytes(8, "big")
    return header + data


ENCODER = StreamEncoder("ws", encode)
