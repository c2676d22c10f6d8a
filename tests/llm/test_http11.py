"""The lean HTTP/1.1 transport under the model client, against a real loopback server."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2
import pytest

from llm import http11
from llm.http11 import LeanBody, LeanTransport, _ChunkDecoder
from tests.support.waiting import async_wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


class Server:
    """A loopback server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.closed = 0  # connections the client closed (or that ended)
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    started: list[Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        started.append(server)
        return server

    yield start
    for server in started:
        server.server.close()  # type: ignore[union-attr]


def client(timeout: float = 5.0) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=LeanTransport(), timeout=timeout)


def test_the_chunk_decoder_gives_the_body_however_the_bytes_are_split() -> None:
    pieces = [b"data: {\"n\": %d}\n\n" % n for n in range(40)] + [b"x" * 300]
    wire = chunked(*pieces)
    rng = random.Random(7)
    for _ in range(50):
        decoder, body, position = _ChunkDecoder(), b"", 0
        while position < len(wire):
            step = rng.randint(1, 40)
            body += decoder.feed(wire[position:position + step])
            position += step
        assert decoder.done and body == b"".join(pieces)


@pytest.mark.parametrize("pieces, ended", [
    ([b"3\r\nabc\r\n0\r\n\r\n"], True),
    ([b"3\r\nabc\r\n0\r\n", b"\r\n"], True),
    ([b"3\r\nabc\r\n0\r\n\r", b"\n"], True),
    ([b"3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n"], False),
    ([b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"], False),
    ([b"3\r\nabc\r\n0\r\n", b"\r\n", b"late"], False),
], ids=["at-once", "crlf-apart", "cr-lf-apart", "trailer", "bytes-after", "bytes-later"])
def test_a_body_has_ended_only_with_its_last_crlf_and_nothing_after(pieces: list[bytes], ended: bool) -> None:
    decoder = _ChunkDecoder()
    body = b"".join(decoder.feed(piece) for piece in pieces)
    assert body == b"abc" and decoder.done  # whole for its reader either way
    assert decoder.ended is ended and decoder.spoiled is not ended  # only then is its connection kept


def test_a_huge_chunk_is_passed_on_as_it_arrives_not_held_whole() -> None:
    piece = b"x" * 65536
    decoder = _ChunkDecoder()
    assert decoder.feed(b"%x\r\n" % (64 * len(piece))) == b""
    for _ in range(64):
        assert decoder.feed(piece) == piece
        assert len(decoder.pending) < 16
    assert decoder.feed(b"\r\n3\r\nend\r\n0\r\n\r\n") == b"end" and decoder.done


@pytest.mark.parametrize("wire", [b"zz\r\n", b"5\r\nhelloXX", b"-5\r\n", b"1" * 5000])
def test_a_malformed_chunk_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(httpx2.RemoteProtocolError):
        _ChunkDecoder().feed(wire)


async def test_a_streamed_chunked_answer_arrives_whole_and_the_connection_is_reused(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            assert request.startswith(b"POST /v1/chat HTTP/1.1\r\n") and request.endswith(b'{"q":1}')
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for n in range(20):
                writer.write(b"%x\r\n%s\r\n" % (len(b"tok%d " % n), b"tok%d " % n))
                await writer.drain()
            writer.write(b"0\r\n\r\n")

    server = await serve(handler)
    async with client() as http:
        for _ in range(3):
            async with http.stream("POST", server.url + "/v1/chat", json={"q": 1}) as response:
                assert response.status_code == 200
                body = b"".join([piece async for piece in response.aiter_bytes()])
            assert body == b"".join(b"tok%d " % n for n in range(20))
    assert server.connections == 1


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_EVENT = b"data: [DONE]\n\n"


def last_event_then(after: bytes, read: asyncio.Event | None) -> Handler:
    """Each request's answer: one chunk, its last event, then ``after`` (at once, or once the
    client has read that event and let the body go, when ``read`` is given)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(HEAD + b"%x\r\n%s\r\n" % (len(LAST_EVENT), LAST_EVENT))
            await writer.drain()
            if read is not None:
                await read.wait()
                read.clear()
            writer.write(after)
            await writer.drain()
    return handler


async def left_at_its_last_event(transport: LeanTransport, url: str, read: asyncio.Event | None) -> None:
    """A request whose reader stops at the body's last event, as the provider does at ``[DONE]``."""
    response = await transport.handle_async_request(httpx2.Request("POST", url + "/v1/chat", content=b"{}"))
    body = response.stream
    assert isinstance(body, LeanBody)
    async for piece in body:
        assert piece == LAST_EVENT
        break
    body.only_end_left = True
    await body.aclose()
    if read is not None:
        read.set()


def idle(transport: LeanTransport) -> int:
    return sum(map(len, transport._idle.values()))


@pytest.mark.parametrize("apart", [False, True], ids=["with-the-event", "apart"])
async def test_a_body_left_at_its_last_event_keeps_its_connection_once_its_end_arrives(serve, apart: bool) -> None:
    read = asyncio.Event() if apart else None
    server = await serve(last_event_then(b"0\r\n\r\n", read))
    transport = LeanTransport()
    for _ in range(3):
        await left_at_its_last_event(transport, server.url, read)
        await async_wait_until(lambda: idle(transport) == 1, 5, "the connection to be kept for the next request")
    assert server.connections == 1
    await transport.aclose()


@pytest.mark.parametrize("after", [b"5\r\nmore!\r\n0\r\n\r\n", b"not a chunk at all\r\n", b""],
                         ids=["more-body", "garbage", "no-end"])
async def test_a_body_that_does_not_just_end_after_its_last_event_closes_its_connection(
        serve, after: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11, "END_WAIT_S", 0.2)
    read = asyncio.Event()
    server = await serve(last_event_then(after, read))
    transport = LeanTransport()
    for connections in (1, 2):
        await left_at_its_last_event(transport, server.url, read)
        await async_wait_until(lambda: server.closed == server.connections, 5, "the connection to be closed")
        assert server.connections == connections and idle(transport) == 0
    await transport.aclose()


async def test_content_length_and_read_to_close_bodies(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if request.startswith(b"GET /close "):
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 11\r\n\r\n"
                         b'{"e":"429"}')

    server = await serve(handler)
    async with client() as http:
        for _ in range(2):
            limited = await http.get(server.url + "/limited")
            assert (limited.status_code, limited.headers["retry-after"], limited.json()) == (429, "2", {"e": "429"})
        assert server.connections == 1  # a Content-Length body leaves the connection reusable
        assert (await http.get(server.url + "/close")).text == "until the end"
        assert (await http.get(server.url + "/limited")).status_code == 429
    assert server.connections == 2  # a body that ran to the close is never followed on that connection


async def test_a_connection_lost_mid_answer_is_a_protocol_error(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    server = await serve(handler)
    async with client() as http:
        async with http.stream("GET", server.url) as response:
            received = []
            with pytest.raises(httpx2.RemoteProtocolError):
                async for piece in response.aiter_bytes():
                    received.append(piece)
    assert received == [b"hello"]


async def test_a_silent_server_is_a_read_timeout(serve) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await release.wait()

    server = await serve(handler)
    try:
        async with client(timeout=0.2) as http:
            async with http.stream("GET", server.url) as response:
                with pytest.raises(httpx2.ReadTimeout):
                    await asyncio.wait_for(response.aread(), 10)
    finally:
        release.set()


async def test_a_refused_connection_is_a_connect_error(serve) -> None:
    server = await serve(lambda reader, writer: asyncio.sleep(0))
    url = server.url
    server.server.close()
    await server.server.wait_closed()
    async with client() as http:
        with pytest.raises(httpx2.ConnectError):
            await http.get(url)


async def test_a_body_deadline_ends_a_read_however_many_bytes_trickle_in(serve) -> None:
    sent: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(200):  # a byte every 20 ms for up to 4 s, each well within the read timeout
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            sent.append(b"x")
            await asyncio.sleep(0.02)

    server = await serve(handler)
    async with client(timeout=1.0) as http:
        async with http.stream("GET", server.url) as response:
            body = response.stream._stream  # type: ignore[union-attr]  # LeanTransport's body, inside httpx2's wrapper
            assert isinstance(body, LeanBody)
            loop = asyncio.get_running_loop()
            started = loop.time()
            body.deadline = started + 0.3
            received = 0
            with pytest.raises(httpx2.ReadTimeout):
                async for piece in body:
                    received += len(piece)
                    if received >= 5:
                        body.deadline = started + 0.5  # moved on: the watchdog follows it
            elapsed_s = loop.time() - started
    assert 0.5 <= elapsed_s < 1.0 and received >= 10


async def test_a_read_waiting_past_a_deadline_already_gone_fails_at_once(serve) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await release.wait()

    server = await serve(handler)
    try:
        async with client(timeout=5.0) as http:
            async with http.stream("GET", server.url) as response:
                body = response.stream._stream  # type: ignore[union-attr]  # LeanTransport's body, inside httpx2's wrapper
                body.deadline = asyncio.get_running_loop().time() - 1
                started = time.monotonic()
                with pytest.raises(httpx2.ReadTimeout):
                    await asyncio.wait_for(response.aread(), 3)
                assert time.monotonic() - started < 0.5
    finally:
        release.set()
