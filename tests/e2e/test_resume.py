"""Exact resume: a reader that leaves and comes back from its last id gets exactly the rest.

Checked at every resume position of a finished channel for SSE (Last-Event-ID)
and WebSocket (last_event_id), and by readers that leave again and again while
the answer is still being produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.channel_clients import Reader, content_of
from tests.support.server import ServerProcess

TOKEN_DELAY_MS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CHIME_DEMO_DELAY_MS": str(TOKEN_DELAY_MS)}
    with ServerProcess(tmp_path_factory.mktemp("resume"), env) as process:
        yield process


@pytest.fixture(scope="module")
def reader(server: ServerProcess) -> Iterator[Reader]:
    reader = Reader(server)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def finished(reader: Reader) -> tuple[str, list[dict[str, Any]]]:
    """A finished channel of about 90 events and its uninterrupted SSE read."""
    channel = reader.submit("a long enough answer to resume in")
    events = reader.sse(channel).events
    assert events[-1]["event"] == "done" and len(events) >= 80
    return channel, events


def test_sse_resumes_exactly_at_every_position(reader: Reader, finished) -> None:
    channel, events = finished
    for position in range(len(events)):
        stream = reader.sse(channel, headers={"Last-Event-ID": str(position)})
        assert stream.status == 200 and stream.ended_by_server
        assert stream.events == events[position:], f"resumed after {position}"
    assert reader.sse(channel, headers={"Last-Event-ID": str(len(events))}).status == 204


def test_websocket_resumes_exactly_at_every_position(reader: Reader, finished) -> None:
    channel, events = finished
    for position in range(len(events) + 1):
        frames, code = reader.ws(channel, f"?last_event_id={position}")
        assert code == 1000
        assert frames == events[position:], f"resumed after {position}"


def resume_chain(read: Callable[[int, int], list[dict[str, Any]]], is_running: Callable[[], bool]
                 ) -> tuple[list[dict[str, Any]], int]:
    """Read a live channel in short pieces, leaving and resuming from the last id each time.

    Returns every event read and how many times the reader left while the answer was still running.
    """
    events: list[dict[str, Any]] = []
    left_while_live = 0
    piece = 1
    while not events or events[-1]["event"] not in ("done", "error", "cancelled", "interrupted"):
        after = events[-1]["id"] if events else 0
        got = read(after, piece)
        assert got, f"nothing after {after}"
        events += got
        if got[-1]["event"] == "delta" and is_running():
            left_while_live += 1
        piece = piece % 3 + 1  # leave after 1, 2, 3, 1, ... events
    return events, left_while_live


def check_chain(reader: Reader, channel: str, events: list[dict[str, Any]], left_while_live: int) -> None:
    assert left_while_live >= 5, "the reader should have left mid-answer several times"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert events == reader.sse(channel).events  # equal to an uninterrupted read
    assert content_of(events) == reader.record(channel)["content"]


def test_sse_readers_that_leave_mid_answer_resume_exactly(reader: Reader) -> None:
    channel = reader.submit("leave and come back over SSE")

    def read(after: int, count: int) -> list[dict[str, Any]]:
        return reader.sse(channel, headers={"Last-Event-ID": str(after)}, stop_after=count).events

    events, left_while_live = resume_chain(read, lambda: reader.record(channel)["status"] == "running")
    check_chain(reader, channel, events, left_while_live)


def test_websocket_readers_that_leave_mid_answer_resume_exactly(reader: Reader) -> None:
    channel = reader.submit("leave and come back over a websocket")

    def read(after: int, count: int) -> list[dict[str, Any]]:
        return reader.ws(channel, f"?last_event_id={after}", stop_after=count)[0]

    events, left_while_live = resume_chain(read, lambda: reader.record(channel)["status"] == "running")
    check_chain(reader, channel, events, left_while_live)


def test_sse_resume_by_query_parameter_mid_answer(reader: Reader) -> None:
    channel = reader.submit("resume by query")
    head = reader.sse(channel, stop_after=3).events
    assert reader.record(channel)["status"] == "running"
    rest = reader.sse(channel, query=f"?last_event_id={head[-1]['id']}").events
    assert head + rest == reader.sse(channel).events
