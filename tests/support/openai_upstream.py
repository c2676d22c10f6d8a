"""A loopback OpenAI-compatible chat server speaking the exact streaming wire format.

``OpenAIUpstream`` listens on 127.0.0.1 (a free port) in a background thread
with its own event loop, so sync and async tests, and a Chime server process,
can all talk to it. It is plain HTTP/1.1 on asyncio streams — keep-alive,
chunked transfer encoding — so it sees exactly what a real model server sees,
including the moment a client closes its connection.

Replies are scripted with ``Reply``: tokens and pacing, error statuses with
headers, a connection dropped after K tokens, a stall (silent, with keepalive
comments, or trickling an unfinished line byte by byte), a request never
answered, a giant line, an error inside the stream. Requests are routed by the text of their last user
message (``when("boom", Reply.error(500))``), so concurrent channels can be scripted
independently; the rest get ``default``. Every request is recorded
(``requests``) with its JSON body and monotonic timestamps.

The stream written for a successful reply::

    data: {"id","object":"chat.completion.chunk","created","model","choices":[{"index":0,"delta":{"role":"assistant","content":""},...}]}
    data: {... "delta":{"content":"<token>"} ...}          (one per token)
    data: {... "delta":{},"finish_reason":"stop" ...}
    data: {... "choices":[],"usage":{...}}                 (when stream_options.include_usage)
    data: [DONE]

each followed by a blank line.
"""  # noqa: E501  # the first frame is shown whole, as it goes on the wire

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "test-model"
# A stalled reply holds its connection at most this long, so nothing hangs forever.
MAX_STALL_S = 60.0
_TOKEN = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Reply:
    """What the upstream does with one request.

    ``tokens`` None echoes the last user message (``"Echo: <message>"``, word by word).
    ``status`` other than 200 answers an OpenAI-style JSON error instead of a stream.
    ``drop_after``: close the connection abruptly after that many tokens (no ``[DONE]``).
    ``stall_after``: send that many tokens, then nothing (optionally ``: keepalive``
    comments every ``keepalive_s``, or an event's line one byte every ``trickle_s``
    that never ends) until the client leaves.
    ``silent``: read the request, then send nothing at all (not even the status line).
    ``giant_line_after``: send that many tokens, then a ``data:`` line of
    ``giant_line_bytes`` (in one HTTP chunk, written piece by piece so the upstream
    never holds it whole), then finish normally if the client is still there.
    ``error_after``: send that many tokens, then an ``{"error": ...}`` event and ``[DONE]``.
    """

    tokens: Sequence[str] | None = None
    token_delay_s: float = 0.0
    finish_reason: str = "stop"
    status: int = 200
    error_message: str = ""
    error_type: str = "server_error"
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    stall_after: int | None = None
    keepalive_s: float | None = None
    trickle_s: float | None = None
    silent: bool = False
    giant_line_after: int | None = None
    giant_line_bytes: int = 0
    error_after: int | None = None

    @classmethod
    def error(cls, status: int, message: str = "", **headers: str) -> Reply:
        """An error status; keyword headers use ``_`` for ``-`` (``retry_after="0"``)."""
        return cls(status=status, error_message=message or f"upstream error {status}",
                   headers={k.replace("_", "-"): v for k, v in headers.items()})

    @classmethod
    def text(cls, text: str, **options: Any) -> Reply:
        return cls(tokens=_TOKEN.findall(text), **options)

    @classmethod
    def giant_line(cls, size_bytes: int, after: int = 0, text: str = "one two three") -> Reply:
        """``after`` tokens of ``text``, then one ``data:`` line of ``size_bytes``."""
        return cls(tokens=_TOKEN.findall(text), giant_line_after=after, giant_line_bytes=size_bytes)


