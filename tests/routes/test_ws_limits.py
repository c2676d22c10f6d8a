"""The frame rate limit on an injected clock, and the guard on Sanic's own WebSocket protocol object."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
from sanic.server.protocols.base_protocol import SanicProtocol
from sanic.server.websockets.impl import CLOSING, OPEN, WebsocketImplProtocol
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from routes import sanic_internals
from routes.ws_limits import (
    MAX_UNREAD_BYTES,
    MAX_UNREAD_MESSAGES,
    TOO_MANY_FRAMES,
    UNREAD_BACKLOG,
    InboundGuard,
    SlidingWindowLimit,
)

MAX_MESSAGE_BYTES = 64 * 1024  # what app.py lets Sanic accept


class Clock:
    """Monotonic nanoseconds, moved by the test."""

    def __init__(self) -> None:
        self.now = 10**12

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)


# ---- the sliding window --------------------------------------------------------

def frames_at_a_steady_rate(limit: SlidingWindowLimit, clock: Clock, per_second: int, seconds: int) -> int:
    """Frames admitted, one every 1/per_second seconds, until one is refused or the time is up."""
    for n in range(per_second * seconds):
        if not limit.admit():
            return n
        clock.advance(1 / per_second)
    return per_second * seconds


def test_100_frames_a_second_is_allowed_for_ever() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(clock_ns=clock)
    assert frames_at_a_steady_rate(limit, clock, 100, 120) == 12_000


def test_101_frames_a_second_is_refused_within_10_seconds() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(clock_ns=clock)
    assert frames_at_a_steady_rate(limit, clock, 101, 60) == 1000  # the 1001st came 9.9 s after the first


def test_a_burst_of_1000_is_allowed_then_nothing_more_for_10_seconds() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(clock_ns=clock)
    assert limit.admit(1000)
    clock.advance(9.999)
    assert not limit.admit()
    clock.advance(0.001)
    assert limit.admit(1000)  # the burst left the window


def test_the_average_is_over_the_last_10_seconds_not_since_the_start() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(clock_ns=clock)
    assert frames_at_a_steady_rate(limit, clock, 10, 60) == 600  # a quiet minute earns no credit
    assert limit.admit(901)  # 1000 with the 99 frames of the last 10 s
    assert not limit.admit()


def test_a_refused_batch_counts_nothing() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(clock_ns=clock)
    assert limit.admit(600)
    assert not limit.admit(401)
    assert limit.admit(400)


# ---- the guard on Sanic's protocol ------------------------------------------------

class Transport:
    """What Sanic's WebSocket object calls on its transport; records writes and pauses."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


class Connection:
    """Sanic's HTTP protocol object as the WebSocket object sees it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport = Transport()

    async def send(self, data: bytes) -> None:
        self.transport.write(data)


class Violations(list):
    def __call__(self, violation: str) -> None:
        self.append(violation)


@pytest.fixture
async def ws() -> AsyncIterator[WebsocketImplProtocol]:
    ws = WebsocketImplProtocol(ServerProtocol(max_size=MAX_MESSAGE_BYTES, state=OPEN),
                               ping_interval=None, close_timeout=0.1)
    connection = Connection(asyncio.get_running_loop())
    await ws.connection_made(cast(SanicProtocol, connection), loop=connection.loop)  # a fake of it
    yield ws
    ws.connection_lost(None)
    await asyncio.sleep(0)  # let the auto-closer see the connection gone


def client_frames(count: int, payload: bytes = b'{"type":"presence","visible":true}',
                  opcode: Opcode = Opcode.TEXT) -> bytes:
    return Frame(opcode, payload).serialize(mask=True, extensions=[]) * count


def close_sent(ws: WebsocketImplProtocol) -> Close:
    reader = ClientProtocol(parse_uri("ws://chime.test/"), state=OPEN)
    connection = ws.io_proto
    assert isinstance(connection, Connection)
    reader.receive_data(bytes(connection.transport.written))
    frames = cast(list[Frame], reader.events_received())  # an open connection receives frames only
    closes = [frame for frame in frames if frame.opcode is Opcode.CLOSE]
    assert len(closes) == 1
    return Close.parse(closes[0].data)


def handing_over_frames() -> list[asyncio.Task]:
    """Sanic's tasks that wait to hand received frames to ``recv()``."""
    return [task for task in asyncio.all_tasks() if "async_data_received" in repr(task.get_coro())]


async def test_frames_read_as_they_arrive_pass_in_order(ws) -> None:
    violations = Violations()
    guard = InboundGuard(ws, violations)
    assert guard.hooked
    for n in range(3 * MAX_UNREAD_MESSAGES):  # more than may wait unread, but each is read
        ws.data_received(client_frames(1, b"%d" % n))
        assert await guard.recv() == str(n)
    assert violations == [] and ws.io_proto.transport.written == b""


