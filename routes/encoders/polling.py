"""JSON polling (API.md, "Polling"): ``{"events": [...], "last_event_id", "finished"}``.

Each event's object is the bytes Sanic's ``json()`` writes for it (its
escaping of non-ASCII included), built once; a page joins them, so the body
is byte for byte what ``json()`` of the whole page gave.
"""

from __future__ import annotations

from sanic.response import HTTPResponse, json

from channels.events import Event
from routes.encoders import remember, take_slot

CONTENT_TYPE = "application/json"

SLOT = take_slot("polling")


def item(event: Event) -> bytes:
    encoded = event.encoded
    if encoded is not None and len(encoded) > SLOT:
        built = encoded[SLOT]
        if built is not None:
            return built
    return remember(event, SLOT, json(event.as_dict()).body or b"")


def page(events: list[Event], last_event_id: int, finished: bool) -> bytes:
    return b'{"events":[%b],"last_event_id":%d,"finished":%b}' % (
        b",".join([item(event) for event in events]), last_event_id, b"true" if finished else b"false")


def response(events: list[Event], last_event_id: int, finished: bool) -> HTTPResponse:
    return HTTPResponse(page(events, last_event_id, finished), content_type=CONTENT_TYPE)
