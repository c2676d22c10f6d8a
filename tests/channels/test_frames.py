"""Cached wire frames: what every reader of an event is sent, byte for byte."""

from __future__ import annotations

import json

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from channels.events import DELTA, Event, ws_batch, ws_text_frame


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


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65_535, 65_536, 70_000])
def test_a_text_frame_of_any_length_reads_back(length: int) -> None:
    payload = b"x" * length
    (frame,) = parse_frames(ws_text_frame(payload))
    assert frame.opcode == Opcode.TEXT and frame.fin and frame.data == payload


def test_a_batch_is_one_frame_per_event_with_the_api_json() -> None:
    events = [Event.make("c", n, DELTA, {"content": f"tok {n} \u00e9\u2603"}) for n in range(1, 4)]
    frames = parse_frames(ws_batch(events))
    assert [json.loads(f.data) for f in frames] == [e.as_dict() for e in events]
    assert [f.data.decode() for f in frames] == [e.ws() for e in events]
    assert events[0].ws_frame() is events[0].ws_frame()  # built once, shared by every reader
