"""Encoders: what every reader of an event is sent, byte for byte, built once per event."""

from __future__ import annotations

import json

import pytest
from sanic.response import json as sanic_json
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from channels.events import DELTA, DONE, Event
from routes.encoders import polling, sse, ws

UNICODE = "tok \u00e9\u2603 </script> \"quoted\" back\\slash\nnew line"


def parse_frames(data: bytes) -> list[Frame]:
    """Server frames as the websockets library reads them (unmasked)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


def deltas(count: int) -> list[Event]:
    return [Event.make("c", n, DELTA, {"content": f"{UNICODE} {n}"}) for n in range(1, count + 1)]


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_a_text_frame_of_any_length_reads_back(length: int) -> None:
    payload = b"x" * length
    (frame,) = parse_frames(ws.text_frame(payload))
    assert frame.opcode == Opcode.TEXT and frame.fin and frame.data == payload


def test_a_websocket_batch_is_one_frame_per_event_with_the_api_json() -> None:
    events = deltas(3)
    frames = parse_frames(ws.encode(events))
    assert [json.loads(bytes(f.data)) for f in frames] == [e.as_dict() for e in events]
    assert [bytes(f.data).decode() for f in frames] == [ws.message(e) for e in events]


def test_an_sse_frame_is_the_documented_framing() -> None:
    (event,) = deltas(1)
    data = json.dumps({"content": f"{UNICODE} 1"}, ensure_ascii=False, separators=(",", ":")).encode()
    assert sse.frame(event) == b"id: 1\nevent: delta\ndata: " + data + b"\n\n"
    assert sse.encode(deltas(2)) == b"".join(sse.frame(e) for e in deltas(2))
    # Neither ends an event: retry joins the first event's block, a keepalive is a lone comment line.
    assert sse.retry(2000) == b"retry: 2000\n" and sse.KEEPALIVE == b": keepalive\n"


def test_a_polling_page_is_byte_for_byte_what_sanics_json_writes() -> None:
    events = [*deltas(2), Event.make("c", 3, DONE, {"finish_reason": "stop"})]
    for page, finished in ((events, True), ([], False)):
        expected = sanic_json({"events": [e.as_dict() for e in page], "last_event_id": 7, "finished": finished})
        response = polling.response(page, 7, finished)
        assert response.body == expected.body
        assert response.content_type == expected.content_type


def test_each_encoder_builds_an_events_bytes_once_and_shares_them() -> None:
    (event,) = deltas(1)
    assert event.encoded is None  # nothing is built for an event nobody is sent
    built = (sse.frame(event), ws.frame(event), polling.item(event))
    assert (sse.frame(event), ws.frame(event), polling.item(event)) == built
    assert all(again is first for again, first in
               zip((sse.frame(event), ws.frame(event), polling.item(event)), built, strict=True))
    assert len(set(built)) == 3  # a slot per encoder: no transport is sent another's bytes
