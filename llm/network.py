"""A lean asyncio network layer for the model's HTTP client.

The HTTP client under the OpenAI SDK (httpx2 over httpcore2) reads the socket
through anyio by default: every read opens a cancel scope for its timeout and
looks up the current task, about a third of the server's CPU per streamed
token when a model sends one token per read. This backend keeps httpcore2's
HTTP/1.1 parsing, pooling and TLS, and does the socket part with a plain
asyncio protocol: data is buffered as it arrives, a read takes what is there,
and a timeout is one timer, set only when a read has to wait.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Iterable

import httpcore2
import httpx2
from httpcore2 import AsyncNetworkBackend, AsyncNetworkStream

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
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

    def take(self, max_bytes: int) -> bytes:
        data = self.chunks.popleft()
        if len(data) > max_bytes:
            data, rest = data[:max_bytes], data[max_bytes:]
            self.chunks.appendleft(rest)
        self.buffered -= len(data)
        if self.paused_reading and self.buffered <= MAX_BUFFERED_BYTES // 2:
            self.paused_reading = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data


async def _wait(future: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
    """Await ``future``; past ``timeout`` seconds raise ``error`` (a single timer, no cancel scope)."""
    if timeout is None:
        await future
        return
    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout, lambda: future.done() or future.set_exception(error("timed out")))
    try:
        await future
    finally:
        timer.cancel()


class AsyncioStream(AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Buffered):
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks and not protocol.eof:
            protocol.waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(protocol.waiter, timeout, httpcore2.ReadTimeout)
            finally:
                protocol.waiter = None
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(str(protocol.error)) from protocol.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore2.WriteError("the connection is closed")
        self._transport.write(buffer)
        if self._protocol.drained is not None:
            await _wait(self._protocol.drained, timeout, httpcore2.WriteTimeout)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(self._transport, self._protocol, ssl_context,
                                                 server_hostname=server_hostname)
        except TimeoutError:
            self._transport.close()
            raise httpcore2.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore2.ConnectError(str(exc)) from exc
        return AsyncioStream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        names = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername",
                 "socket": "socket"}
        if info in names:
            return self._transport.get_extra_info(names[info])
        if info == "is_readable":
            # An idle pooled connection with data or EOF waiting is one the server closed.
            protocol = self._protocol
            return bool(protocol.chunks) or protocol.eof
        return None


class AsyncioBackend(AsyncNetworkBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        return await self._connect(lambda: loop.create_connection(_Buffered, host, port, local_addr=local),
                                   timeout, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        return await self._connect(lambda: loop.create_unix_connection(_Buffered, path), timeout, socket_options)

    @staticmethod
    async def _connect(connect: Any, timeout: float | None,
                       socket_options: Iterable[Any] | None) -> AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await connect()
        except TimeoutError:
            raise httpcore2.ConnectTimeout("connecting timed out") from None
        except OSError as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def lean_transport(limits: httpx2.Limits) -> httpx2.AsyncHTTPTransport:
    """httpx2's own HTTP transport, with its connection pool on the asyncio backend above."""
    transport = httpx2.AsyncHTTPTransport(limits=limits)
    # AsyncHTTPTransport has no parameter for the network backend; its pool is
    # rebuilt here with the same settings it would have used.
    transport._pool = httpcore2.AsyncConnectionPool(  # noqa: SLF001
        ssl_context=httpx2.create_ssl_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend())
    return transport
