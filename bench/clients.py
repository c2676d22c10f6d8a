"""Lean asyncio clients for the load generator: SSE, WebSocket and the direct upstream read.

Each is a raw ``asyncio.Protocol`` so that the load generator costs a few
microseconds per token and is never what the benchmark measures. Every token
text is ``~<seq>.<emitted_ns>~`` (see ``bench.upstream``); a ``Tally`` checks
the sequence of one stream (lost, duplicated, out of order) and records each
token's delivery latency: receive time minus emission time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from array import array
from dataclasses import dataclass, field

import orjson

TOKEN = re.compile(rb"~(\d+)\.(\d+)~")
SSE_TERMINAL = re.compile(rb"\nevent: (done|error|cancelled|interrupted)\n")
CARRY_BYTES = 64  # longest token text a read can cut in two, with room to spare
CONNECT_TIMEOUT_S = 30.0
OPEN_PAUSE_S = 0.005  # between a pool's connections opened one by one (ExchangePool.open_one_by_one)


@dataclass
class Totals:
    """What every stream of one run delivered; latencies in nanoseconds."""

    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    emitted_ns: array[int] = field(default_factory=lambda: array("q"))  # each latency's token's emission
    # Per stream that ended with its terminal event: from its last token's emission (the model
    # finishes right after it) to the terminal event's arrival.
    end_latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    replayed: int = 0      # tokens emitted before the reader attached: not a delivery latency
    failed_streams: int = 0
    first_emitted_ns: int = 0  # the earliest emission of a token delivered live
    last_received_ns: int = 0
    endings: dict[str, int] = field(default_factory=dict)


class Tally:
    """One stream's tokens, in order, exactly once."""

    __slots__ = ("totals", "expected", "first_seq", "next_seq", "seen", "attached_ns", "last_emitted_ns")

    def __init__(self, totals: Totals, expected: int, first_seq: int = 0):
        self.totals = totals
        self.expected = expected
        self.first_seq = first_seq
        self.next_seq = first_seq
        self.seen: set[int] | None = None  # only kept once something arrived out of order
        self.attached_ns = 0
        self.last_emitted_ns = 0

    def tokens(self, data: bytes, received_ns: int) -> int:
        """Count the tokens in ``data``; returns where the last one ends (0: none)."""
        totals = self.totals
        latencies = totals.latencies_ns
        emissions = totals.emitted_ns
        live = 0
        end = 0
        for match in TOKEN.finditer(data):
            end = match.end()
            seq, emitted_ns = int(match[1]), int(match[2])
            if seq == self.next_seq and self.seen is None:
                self.next_seq += 1
            else:
                self._anomaly(seq)
            if emitted_ns < self.attached_ns:
                totals.replayed += 1
            else:
                latencies.append(received_ns - emitted_ns)
                emissions.append(emitted_ns)
                self.last_emitted_ns = emitted_ns
                if not live and (not totals.first_emitted_ns or emitted_ns < totals.first_emitted_ns):
                    totals.first_emitted_ns = emitted_ns
                live += 1
        if live and received_ns > totals.last_received_ns:
            totals.last_received_ns = received_ns
        return end

    def _anomaly(self, seq: int) -> None:
        if self.seen is None:
            self.seen = set(range(self.first_seq, self.next_seq))
        if seq in self.seen:
            self.totals.duplicated += 1
            return
        if seq < self.next_seq or seq != max(self.seen, default=self.first_seq - 1) + 1:
            self.totals.out_of_order += 1
        self.seen.add(seq)
        self.next_seq = max(self.next_seq, seq + 1)

    def ended(self, received_ns: int) -> None:
        """The terminal event arrived: how long after the last live token was emitted."""
        if self.last_emitted_ns:
            self.totals.end_latencies_ns.append(received_ns - self.last_emitted_ns)

    def close(self, ending: str) -> None:
        got = len(self.seen) if self.seen is not None else self.next_seq - self.first_seq
        totals = self.totals
        totals.delivered += got
        totals.lost += max(0, self.expected - got)
        totals.endings[ending] = totals.endings.get(ending, 0) + 1
        if ending not in ("done", "held"):
            totals.failed_streams += 1


