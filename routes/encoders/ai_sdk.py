"""The Vercel AI SDK's UI message stream (API.md, "/api/ai"): ``id: <part index>\\ndata: <part>\\n\\n``.

An answer's parts are a fixed function of its channel's log, so every read of
it, live or replayed, after a restart or on another process, numbers them the same:

====================  ==============================================  =============
event (its id)        parts                                           their indices
====================  ==============================================  =============
``meta`` (1)          ``start`` {messageId: the channel}, ``text-start``  0, 1
``delta`` (k)         ``text-delta``                                  k
``usage`` (k)         ``data-usage`` (transient: ``onData`` only)      k
terminal (t)          ``text-end``, then ``finish`` | ``error`` |      t, t + 1
                      ``abort``; then ``data: [DONE]`` (not a part)
====================  ==============================================  =============

So the event with id k ≥ 2 holds part k, and the last part so far is the last
event id, plus one once the answer has ended. ``interrupted`` is an ``error``
part: to the client the answer failed, and it says why.
"""

from __future__ import annotations

import orjson

from channels.events import CANCELLED, DELTA, DONE, ERROR, META, USAGE, Event
from channels.generation import LOST_REASON, RESTART_REASON, SHUTDOWN_REASON
from routes.encoders import Encode, StreamEncoder, remember, take_slot

CONTENT_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no",
           "x-vercel-ai-ui-message-stream": "v1"}
TAIL_INDEX_HEADER = "x-workflow-stream-tail-index"
KEEPALIVE = b": keepalive\n\n"
# Written where every part of a batch lies before a stream's first part: an empty write
# would end a chunked response, and the client's parser skips comments.
NOTHING_YET = b":\n\n"
END = b"data: [DONE]\n\n"
TEXT_ID = "text-0"

SLOT = take_slot("ai_sdk")

# Chime's finish reasons (OpenAI's) as the SDK's schema spells them; any other is "other".
FINISH_REASONS = {"stop": "stop", "length": "length", "content_filter": "content-filter",
                  "tool_calls": "tool-calls", "function_call": "tool-calls"}
INTERRUPTIONS = {
    LOST_REASON: "The server answering this stopped before the answer was finished.",
    RESTART_REASON: "The server restarted before the answer was finished.",
    SHUTDOWN_REASON: "The server shut down before the answer was finished.",
}


def first_part(event: Event) -> int:
    """The index of the event's first part."""
    return 0 if event.type == META else event.id


def last_part(last_event_id: int, finished: bool) -> int:
    """The index of a channel's last part, given its last event id."""
    return last_event_id + 1 if finished else last_event_id


def after_event(first: int) -> int:
    """The log's resume point for a stream whose first part is ``first``: the event holding
    part ``first`` and any after it (the terminal's second part lies in the event before)."""
    return max(first - 2, 0)


def parts(event: Event) -> list[bytes]:
    """The JSON of each of the event's parts, in order."""
    kind = event.type
    if kind == DELTA:
        return [b'{"type":"text-delta","id":"%s","delta":%s}' % (
            TEXT_ID.encode(), orjson.dumps(event.data.get("content", "")))]
    if kind == META:
        return [orjson.dumps({"type": "start", "messageId": event.channel}),
                orjson.dumps({"type": "text-start", "id": TEXT_ID})]
    if kind == USAGE:
        return [orjson.dumps({"type": "data-usage", "data": event.data, "transient": True})]
    if event.terminal:
        return [orjson.dumps({"type": "text-end", "id": TEXT_ID}), orjson.dumps(ending(event))]
    return [orjson.dumps({"type": "data-chime", "data": {"event": kind}, "transient": True})]


def ending(event: Event) -> dict[str, str]:
    """The part that ends the answer: ``finish``, ``abort`` or ``error``."""
    data = event.data
    if event.type == DONE:
        return {"type": "finish", "finishReason": FINISH_REASONS.get(str(data.get("finish_reason")), "other")}
    if event.type == CANCELLED:
        return {"type": "abort"}
    if event.type == ERROR:
        return {"type": "error", "errorText": str(data.get("message") or data.get("code") or "The answer failed.")}
    reason = str(data.get("reason", ""))
    return {"type": "error", "errorText": INTERRUPTIONS.get(reason, f"The answer was interrupted ({reason}).")}


def frames(event: Event, first: int = 0) -> bytes:
    """The event's parts from index ``first`` on, each with its ``id:`` line."""
    index = first_part(event)
    built = [b"id: %d\ndata: %b\n\n" % (index + offset, part)
             for offset, part in enumerate(parts(event)) if index + offset >= first]
    if event.terminal:
        built.append(END)
    return b"".join(built)


def frame(event: Event) -> bytes:
    """All the event's parts, built once and sent to every reader of this wire."""
    encoded = event.encoded
    if encoded is not None and len(encoded) > SLOT:
        built = encoded[SLOT]
        if built is not None:
            return built
    return remember(event, SLOT, frames(event))


def encode(events: list[Event]) -> bytes:
    """Several pending events as one write."""
    if len(events) == 1:
        return frame(events[0])
    return b"".join([frame(event) for event in events])


def encode_from(first: int) -> Encode:
    """``encode`` for a stream that starts at part ``first``: parts before it are left out."""
    if first == 0:
        return encode

    def encode_trimmed(events: list[Event]) -> bytes:
        if first_part(events[0]) >= first:
            return encode(events)
        written = b"".join([frame(event) if first_part(event) >= first else frames(event, first)
                            for event in events])
        return written or NOTHING_YET

    return encode_trimmed


ENCODER = StreamEncoder("ai_sdk", encode, KEEPALIVE)


def encoder_from(first: int) -> StreamEncoder:
    """The stream's encoder when it starts at part ``first``."""
    return ENCODER if first == 0 else StreamEncoder(ENCODER.transport, encode_from(first), KEEPALIVE)
