"""What an event keeps in memory: the hub holds a tail of them for every running answer."""

from __future__ import annotations

import tracemalloc

import orjson

from channels.events import DELTA, Event
from routes.encoders import sse

EVENTS = 2_000
MAX_BYTES_PER_EVENT = 1_024  # an event of a short delta; orjson's own buffer alone is 4 KiB


def test_an_event_holds_its_json_in_a_buffer_of_its_own_size() -> None:
    data = {"content": "a short token"}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        events = [Event.make("channel", number, DELTA, data) for number in range(1, EVENTS + 1)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / EVENTS < MAX_BYTES_PER_EVENT
    assert all(event.data_json == orjson.dumps(data) for event in events)
    assert sse.frame(events[0]) == b'id: 1\nevent: delta\ndata: {"content":"a short token"}\n\n'