class _Reader(asyncio.Protocol):
    """Sends one request, waits for the head, then hands the body to ``body``."""

    def __init__(self, request: bytes, tally: Tally):
        self.request = request
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.carry = b""
        self.status = 0
        self.attached = asyncio.get_running_loop().create_future()
        self.ended = asyncio.get_running_loop().create_future()
        self.ending = "lost_connection"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.attached.done():
            self.attached.set_result(False)
        if not self.ended.done():
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data, self.head = self.head[end + 4:], b""
            self.tally.attached_ns = now
            if not self.accept_status():
                return
        self.body(data, now)

    def accept_status(self) -> bool:
        if self.status not in (101, 200):
            self.end(f"http_{self.status}")
            return False
        return True

    def body(self, data: bytes, now: int) -> None:
        raise NotImplementedError

    def end(self, ending: str) -> None:
        self.ending = ending
        if not self.attached.done():
            self.attached.set_result(ending == "done")
        if self.transport is not None:
            self.transport.close()

    def text_body(self, data: bytes, now: int, terminal: re.Pattern[bytes]) -> None:
        """Tokens and the terminal marker of a text stream; a read may cut either in two."""
        text = self.carry + data if self.carry else data
        last = self.tally.tokens(text, now)
        found = terminal.search(text)
        if found:
            self.tally.ended(now)
            self.end(found[1].decode())
            return
        self.carry = text[max(last, len(text) - CARRY_BYTES):]


class SSEReader(_Reader):
    """``GET /api/channels/{channel}/events`` through to the terminal event."""

    def body(self, data: bytes, now: int) -> None:
        if not self.attached.done() and b"\nevent: " in self.carry + data:
            self.attached.set_result(True)
        self.text_body(data, now, SSE_TERMINAL)


# The final Responses event, read as the channel's terminal event.
RESPONSES_ENDINGS = {"completed": "done", "failed": "error", "incomplete": "interrupted"}


class ResponsesReader(_Reader):
    """``GET /v1/responses/resp_<channel>?stream=true``: OpenAI's Responses events of the channel.

    The closing events repeat the whole text, so tokens are counted only up to
    ``response.output_text.done``; after it only the final event is looked for.
    """

    DELTAS_OVER = b"\nevent: response.output_text.done\n"
    TERMINAL = re.compile(rb"\nevent: response\.(completed|failed|incomplete)\n")

    def __init__(self, request: bytes, tally: Tally):
        super().__init__(request, tally)
        self.deltas_over = False

    def body(self, data: bytes, now: int) -> None:
        if not self.attached.done() and b"\nevent: " in self.carry + data:
            self.attached.set_result(True)
        text = self.carry + data if self.carry else data
        if not self.deltas_over:
            cut = text.find(self.DELTAS_OVER)
            if cut < 0:
                self.text_body(data, now, self.TERMINAL)
                return
            self.tally.tokens(text[:cut], now)
            self.deltas_over = True
            text = text[cut:]
        found = self.TERMINAL.search(text)
        if found:
            self.tally.ended(now)
            self.end(found[1].decode())
            return
        self.carry = text[-CARRY_BYTES:]

    def end(self, ending: str) -> None:
        super().end(RESPONSES_ENDINGS.get(ending, ending))


class DirectReader(_Reader):
    """The upstream itself, no server in between: the floor."""

    DONE = re.compile(rb"data: \[(DONE)\]")

    def body(self, data: bytes, now: int) -> None:
        if not self.attached.done():
            self.attached.set_result(True)
        self.text_body(data, now, self.DONE)

    def end(self, ending: str) -> None:
        super().end("done" if ending == "DONE" else ending)


class WSReader(_Reader):
    """``GET /api/channels/{channel}/ws``: unmasked server frames, one event each."""

    TERMINAL = re.compile(rb'"event":"(done|error|cancelled|interrupted)"')

    def body(self, data: bytes, now: int) -> None:
        buffer = self.carry + data if self.carry else data
        offset = 0
        while True:
            frame = _frame_at(buffer, offset)
            if frame is None:
                break
            opcode, payload, offset = frame
            if not self.frame(opcode, payload, now):
                return
        self.carry = buffer[offset:]

    def frame(self, opcode: int, payload: bytes, now: int) -> bool:
        if opcode in (1, 2, 0):
            if not self.attached.done():
                self.attached.set_result(True)
            self.tally.tokens(payload, now)
            found = self.TERMINAL.search(payload)
            if found:
                self.tally.ended(now)
                self.ending = found[1].decode()
            return True
        if opcode == 9:
            self.transport.write(_masked(0xA, payload))  # type: ignore[union-attr]
            return True
        if opcode == 8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.transport.write(_masked(0x8, payload[:2]))  # type: ignore[union-attr]
            self.end(self.ending if self.ending != "lost_connection" else f"close_{code}")
            return False
        return True