@dataclass
class RecordedRequest:
    """One request the upstream received, with what happened to its connection (monotonic times)."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    reply: Reply
    received_at: float
    tokens_sent: int = 0
    completed: bool = False
    dropped: bool = False
    disconnected_at: float | None = None
    last_token_at: float | None = None
    trickled_bytes: int = 0
    giant_bytes_sent: int = 0

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def last_user_message(self) -> str:
        return next((str(m.get("content", "")) for m in reversed(self.messages) if m.get("role") == "user"), "")


class OpenAIUpstream:
    """The loopback model server; use as a context manager or ``start()``/``stop()``."""

    def __init__(self, *, api_key: str | None = None, models: Sequence[str] | None = None,
                 default: Reply | None = None):
        self.api_key = api_key
        self.models = set(models) if models else None
        self.default = default or Reply()
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._routes: list[tuple[str, list[Reply]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The base URL to give ``OPENAI_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- scripting -------------------------------------------------------

    def when(self, text: str, *replies: Reply) -> OpenAIUpstream:
        """Requests whose last user message contains ``text`` get ``replies`` in order;
        once they run out, the last one repeats."""
        self._routes.append((text, list(replies)))
        return self

    def requests_for(self, text: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if text in r.last_user_message]

    def _reply_for(self, body: dict[str, Any]) -> Reply:
        last_user = RecordedRequest("", "", {}, body, self.default, 0.0).last_user_message
        for text, replies in self._routes:
            if text in last_user:
                return replies.pop(0) if len(replies) > 1 else replies[0]
        return self.default

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> OpenAIUpstream:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="openai-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the loopback model server did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        for task in list(self._connections):
            task.cancel()
        loop.run_until_complete(asyncio.gather(*self._connections, return_exceptions=True))
        self._server.close()
        loop.run_until_complete(self._server.wait_closed())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> OpenAIUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP ------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True when the connection stays open for the next."""
        head = await _read_head(reader)
        if head is None:
            return False
        method, path, headers = head
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            await _send_json(writer, 400, _error_body("invalid JSON body", "invalid_request_error"))
            return True
        refusal = self._refusal(method, path, headers, body)
        if refusal is not None:
            await _send_json(writer, *refusal)
            return True
        reply = self._reply_for(body)
        record = RecordedRequest(method, path, headers, body, reply, time.monotonic())
        self.requests.append(record)
        if reply.status != 200:
            await _send_json(writer, reply.status, _error_body(reply.error_message, reply.error_type),
                             reply.headers)
            return True
        return await self._stream_watching(record, reader, writer)

    def _refusal(self, method: str, path: str, headers: dict[str, str],
                 body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, _error_body(f"Unknown request URL: {method} {path}", "invalid_request_error")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            sent = headers.get("authorization", "").removeprefix("Bearer ")
            # Like OpenAI, the message quotes the key it got: the client must not pass it on.
            return 401, _error_body(f"Incorrect API key provided: {sent}.", "invalid_request_error")
        if self.models is not None and body.get("model") not in self.models:
            return 404, _error_body(f"The model `{body.get('model')}` does not exist.", "invalid_request_error")
        return None

    async def _stream_watching(self, record: RecordedRequest, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> bool:
        """Stream the reply while watching for the client to close its side."""
        loop = asyncio.get_running_loop()
        sending = loop.create_task(self._stream(record, writer))
        watching = loop.create_task(reader.read(1))
        await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
        if watching.done() and not record.dropped:
            record.disconnected_at = time.monotonic()
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            return False
        watching.cancel()  # a pending read consumes nothing: the next request is intact
        await asyncio.gather(watching, return_exceptions=True)
        try:
            return sending.result()
        except ConnectionError:
            if not record.dropped:
                record.disconnected_at = record.disconnected_at or time.monotonic()
            return False

    async def _stream(self, record: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        reply, body = record.reply, record.body
        tokens = list(reply.tokens) if reply.tokens is not None else _TOKEN.findall(
            f"Echo: {record.last_user_message}")
        chunk = _ChunkMaker(str(body.get("model", DEFAULT_MODEL)),
                            bool((body.get("stream_options") or {}).get("include_usage")))
        if reply.silent:
            await _stall(writer, None)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                     b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        await _send_event(writer, chunk.delta({"role": "assistant", "content": ""}))
        for index, token in enumerate(tokens):
            if index in (reply.drop_after, reply.stall_after, reply.error_after, reply.giant_line_after):
                break
            if reply.token_delay_s:
                await asyncio.sleep(reply.token_delay_s)
            await _send_event(writer, chunk.delta({"content": token}))
            record.tokens_sent += 1
            record.last_token_at = time.monotonic()
        if reply.drop_after is not None and record.tokens_sent == reply.drop_after:
            record.dropped = True
            writer.transport.abort()  # mid-body, no terminating chunk: a dropped connection
            raise ConnectionResetError("dropped on purpose")
        if reply.stall_after is not None and record.tokens_sent == reply.stall_after:
            if reply.trickle_s:
                await _trickle(writer, record, chunk.delta({"content": "never finished"}), reply.trickle_s)
            await _stall(writer, reply.keepalive_s)
        if reply.giant_line_after is not None and record.tokens_sent == reply.giant_line_after:
            await _send_giant_line(writer, record, reply.giant_line_bytes)
        if reply.error_after is not None and record.tokens_sent == reply.error_after:
            await _send_event(writer, json.dumps(_error_body("The server had an error while processing "
                                                             "your request.", "server_error")).encode())
        else:
            await _send_event(writer, chunk.finish(reply.finish_reason))
            if chunk.include_usage:
                prompt = sum(len(str(m.get("content", "")).split()) for m in record.messages)
                await _send_event(writer, chunk.usage(prompt, record.tokens_sent))
        await _send_event(writer, b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        record.completed = True
        return True


class _ChunkMaker:
    """``chat.completion.chunk`` objects of one completion, as OpenAI writes them."""

    def __init__(self, model: str, include_usage: bool):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                 "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return json.dumps(chunk, separators=(",", ":")).encode()

    def delta(self, delta: dict[str, Any]) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def finish(self, reason: str) -> bytes:
        return self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._chunk([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                      "total_tokens": prompt_tokens + completion_tokens})


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _send_event(writer: asyncio.StreamWriter, data: bytes) -> None:
    frame = b"data: " + data + b"\n\n"
    writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
    await writer.drain()


async def _stall(writer: asyncio.StreamWriter, keepalive_s: float | None) -> None:
    deadline = time.monotonic() + MAX_STALL_S
    while time.monotonic() < deadline:
        await asyncio.sleep(min(keepalive_s or MAX_STALL_S, deadline - time.monotonic()))
        if keepalive_s:
            comment = b": keepalive\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(comment), comment))
            await writer.drain()


async def _trickle(writer: asyncio.StreamWriter, record: RecordedRequest, event: bytes,
                   interval_s: float) -> None:
    """The start of an event one byte at a time (each its own HTTP chunk), never its end."""
    line = b"data: " + event
    deadline = time.monotonic() + MAX_STALL_S
    while time.monotonic() < deadline:
        byte = line[record.trickled_bytes % len(line):][:1]
        writer.write(b"1\r\n%s\r\n" % byte)
        await writer.drain()
        record.trickled_bytes += 1
        await asyncio.sleep(interval_s)


GIANT_PIECE_BYTES = 64 * 1024


async def _send_giant_line(writer: asyncio.StreamWriter, record: RecordedRequest, size_bytes: int) -> None:
    """``data: xxxx…`` of ``size_bytes`` and its blank line, as one HTTP chunk written in pieces."""
    frame_bytes = size_bytes + 2
    writer.write(b"%x\r\ndata: " % frame_bytes)
    record.giant_bytes_sent = 6
    piece = b"x" * GIANT_PIECE_BYTES
    while record.giant_bytes_sent < size_bytes:
        part = piece[:size_bytes - record.giant_bytes_sent]
        writer.write(part)
        await writer.drain()
        record.giant_bytes_sent += len(part)
    writer.write(b"\n\n\r\n")
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(payload)}\r\n{extra}\r\n".encode() + payload)
    await writer.drain()


def _error_body(message: str, type_: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}

__all__ = ["OpenAIUpstream", "RecordedRequest", "Reply"]
