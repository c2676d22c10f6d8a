"""A loopback OpenAI-compatible upstream whose tokens carry their number and emission time.

``python -m bench.upstream PORT`` serves ``POST /v1/chat/completions`` with
``stream: true`` in OpenAI's exact wire format, on 127.0.0.1 only. The last
user message picks the workload, e.g. ``bench n=250 rate=25 delay_ms=1000``:

- ``n``: tokens to send; each token's text is ``~<seq>.<emitted_ns>~`` where
  ``seq`` counts from 0 and ``emitted_ns`` is ``time.monotonic_ns()`` taken
  just before the write (CLOCK_MONOTONIC is shared by every process on the
  machine, so a reader subtracts it from its own receive time);
- ``rate``: tokens a second per stream, 0 for as fast as the socket takes them;
- ``delay_ms``: quiet time before the first token, so readers can attach first;
- ``hold=1``: send the role chunk, then nothing until the client leaves;
- ``go=G``: wait in group ``G`` for ``POST /go/G/COUNT`` instead of starting
  at once. The go is answered once ``COUNT`` streams of the group are waiting
  (a server may open its upstream request after its reader attached), then
  starts them all: the paced ones ``delay_ms`` later, spread evenly over one
  token period, as independent answers would be. The load generator sets up
  every stream first, so a row measures the steady state of all its streams
  at once, not set-up overlapping delivery.

It is a raw asyncio protocol on uvloop so that it costs little CPU per token:
the benchmark measures the server, not this.
"""

from __future__ import annotations

import asyncio
import heapq
import re
import resource
import sys
import time

import orjson

CHUNK_HEAD = (b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
              b'"model":"bench","system_fingerprint":null,"choices":[{"index":0,"delta":')
ROLE_CHUNK = CHUNK_HEAD + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'
STOP_CHUNK = CHUNK_HEAD + b'{},"logprobs":null,"finish_reason":"stop"}]}'
TOKEN_FRAME = b'data: ' + CHUNK_HEAD + b'{"content":"~%d.%d~"},"logprobs":null,"finish_reason":null}]}\n\n'
DONE_LINE = b"data: [DONE]\n\n"
RESPONSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                 b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

UNPACED_YIELD_EVERY = 16  # tokens written before an unpaced stream lets other streams run
_WORKLOAD = re.compile(r"(\w+)=(\d+)")


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def workload(body: bytes) -> tuple[dict[str, int], bool]:
    """The workload named by the last user message, and whether usage was asked for."""
    request = orjson.loads(body)
    text = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
    params = {"n": 10, "rate": 0, "delay_ms": 0, "hold": 0, "go": 0}
    params.update({k: int(v) for k, v in _WORKLOAD.findall(text)})
    usage = bool((request.get("stream_options") or {}).get("include_usage"))
    return params, usage