def _frame_at(buffer: bytes, offset: int) -> tuple[int, bytes, int] | None:
    """The unmasked frame starting at ``offset``: (opcode, payload, next offset), or None if partial."""
    if len(buffer) - offset < 2:
        return None
    opcode, length = buffer[offset] & 0x0F, buffer[offset + 1] & 0x7F
    start = offset + 2
    if length == 126:
        if len(buffer) - start < 2:
            return None
        length, start = int.from_bytes(buffer[start:start + 2], "big"), start + 2
    elif length == 127:
        if len(buffer) - start < 8:
            return None
        length, start = int.from_bytes(buffer[start:start + 8], "big"), start + 8
    if len(buffer) - start < length:
        return None
    return opcode, buffer[start:start + length], start + length


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask); payloads here are under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


# ---- plain requests -------------------------------------------------------------

class Exchange(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection for small requests answered with a Content-Length body.

    Setting up a thousand streams through httpx cost the load generator ~5 ms of
    CPU each; this costs a fraction of that.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.reply: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError("the connection closed before the response"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.reply is None:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
        if not self.reply.done():
            self.reply.set_result((int(head[9:12]), body))

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; one at a time per connection."""
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(data)  # type: ignore[union-attr]
        try:
            return await asyncio.wait_for(self.reply, CONNECT_TIMEOUT_S)
        finally:
            self.reply = None


class ExchangePool:
    """``size`` keep-alive connections to one port; a request waits for a free one."""

    def __init__(self, port: int, size: int):
        self.port = port
        self.size = size
        self.idle: asyncio.Queue[Exchange] = asyncio.Queue()
        self.opened: list[Exchange] = []

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.idle.empty() and len(self.opened) < self.size:
            slot = len(self.opened)
            self.opened.append(None)  # type: ignore[arg-type]  # reserved before awaiting the connection
            _, exchange = await asyncio.get_running_loop().create_connection(Exchange, "127.0.0.1", self.port)
            self.opened[slot] = exchange
        else:
            exchange = await self.idle.get()
        try:
            return await exchange.request(data)
        finally:
            self.idle.put_nowait(exchange)

    async def open_one_by_one(self, host: str) -> None:
        """Open every connection now, each once the one before was answered (``GET /healthz``).

        Opened together, the connections queue at the listening socket at once and the first
        worker to wake accepts them all (``CHIME_WORKERS=2``: 63-64 of 64 on one worker, which
        then runs every answer submitted through the pool). One by one and ``OPEN_PAUSE_S``
        apart, each goes to whichever worker accepts first then (31-33 of 64 each), as
        connections of independent clients do.
        """
        loop = asyncio.get_running_loop()
        while len(self.opened) < self.size:
            _, exchange = await loop.create_connection(Exchange, "127.0.0.1", self.port)
            self.opened.append(exchange)
            status, _ = await exchange.request(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            if status != 200:
                raise RuntimeError(f"GET /healthz answered {status}")
            self.idle.put_nowait(exchange)
            await asyncio.sleep(OPEN_PAUSE_S)

    def close(self) -> None:
        for exchange in self.opened:
            if exchange is not None and exchange.transport is not None:
                exchange.transport.close()


def post_request(host: str, path: str, body: bytes, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


# ---- requests ---------------------------------------------------------------

def sse_request(host: str, channel: str, token: str, after: int = 0) -> bytes:
    return (f"GET /api/channels/{channel}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
            f"Last-Event-ID: {after}\r\n\r\n").encode()


def ws_request(host: str, channel: str, token: str, after: int = 0) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /api/channels/{channel}/ws?last_event_id={after} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def responses_request(host: str, channel: str, token: str, after: int = 0) -> bytes:
    # Resuming after event id A (A >= 1) is starting after sequence number A + 2: meta is numbers 0 to 3
    # and each delta one more (routes/encoders/openai_responses.py); usage comes only at the end.
    starting = f"&starting_after={after + 2}" if after else ""
    return (f"GET /v1/responses/resp_{channel}?stream=true{starting} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode()


def direct_request(host: str, message: str) -> bytes:
    body = orjson.dumps({"model": "bench", "stream": True, "messages": [{"role": "user", "content": message}]})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


READERS = {"sse": (SSEReader, sse_request), "ws": (WSReader, ws_request), "v1": (ResponsesReader, responses_request)}


async def open_reader(port: int, reader: type[_Reader], request: bytes, tally: Tally) -> _Reader:
    """Connect and send; returns once the stream is attached (its first event came) or failed."""
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: reader(request, tally), "127.0.0.1", port), CONNECT_TIMEOUT_S)
    await asyncio.wait_for(protocol.attached, CONNECT_TIMEOUT_S)
    return protocol
