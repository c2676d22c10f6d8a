"""A lean HTTP/1.1 transport for the model's HTTP client (``httpx2.AsyncBaseTransport``).

The OpenAI SDK still builds every request (URL, headers, auth, JSON body) and
reads every status and error; only the bytes on the wire are handled here.
httpcore2 turns each HTTP chunk of a streamed answer into an h11 event and
passes it through five async iterators, and its pool scans every connection
on each request and release: with a model sending one token per chunk that
was the largest share of the server's CPU per token. Here a read takes every
byte that has arrived and decodes all the complete chunks in it at once, and
the pool is a list of idle connections per host.

A body can be given a ``deadline`` (event-loop time) by whoever reads it: a
read still waiting then raises ``ReadTimeout`` however many bytes arrived
before, so a caller that only counts complete events as progress (the model
provider) moves it forward on those and a byte-by-byte trickle cannot keep the
request alive. Chunks are passed on as their bytes arrive, never held whole.

A chunked body can also be pushed (``_Body.push``): its bytes are decoded in
the connection's ``data_received`` and handed to the reader's sink there, so a
model sending one token per chunk wakes no task per token; the reader's task
sleeps until the sink asks for it, the body ends, or the deadline passes.

A reader that stops at a body's last event (the model's ``[DONE]``) marks it
``only_end_left``: closing the body then waits, in the connection's callback,
for the last chunk and its CRLF, and keeps the connection for the next request;
anything else, or nothing within ``END_WAIT_S``, closes it.

Failures are raised as httpx2's own exceptions (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``, ``RemoteProtocolError``)
so the SDK and the provider classify them exactly as before.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2

# Reading stops (TCP back-pressure) while this much is buffered and unread.
MAX_BUFFERED_BYTES = 256 * 1024


class _Buffered(asyncio.Protocol):
    """Collects what arrives; one reader waits on ``waiter`` when there is nothing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.paused_reading = False
        # While set (``_Body.push``), it takes every byte as it arrives, with nothing buffered.
        self.push: Callable[[bytes], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.push is not None:
            self.push(data)
            return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > MAX_BUFFERED_BYTES and not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def take_all(self, taken: int) -> None:
        """``taken`` bytes were read straight from ``chunks``."""
        self.buffered -= taken
        if self.paused_reading and self.buffered <= MAX_BUFFERED_BYTES // 2:
            self.paused_reading = False
            self.transport.resume_reading()  # type: ignore[union-attr]


async def _wait(future: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
    """Await ``future``; past ``timeout`` seconds raise ``error`` (a single timer, no cancel scope)."""
    if timeout is None:
        await future
        return
    loop = asyncio.get_running_loop()
    # The lambda's value is unused: ``or`` only skips set_exception on a future already done.
    timer = loop.call_later(timeout, lambda: future.done() or future.set_exception(  # type: ignore[func-returns-value]
        error("timed out")))
    try:
        await future
    finally:
        timer.cancel()


# Idle keep-alive connections kept per host, and for how long.
MAX_IDLE_PER_HOST = 100
KEEPALIVE_EXPIRY_S = 5.0
# How long, and for how many bytes, a body whose reader stopped at its last event is waited
# for to end (``_Body.only_end_left``) before its connection is closed rather than kept.
END_WAIT_S = 1.0
MAX_END_BYTES = 1024
MAX_HEAD_BYTES = 64 * 1024
# A chunk-size line (with any extensions) longer than this is not HTTP/1.1.
MAX_CHUNK_LINE_BYTES = 4 * 1024


class _Connection:
    def __init__(self, key: tuple[str, str, int], transport: asyncio.Transport, protocol: _Buffered,
                 loop: asyncio.AbstractEventLoop):
        self.key = key
        # Kept, not looked up per read: Python 3.11's get_running_loop() makes a getpid() system
        # call each time, a few percent of the server's CPU at a thousand streams.
        self.loop = loop
        self.transport = transport
        self.protocol = protocol
        self.buffer = b""
        self.idle_since = 0.0
        # Stall detection: one timer per connection that re-arms itself, not one per read
        # (uvloop's call_later + cancel per token was ~6% of the server's CPU).
        self._read_deadline: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def reusable(self) -> bool:
        """Idle and untouched: no bytes, EOF or error arrived since the last response ended."""
        protocol = self.protocol
        return (not self.transport.is_closing() and not protocol.chunks and not protocol.eof
                and time.monotonic() - self.idle_since < KEEPALIVE_EXPIRY_S)

    async def read(self, timeout: float | None, deadline: float | None = None) -> bytes:
        """Every byte that has arrived (waiting for some); b"" at the end of the stream.

        Waiting ends with ``ReadTimeout`` at ``deadline`` (event-loop time) when given,
        else ``timeout`` seconds from now.
        """
        protocol = self.protocol
        if not protocol.chunks and not protocol.eof:
            loop = self.loop
            protocol.waiter = loop.create_future()
            if deadline is not None:
                self._arm(loop, deadline)
            elif timeout is not None:
                self._arm(loop, loop.time() + timeout)
            try:
                await protocol.waiter
            finally:
                protocol.waiter = None
                self._read_deadline = None
        if protocol.chunks:
            data = b"".join(protocol.chunks) if len(protocol.chunks) > 1 else protocol.chunks[0]
            protocol.chunks.clear()
            protocol.take_all(len(data))
            return data
        return b""

    def arrived(self) -> bytes:
        """Every byte that has arrived and not been read (what followed the response head, then
        what the protocol holds), taken now."""
        protocol = self.protocol
        data, self.buffer = self.buffer, b""
        if protocol.chunks:
            data += b"".join(protocol.chunks)
            protocol.chunks.clear()
            protocol.take_all(protocol.buffered)
        return data

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._read_deadline = deadline
        if self._watchdog is not None and self._watchdog.when() > deadline:
            self._watchdog.cancel()
            self._watchdog = None
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_stall, loop)

    def _check_stall(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        deadline = self._read_deadline
        if deadline is None:
            return  # no read is waiting; the next one arms the watchdog again
        if loop.time() < deadline:
            self._watchdog = loop.call_at(deadline, self._check_stall, loop)
            return
        waiter = self.protocol.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(httpx2.ReadTimeout("nothing from the model within the read timeout"))

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.transport.is_closing():
            raise httpx2.WriteError("the connection to the model closed")
        self.transport.write(data)
        if self.protocol.drained is not None:
            await _wait(self.protocol.drained, timeout, httpx2.WriteTimeout)

    async def read_head(self, timeout: float | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx2.RemoteProtocolError("the model's response head is too long")
            data = await self.read(timeout)
            if not data:
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            self.buffer += data
        head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx2.RemoteProtocolError(f"malformed status line {status_line[:80]!r}")
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon:
                raise httpx2.RemoteProtocolError("malformed response header")
            headers.append((name.strip(), value.strip()))
        return int(parts[1]), parts[2] if len(parts) > 2 else b"", headers

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.transport.close()


class _Body(httpx2.AsyncByteStream):
    """The response body: Content-Length, chunked, or up to the close of the connection.

    ``deadline`` (event-loop time), when set, replaces the per-read timeout: a read
    waiting past it raises ``ReadTimeout``. The reader may move it at any time; the
    connection's one watchdog timer follows it without a timer per read.
    """

    def __init__(self, owner: LeanTransport, connection: _Connection, headers: list[tuple[bytes, bytes]],
                 bodyless: bool, timeout: float | None):
        self.owner = owner
        self.connection = connection
        self.timeout = timeout
        names = {name.lower(): value for name, value in headers}
        self.chunked = b"chunked" in names.get(b"transfer-encoding", b"").lower()
        length = names.get(b"content-length")
        self.remaining = 0 if bodyless else (int(length) if length is not None and not self.chunked else None)
        self.keep_alive = names.get(b"connection", b"").lower() != b"close" and (
            self.chunked or self.remaining is not None)
        self.complete = self.remaining == 0 and not self.chunked
        self.closed = False
        self.deadline: float | None = None
        self._decoder: _ChunkDecoder | None = None
        self._sink: Callable[[bytes], bool] | None = None
        self._stopped = False
        self._failure: Exception | None = None
        self.only_end_left = False  # the reader has what it wanted: what is left is the body's end

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.chunked:
            decoder = self._decoder = self._decoder or _ChunkDecoder()
            data, self.connection.buffer = self.connection.buffer, b""
            while True:
                body = decoder.feed(data)
                if decoder.done:
                    self.complete = True  # before the last piece: a reader may stop at it
                if body:
                    yield body
                if self.complete:
                    return
                data = await self._more()
        else:
            data, self.connection.buffer = self.connection.buffer, b""
            while not self.complete:
                if self.remaining is not None:
                    data, extra = data[:self.remaining], data[self.remaining:]
                    self.remaining -= len(data)
                    self.complete = self.remaining == 0
                    if extra:
                        self.keep_alive = False  # bytes past the body: do not trust the connection
                if data:
                    yield data
                if self.complete:
                    return
                data = await self.connection.read(self.timeout, self.deadline)
                if not data:
                    if self.remaining is None:
                        self.complete = True  # the body ran to the close of the connection
                        return
                    raise httpx2.RemoteProtocolError("peer closed connection without sending complete "
                                                     "message body")

    async def push(self, sink: Callable[[bytes], bool]) -> None:
        """Hand the body's bytes to ``sink`` as they arrive, in the connection's callback.

        For chunked bodies (``pushable``). Returns once the body is complete, or once
        ``sink`` returned False (it wants its task to run: call ``push`` again to go on;
        meanwhile arriving bytes are buffered, with the usual back-pressure). Raises what
        ends the body early, ``sink``'s own exceptions included, and ``ReadTimeout`` when
        a wait passes ``deadline``, which ``sink`` may move on at any time.
        """
        connection, protocol = self.connection, self.connection.protocol
        if self._decoder is None:
            self._decoder = _ChunkDecoder()
        self._sink, self._stopped = sink, False
        try:
            data = connection.arrived()
            if data:
                self._take(data)
            while not (self.complete or self._stopped or self._failure):
                if protocol.eof:
                    raise httpx2.RemoteProtocolError("peer closed connection without sending complete message "
                                                     "body (incomplete chunked read)")
                loop = connection.loop
                protocol.waiter = loop.create_future()
                deadline = self.deadline if self.deadline is not None else (
                    None if self.timeout is None else loop.time() + self.timeout)
                if deadline is not None:
                    connection._arm(loop, deadline)
                protocol.push = self._take
                try:
                    await protocol.waiter
                finally:
                    protocol.push = None
                    protocol.waiter = None
                    connection._read_deadline = None
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
        finally:
            self._sink = None

    @property
    def pushable(self) -> bool:
        return self.chunked and not self.complete

    def _take(self, data: bytes) -> None:
        """Decode what arrived and give it to the sink; wake the task when it is needed."""
        connection = self.connection
        try:
            body = self._decoder.feed(data)  # type: ignore[union-attr]
            if body and not self._sink(body):  # type: ignore[misc]
                self._stopped = True
            if self._decoder.done:  # type: ignore[union-attr]
                self.complete = True
        except Exception as exc:  # raised by the task, not into the event loop's callback
            self._failure = exc
        if self.complete or self._stopped or self._failure is not None:
            connection.protocol.push = None
            connection.protocol._wake()
        elif self.deadline is not None and connection._read_deadline is not None:
            connection._read_deadline = self.deadline  # the watchdog follows the reader's deadline

    async def _more(self) -> bytes:
        data = await self.connection.read(self.timeout, self.deadline)
        if not data:
            raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body "
                                             "(incomplete chunked read)")
        return data

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        decoder = self._decoder
        if self.keep_alive and self.chunked and decoder is not None and (self.complete or self.only_end_left):
            if decoder.ended:
                self.owner.release(self.connection)
            elif decoder.spoiled:
                self.connection.close()
            else:
                _EndWait(self.owner, self.connection, decoder).start()
        elif self.complete and self.keep_alive and not self.chunked:
            self.owner.release(self.connection)
        else:
            self.connection.close()


class _EndWait:
    """A body whose reader stopped at its last event: wait, apart from the reader and in the
    connection's callback, for the chunked body's last bytes (a model may write its ``[DONE]``,
    the last chunk and its CRLF apart), then keep the connection for the next request;
    anything but the end, or no end within ``END_WAIT_S``, closes it."""

    def __init__(self, owner: LeanTransport, connection: _Connection, decoder: _ChunkDecoder):
        self.owner = owner
        self.connection = connection
        self.decoder = decoder
        self.seen = 0
        self.over = False
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        connection, protocol = self.connection, self.connection.protocol
        data = connection.arrived()
        if data:
            self.take(data)
        if self.over:
            return
        if protocol.eof or connection.transport.is_closing():
            self.finish(False)
            return
        protocol.push = self.take
        self.timer = connection.loop.call_later(END_WAIT_S, self.finish, False)

    def take(self, data: bytes) -> None:
        if self.over:
            return
        self.seen += len(data)
        try:
            more_body = self.decoder.feed(data)
        except httpx2.RemoteProtocolError:
            self.finish(False)
            return
        if more_body or self.seen > MAX_END_BYTES or self.decoder.spoiled:
            self.finish(False)  # not just the end: the connection cannot be trusted with another request
        elif self.decoder.ended:
            self.finish(True)

    def finish(self, reusable: bool) -> None:
        if self.over:
            return
        self.over = True
        protocol = self.connection.protocol
        protocol.push = None
        if self.timer is not None:
            self.timer.cancel()
        if reusable and not protocol.eof:
            self.owner.release(self.connection)
        else:
            self.connection.close()


class _ChunkDecoder:
    """Transfer-Encoding: chunked, any number of chunks per feed.

    A chunk's data is passed on as it arrives, so a huge chunk is never held
    whole: what stays behind between feeds is at most a chunk-size line.
    """

    def __init__(self) -> None:
        self.pending = b""
        self.left = 0  # bytes of the current chunk's data still to come
        self.crlf = False  # the current chunk's data ended; its CRLF is next
        self.done = False  # the last chunk (size 0) came: the body is whole
        self.after = b""  # what came after the last chunk's size line

    @property
    def ended(self) -> bool:
        """The body's very last bytes came, and nothing after them (no trailers, no junk):
        the connection is at the start of the next response."""
        return self.done and self.after == b"\r\n"

    @property
    def spoiled(self) -> bool:
        """Something other than the body's last CRLF came after its last chunk."""
        return self.done and not b"\r\n".startswith(self.after)

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.after += data[:3]  # (three bytes are enough to tell it is not just CRLF)
            return b""
        buffer = self.pending + data if self.pending else data
        size = len(buffer)
        out: list[bytes] = []
        position = 0
        while True:
            if self.left:
                end = min(size, position + self.left)
                out.append(buffer[position:end] if position or end < size else buffer)
                self.left -= end - position
                position = end
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if size - position < 2:
                    break
                if buffer[position:position + 2] != b"\r\n":
                    raise httpx2.RemoteProtocolError("a chunk of the model's response did not end with CRLF")
                position += 2
                self.crlf = False
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                if size - position > MAX_CHUNK_LINE_BYTES:
                    raise httpx2.RemoteProtocolError("malformed chunk size in the model's response")
                break
            size_text = buffer[position:line_end].split(b";", 1)[0].strip()
            try:
                chunk_size = int(size_text, 16)
            except ValueError:
                raise httpx2.RemoteProtocolError("malformed chunk size in the model's response") from None
            if chunk_size < 0:
                raise httpx2.RemoteProtocolError("malformed chunk size in the model's response")
            if chunk_size == 0:
                self.done = True  # trailers, if any, are ignored (and the connection not kept)
                self.after = buffer[line_end + 2:line_end + 5]
                return b"".join(out)
            self.left = chunk_size
            position = line_end + 2
        self.pending = buffer[position:]
        return b"".join(out) if len(out) != 1 else out[0]


class LeanTransport(httpx2.AsyncBaseTransport):
    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self._ssl_context = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        body = await request.aread()
        connection = self._reuse(key) or await self._connect(key, timeouts.get("connect"))
        try:
            await connection.write(_request_head(request, body) + body, timeouts.get("write"))
            status, reason, headers = await connection.read_head(timeouts.get("read"))
        except BaseException:
            connection.close()
            raise
        bodyless = request.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        stream = _Body(self, connection, headers, bodyless, timeouts.get("read"))
        return httpx2.Response(status, headers=headers, stream=stream,
                               extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    def _reuse(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                return connection
            connection.close()
        return None

    def release(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, key: tuple[str, str, int], timeout: float | None) -> _Connection:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            tls = self._ssl_context = self._ssl_context or httpx2.create_ssl_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _Buffered, host, port, ssl=tls, server_hostname=host if tls else None)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Connection(key, transport, protocol, loop)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


LeanBody = _Body  # the response stream type, for callers that read it without httpx's wrappers


def _request_head(request: httpx2.Request, body: bytes) -> bytes:
    target = request.url.raw_path
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
    has_length = False
    for name, value in request.headers.raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            continue  # the body is sent whole, with its length
        has_length = has_length or lowered == b"content-length"
        lines.append(name + b": " + value)
    if body and not has_length:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"
