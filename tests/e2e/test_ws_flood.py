"""A WebSocket client that floods the server is closed with 1008 and costs it no memory (API.md, "Slow clients")."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from tests.e2e.channel_clients import Reader
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

MEMORY_SLACK_BYTES = 32 * 1024 * 1024  # API.md: back within 32 MiB of where it was
FLOOD_FRAMES = 2_000_000  # ~80 MB of presence frames, far past any limit
FLOOD_S = 5.0
FRAMES_PER_WRITE = 2000
CLOSE_WAIT_S = 10.0
SLOW_ANSWER = {"CHIME_DEMO_DELAY_MS": "1000"}  # still running while a client floods it
PRESENCE = {"type": "presence", "visible": True}


def resident_bytes(process: ServerProcess) -> int:
    assert process.process is not None
    with open(f"/proc/{process.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


@contextmanager
def open_socket(reader: Reader, channel: str, first_event: bool = True) -> Iterator[ClientConnection]:
    """A WebSocket on the channel; with ``first_event``, once the handler has sent it and reads frames."""
    with connect(f"{reader.server.ws_url}/api/channels/{channel}/ws", additional_headers=reader.auth,
                 compression=None, ping_interval=None, open_timeout=CLOSE_WAIT_S) as ws:
        if first_event:
            assert orjson.loads(ws.recv(timeout=CLOSE_WAIT_S))["event"] == "meta"
        yield ws


def masked_frame(message: dict[str, Any]) -> bytes:
    return Frame(Opcode.TEXT, orjson.dumps(message)).serialize(mask=True, extensions=[])


def flood(ws: ClientConnection, frame: bytes, max_frames: int, max_s: float) -> int:
    """Write ``frame`` over and over, as fast as the socket takes it, until the server closes it.

    Straight to the socket, whole frames at a time, never blocking: a server
    that stops reading cannot hold the test. Returns the frames written.
    """
    sock, chunk = ws.socket, frame * FRAMES_PER_WRITE
    pending, written = memoryview(b""), 0
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline and (pending or written < max_frames):
        if not pending:
            pending, written = memoryview(chunk), written + FRAMES_PER_WRITE
        try:
            pending = pending[sock.send(pending, socket.MSG_DONTWAIT):]
        except BlockingIOError:
            select.select([], [sock], [], 0.1)
        except OSError:
            break  # the server closed the connection (and the client library its socket)
    return written


def close_of(ws: ClientConnection) -> tuple[int | None, str]:
    """Read until the server closes: its close code and reason (None if it did not within the wait)."""
    deadline = time.monotonic() + CLOSE_WAIT_S
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return None, ""
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")
    return None, ""


@pytest.fixture
def reader_on(make_server: Callable[..., ServerProcess]) -> Iterator[Callable[[dict[str, str]], Reader]]:
    """A new user on a new server started with ``env``."""
    readers: list[Reader] = []

    def start(env: dict[str, str]) -> Reader:
        readers.append(Reader(make_server(env)))
        return readers[-1]

    yield start
    for reader in readers:
        reader.close()


def test_a_flooding_client_is_closed_with_1008_and_the_memory_comes_back(reader_on) -> None:
    reader = reader_on(SLOW_ANSWER)
    channel = reader.submit("flood me")
    before = resident_bytes(reader.server)
    with open_socket(reader, channel, first_event=False) as ws:  # from the first moment, before any check
        written = flood(ws, masked_frame(PRESENCE), FLOOD_FRAMES, FLOOD_S)
        code, reason = close_of(ws)
    assert code == 1008, f"closed with {code} {reason!r} after {written} frames"
    wait_until(lambda: resident_bytes(reader.server) <= before + MEMORY_SLACK_BYTES, CLOSE_WAIT_S,
               f"the server's memory to come back within 32 MiB of {before >> 20} MiB")
    assert reader.record(channel)["status"] == "running"  # the answer goes on without the flooder


def test_a_burst_faster_than_the_server_reads_is_closed_with_1008(reader_on) -> None:
    reader = reader_on(SLOW_ANSWER)
    channel = reader.submit("a burst")
    with open_socket(reader, channel) as ws:
        ws.socket.sendall(masked_frame(PRESENCE) * 150)  # well under 1000 in 10 s, in one write
        code, reason = close_of(ws)
    assert (code, reason) == (1008, "frames sent faster than the server reads them")


def test_a_client_sending_a_few_frames_is_not_closed(reader_on) -> None:
    reader = reader_on({"CHIME_DEMO_DELAY_MS": "20"})
    channel = reader.submit("a well behaved client")
    with open_socket(reader, channel) as ws:
        for visible in (True, False, True, False, True):
            ws.send(orjson.dumps({"type": "presence", "visible": visible}).decode())
            ws.recv(timeout=CLOSE_WAIT_S)  # an event between reports, as a page would
        ws.socket.sendall(masked_frame(PRESENCE) * 20)  # a small burst at once is fine too
        ws.send(orjson.dumps({"type": "cancel"}).decode())
        code, reason = close_of(ws)
    assert (code, reason) == (1000, "")
    assert reader.record(channel)["status"] == "cancelled"  # the cancel after the burst was read