async def test_one_message_more_than_may_wait_unread_fails_the_connection_with_1008(ws) -> None:
    violations = Violations()
    guard = InboundGuard(ws, violations)
    ws.data_received(client_frames(MAX_UNREAD_MESSAGES))
    await asyncio.sleep(0)
    assert violations == [] and ws.io_proto.transport.written == b""
    ws.data_received(client_frames(1))
    assert violations == [UNREAD_BACKLOG]
    assert close_sent(ws) == Close(1008, UNREAD_BACKLOG)
    assert ws.ws_proto.state is CLOSING
    await asyncio.sleep(0)
    assert handing_over_frames() == []  # none is left waiting for a recv() that will not come
    assert guard.violation == UNREAD_BACKLOG


async def test_a_few_large_unread_messages_fail_the_connection_with_1008(ws) -> None:
    violations = Violations()
    InboundGuard(ws, violations)
    large = client_frames(1, b"x" * MAX_MESSAGE_BYTES)
    for _ in range(MAX_UNREAD_BYTES // MAX_MESSAGE_BYTES):
        ws.data_received(large)
    assert violations == []
    ws.data_received(client_frames(1, b"x"))
    assert violations == [UNREAD_BACKLOG]
    assert close_sent(ws).code == 1008


async def test_a_fragmented_message_counts_as_one_message_when_read(ws) -> None:
    violations = Violations()
    guard = InboundGuard(ws, violations)
    for _ in range(MAX_UNREAD_MESSAGES + 1):
        ws.data_received(Frame(Opcode.TEXT, b"ab", fin=False).serialize(mask=True, extensions=[])
                         + Frame(Opcode.CONT, b"cd").serialize(mask=True, extensions=[]))
        assert await guard.recv() == "abcd"
    assert violations == []


async def test_the_1001st_frame_in_10_seconds_fails_the_connection_with_1008(ws) -> None:
    violations, clock = Violations(), Clock()
    guard = InboundGuard(ws, violations, SlidingWindowLimit(clock_ns=clock))
    for n in range(1000):
        clock.advance(0.0099)
        ws.data_received(client_frames(1))
        assert await guard.recv() is not None, n
    assert ws.io_proto.transport.reading
    ws.data_received(client_frames(1))
    assert violations == [TOO_MANY_FRAMES]
    assert not ws.io_proto.transport.reading  # nothing more is read from this client
    assert close_sent(ws) == Close(1008, TOO_MANY_FRAMES)


async def test_pings_count_towards_the_rate(ws) -> None:
    violations = Violations()
    InboundGuard(ws, violations)
    ws.data_received(client_frames(1000, b"", Opcode.PING))
    assert violations == []
    ws.data_received(client_frames(1, b"", Opcode.PING))
    assert violations == [TOO_MANY_FRAMES]


async def test_after_1008_nothing_more_is_parsed(ws) -> None:
    violations = Violations()
    InboundGuard(ws, violations)
    ws.data_received(client_frames(1001))
    written = bytes(ws.io_proto.transport.written)
    ws.data_received(client_frames(1, b"", Opcode.PING))  # would be answered with a pong
    assert violations == [TOO_MANY_FRAMES] and ws.io_proto.transport.written == written
    await asyncio.sleep(0)
    assert handing_over_frames() == []


async def test_release_gives_reading_back_to_sanic(ws) -> None:
    guard = InboundGuard(ws, Violations())
    assert ws.data_received.__func__ is not WebsocketImplProtocol.data_received
    guard.release()
    assert ws.data_received.__func__ is WebsocketImplProtocol.data_received


class PlainWebSocket:
    """A WebSocket without Sanic's internals (ASGI, another Sanic): only recv and close."""

    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def recv(self) -> str:
        return "{}"

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = (code, reason)


async def test_without_sanics_internals_the_rate_is_counted_as_messages_are_read() -> None:
    violations, clock, plain = Violations(), Clock(), PlainWebSocket()
    guard = InboundGuard(plain, violations, SlidingWindowLimit(clock_ns=clock))
    assert not guard.hooked
    for _ in range(1000):
        assert await guard.recv() == "{}"
    assert await guard.recv() is None
    assert plain.closed_with == (1008, TOO_MANY_FRAMES) and violations == [TOO_MANY_FRAMES]


async def test_with_the_fast_path_off_sanics_reading_is_left_alone(ws) -> None:
    sanic_internals.configure(False)
    try:
        guard = InboundGuard(ws, Violations())
    finally:
        sanic_internals.configure(True)
    assert not guard.hooked
    assert ws.data_received.__func__ is WebsocketImplProtocol.data_received