class Pacer:
    """One timer for every paced stream: a wheel of 1 ms slots (uvloop's timer resolution).

    A token is never sent before its due time; each timer firing sends every
    token whose slot has come, so 1000 streams cost ~1000 firings a second, not 25,000.
    """

    SLOT_NS = 1_000_000

    def __init__(self) -> None:
        self._slots: dict[int, list[Stream]] = {}
        self._order: list[int] = []  # heap of slot numbers with streams in them
        self._timer: asyncio.TimerHandle | None = None
        self._armed_slot = 0

    def schedule(self, due_ns: int, stream: Stream) -> None:
        slot = -(-due_ns // self.SLOT_NS)  # rounded up: never early
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(stream)
            return
        self._slots[slot] = [stream]
        heapq.heappush(self._order, slot)
        if self._timer is None or slot < self._armed_slot:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        slot = self._order[0]
        self._armed_slot = slot
        delay_s = max(0.0, (slot * self.SLOT_NS - time.monotonic_ns()) / 1e9)
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now_slot = time.monotonic_ns() // self.SLOT_NS
        order, slots = self._order, self._slots
        while order and order[0] <= now_slot:
            for stream in slots.pop(heapq.heappop(order)):
                stream.tick()
        if order:
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class Stream:
    """One streamed answer on one connection."""

    def __init__(self, connection: Connection, params: dict[str, int], usage: bool):
        self.connection = connection
        self.n = params["n"]
        self.rate = params["rate"]
        self.delay_ns = params["delay_ms"] * 1_000_000
        self.hold = bool(params["hold"])
        self.group = params["go"]
        self.usage = usage
        self.seq = 0
        self.next_due = 0

    def start(self) -> None:
        self.connection.write(RESPONSE_HEAD + chunk(sse(ROLE_CHUNK)))
        if self.hold:
            return
        if self.group:
            self.connection.server.wait(self)
        else:
            self.begin(time.monotonic_ns() + self.delay_ns)

    def begin(self, first_due_ns: int) -> None:
        """Tokens from ``first_due_ns`` on (paced), or at once (unpaced)."""
        if self.connection.closed:
            return
        if self.rate:
            self.next_due = first_due_ns
            self.connection.server.pacer.schedule(self.next_due, self)
        else:
            self.connection.task = asyncio.get_running_loop().create_task(self.unpaced())

    def tick(self) -> None:
        if self.connection.closed:
            return
        self.send_token()
        if self.seq < self.n:
            self.next_due += 1_000_000_000 // self.rate
            self.connection.server.pacer.schedule(self.next_due, self)
        else:
            self.finish()

    async def unpaced(self) -> None:
        if self.delay_ns and not self.group:
            await asyncio.sleep(self.delay_ns / 1e9)
        while self.seq < self.n and not self.connection.closed:
            self.send_token()
            if self.connection.paused is not None:
                await self.connection.paused
            elif self.seq % UNPACED_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if not self.connection.closed:
            self.finish()

    def send_token(self) -> None:
        self.connection.write(chunk(TOKEN_FRAME % (self.seq, time.monotonic_ns())))
        self.seq += 1

    def finish(self) -> None:
        tail = sse(STOP_CHUNK)
        if self.usage:
            tail += sse(b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
                        b'"model":"bench","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":%d,'
                        b'"total_tokens":%d}}' % (self.n, self.n + 1))
        self.connection.write(chunk(tail + DONE_LINE) + b"0\r\n\r\n")
        self.connection.stream = None


class Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive: one request at a time, a Content-Length body."""

    def __init__(self, server: Upstream):
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.task: asyncio.Task[None] | None = None
        self.paused: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        if self.task is not None:
            self.task.cancel()

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.paused = None

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.stream is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = _content_length(head)
            body_end = head_end + 4 + length
            if len(self.buffer) < body_end:
                return
            body, self.buffer = self.buffer[head_end + 4:body_end], self.buffer[body_end:]
            self.handle(head.split(" ", 2), body)

    def handle(self, request_line: list[str], body: bytes) -> None:
        if request_line[0] == "POST" and "/go/" in request_line[1]:
            group, count = request_line[1].rsplit("/", 2)[1:]
            self.server.go(int(group), int(count), self)
            return
        if request_line[0] != "POST" or not request_line[1].endswith("/chat/completions"):
            self.write(NOT_FOUND)
            return
        params, usage = workload(body)
        self.stream = Stream(self, params, usage)
        self.stream.start()


def _content_length(head: str) -> int:
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 0


class Upstream:
    def __init__(self) -> None:
        self.pacer = Pacer()
        self.waiting: dict[int, list[Stream]] = {}
        self.gos: dict[int, tuple[int, Connection]] = {}

    def wait(self, stream: Stream) -> None:
        self.waiting.setdefault(stream.group, []).append(stream)
        self._maybe_go(stream.group)

    def go(self, group: int, count: int, caller: Connection) -> None:
        """Start group ``group`` once ``count`` of its streams wait; ``caller`` hears when."""
        self.gos[group] = (count, caller)
        self._maybe_go(group)

    def _maybe_go(self, group: int) -> None:
        waiting = self.waiting.get(group, [])
        count, caller = self.gos.get(group, (0, None))
        if caller is None or len(waiting) < count:
            return
        del self.waiting[group], self.gos[group]
        now = time.monotonic_ns()
        for index, stream in enumerate(waiting):
            phase_ns = (1_000_000_000 // stream.rate) * index // len(waiting) if stream.rate else 0
            stream.begin(now + stream.delay_ns + phase_ns)
        caller.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%d"
                     % (len(str(len(waiting))), len(waiting)))

    async def serve(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Connection(self), "127.0.0.1", port, backlog=4096)
        print(f"upstream listening on 127.0.0.1:{port}", flush=True)
        try:
            await server.serve_forever()
        finally:
            self.pacer.stop()


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: thousands of connections need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    import uvloop

    raise_open_files_limit()
    uvloop.run(Upstream().serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
