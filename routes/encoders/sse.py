"""Server-sent events (API.md, "SSE"): ``id: <id>\\nevent: <type>\\ndata: <json>\\n\\n`` per event."""

from __future__ import annotations

from channels.events import Event
from routes.encoders import StreamEncoder, remember, take_slot

CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
# A comment line alone ends no event: a blank line after it would make parsers that do not
# follow the spec to the letter (httpx-sse, code calling json.loads on every message) see
# an empty "message" event for every keepalive.
KEEPALIVE = b": keepalive\n"

SLOT = take_slot("sse")


def retry(ms: int) -> bytes:
    """The first bytes of every stream: how long EventSource waits before it reconnects.

    No blank line after it: the field belongs to the first event's block, so no parser
    sees a phantom empty event before ``meta``.
    """
    return b"retry: %d\n" % ms


def frame(event: Event) -> bytes:
    """The event's SSE frame, built once and sent to every SSE reader."""
    encoded = event.encoded
    if encoded is not None and len(encoded) > SLOT:
        built = encoded[SLOT]
        if built is not None:
            return built
    return remember(event, SLOT, b"id: %d\nevent: %s\ndata: %s\n\n"
                    % (event.id, event.type.encode(), event.data_json))


def encode(events: list[Event]) -> bytes:
    """Several pending events as one write."""
    if len(events) == 1:
        return frame(events[0])
    return b"".join([frame(event) for event in events])


ENCODER = StreamEncoder("sse", encode, KEEPALIVE)
