"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp server), streamed.

The official client (``openai.AsyncOpenAI``) gives the URL, the headers
(authentication included) and the timeouts; the body is read raw and each
``data:`` line is parsed with ``orjson``: the SDK's typed chunk objects cost
about 100 µs of CPU a token. On the fast path (``CHIME_FAST_PATH``, with the
lean transport) the request itself goes straight to the transport with those
headers and an ``orjson`` body: the SDK's request building (its body transforms,
options model, retry loop) cost 0.5 of the 0.75 ms of CPU that starting an
answer took. Off it, the SDK sends the request (``with_streaming_response``).

Failures before the first token (429, 5xx, timeouts, refused or dropped
connections) are retried with a bounded, jittered backoff that honours
``Retry-After``; the SDK's own retries are off so the two never multiply.
401/403/404 fail at once.

``CHIME_MODEL_STALL_S`` bounds the wait for each complete ``data:`` event that
carries something (comments, partial lines and empty deltas do not count),
counted from the previous one or from the start of the answer, across retries:
connecting, waiting for the response and backing off all spend the same
budget. A line or an event over ``MAX_LINE_BYTES`` ends the answer with
``model_error`` as soon as it passes that size.

Every failure reaches the caller as a ``ModelError`` whose message a person
can act on and never carries the API key.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson

from llm.base import NO_OPTIONS, Chunk, ModelError, ModelOptions, Take
from llm.http11 import LeanBody, LeanTransport
from retry_after import parse_retry_after
from settings import Settings

log = logging.getLogger("chime.model")

# Servers without authentication (Ollama, llama.cpp) still get a bearer header.
PLACEHOLDER_API_KEY = "not-needed"
# Backoff never waits longer than this between two attempts.
MAX_BACKOFF_S = 8.0
# A Retry-After longer than this is not waited for: the user hears "rate limited" now.
MAX_RETRY_AFTER_S = 30.0
# Upstream error text shown to the user is cut to this many characters.
MAX_UPSTREAM_MESSAGE_CHARS = 300
# Sending the request body and waiting for a pooled connection are bounded too.
WRITE_TIMEOUT_S = 30.0

DONE_SENTINEL = b"[DONE]"
# A line from the model longer than this, or one event's data, ends the answer:
# nothing the model legitimately sends is this long, and it is never buffered further.
MAX_LINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _Attempt:
    """Whether a failed attempt may be retried, and how long upstream asked us to wait."""

    error: ModelError
    retry_after_s: float | None = None


class OpenAIProvider:
    """Streams chat completions from an OpenAI-compatible endpoint as ``Chunk``s."""

    name = "openai"

    def __init__(self, settings: Settings, *, http_client: httpx2.AsyncClient | None = None):
        self.model = settings.model_name
        self.temperature = settings.temperature
        self.max_tokens = settings.max_tokens
        self.stall_s = settings.model_stall_s
        self.retries = settings.model_retries
        self.retry_base_s = settings.model_retry_base_s
        self._secret = settings.openai_api_key or ""
        # httpx2's private ``stream._stream`` is read (after a type check) only on the fast path.
        self.unwrap_body = settings.fast_path
        transport = LeanTransport()
        timeout = httpx2.Timeout(connect=settings.model_connect_timeout_s, read=settings.model_stall_s,
                                 write=WRITE_TIMEOUT_S, pool=settings.model_connect_timeout_s)
        self.client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or PLACEHOLDER_API_KEY,
            base_url=settings.openai_base_url,
            max_retries=0,  # our own bounded retries below; the SDK's would multiply them
            # The stall limit itself is a deadline kept by ``stream``; this read timeout only
            # backs it up for bodies the lean transport does not read.
            timeout=timeout,
            http_client=http_client or openai.DefaultAsyncHttpxClient(transport=transport),
        )
        # The fast path's request: the SDK's own URL, headers and timeouts, sent by the lean transport.
        self._direct = transport if settings.fast_path and http_client is None else None
        base_url = self.client.base_url  # the SDK keeps it ending in "/"
        self._url = base_url.copy_with(raw_path=base_url.raw_path + b"chat/completions")
        headers = {**self.client.auth_headers, **self.client.default_headers}
        self._headers = {name: value for name, value in headers.items()
                         if isinstance(value, str)}  # (the SDK's "omit" markers are not headers)
        self._timeouts = timeout.as_dict()

    async def close(self) -> None:
        await self.client.close()

    async def stream(self, messages: list[dict[str, str]], options: ModelOptions = NO_OPTIONS, *,
                     take: Take | None = None) -> AsyncIterator[Chunk]:
        """Stream the answer; retry only while nothing has been yielded or taken.

        Closing this iterator (or cancelling its consumer) closes the HTTP
        response, which closes the upstream connection. Retries happen only
        within the stall budget of the answer's start: a retry that could not
        begin before it runs out is not made. With ``take``, chunks of a body the
        lean transport pushes go to it first, as they arrive (``llm.base.Take``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_s  # nothing has arrived yet: every attempt shares this
        attempt = 0
        taken = _Taken(take) if take is not None else None
        while True:
            produced = False
            try:
                async for chunk in self._stream_once(messages, options, deadline, taken):
                    produced = True
                    yield chunk
                return
            except ModelError as exc:
                failure = _Attempt(exc)
            except _Refused as refused:
                failure = refused.attempt
            except Exception as exc:  # the SDK's and the HTTP layer's errors, classified below
                failure = self._classify(exc)
            if produced or (taken is not None and taken.any):
                raise self._final(_mid_answer(failure.error))
            if not failure.error.retryable or attempt >= self.retries:
                raise self._final(failure.error)
            delay_s = self._backoff_s(attempt, failure.retry_after_s)
            if delay_s is None or loop.time() + delay_s >= deadline:
                raise self._final(failure.error)
            attempt += 1
            log.warning("model attempt %d failed (%s); retrying in %.2fs", attempt, failure.error.code, delay_s)
            await asyncio.sleep(delay_s)

    # ---- one request -----------------------------------------------------

    async def _stream_once(self, messages: list[dict[str, str]], options: ModelOptions,
                           deadline: float, taken: _Taken | None = None) -> AsyncIterator[Chunk]:
        """One request. ``deadline`` (event-loop time) ends it with ``model_stalled`` unless a
        complete event carrying something arrives first; each one moves it ``stall_s`` on."""
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as request:
            scope = asyncio.timeout_at(deadline)  # connecting, sending, the response head: one timer
            try:
                async with scope:
                    response = await request.enter_async_context(self._request(messages, options))
            except TimeoutError:
                if not scope.expired():
                    raise
                raise self._stalled() from None
            lean, pieces = _body_bytes(response) if self.unwrap_body else (None, response.aiter_bytes())
            if lean is not None:
                lean.deadline = deadline  # the transport's watchdog ends a read waiting past it
                if taken is not None and lean.pushable and _identity(response):
                    async for refused in self._pushed(lean, taken):
                        yield refused
                    return
            stall_s = self.stall_s
            finished = False
            parser = SSEParser()
            async for piece in pieces:
                progressed = False
                for payload in parser.feed(piece):
                    if payload == DONE_SENTINEL:
                        if lean is not None:
                            lean.only_end_left = True  # its connection may serve the next answer
                        return
                    chunk = self._chunk(payload) if payload else None
                    if chunk is None:
                        continue  # comments and empty deltas are not progress
                    finished = finished or chunk.finish_reason is not None
                    progressed = True
                    yield chunk
                if progressed:
                    deadline = loop.time() + stall_s
                    if lean is not None:
                        lean.deadline = deadline
                elif loop.time() >= deadline:
                    raise self._stalled()  # bytes keep coming, none of them a complete event
            async for last in self._body_ended(parser, finished):
                yield last

    async def _pushed(self, body: LeanBody, taken: _Taken) -> AsyncIterator[Chunk]:
        """The body pushed (``_Pusher``): what ``take`` refuses, and what ends the answer, is
        yielded from here, in order; the rest never wakes this task."""
        pusher = _Pusher(self, taken, asyncio.get_running_loop(), body)
        while True:
            await body.push(pusher.feed)
            while pusher.held:
                yield pusher.held.popleft()
            if pusher.failure is not None:
                raise pusher.failure
            if pusher.done:
                body.only_end_left = True  # its connection may serve the next answer
                return
            if body.complete:
                break
        async for last in self._body_ended(pusher.parser, pusher.finished):
            yield last

    async def _body_ended(self, parser: SSEParser, finished: bool) -> AsyncIterator[Chunk]:
        """The body ended without ``[DONE]``: what an unterminated last event holds, then
        ``model_unreachable`` unless a finish reason (``finished``, or in that event) came."""
        for payload in parser.end():
            if payload == DONE_SENTINEL:
                return
            chunk = self._chunk(payload)
            if chunk is not None:
                finished = finished or chunk.finish_reason is not None
                yield chunk
        if not finished:
            raise ModelError("model_unreachable", "The connection to the model ended before the answer "
                             "was complete.", retryable=True)

    @asynccontextmanager
    async def _request(self, messages: list[dict[str, str]], options: ModelOptions
                       ) -> AsyncIterator[httpx2.Response]:
        """The streamed response (not yet read), with the answer's own temperature and token limit
        where its client gave them. A refusal (4xx, 5xx) raises ``_Refused`` or the SDK's error."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        temperature = options.temperature if options.temperature is not None else self.temperature
        max_tokens = options.max_tokens if options.max_tokens is not None else self.max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if self._direct is None:
            async with self.client.chat.completions.with_streaming_response.create(**body) as sdk_response:
                yield sdk_response.http_response
            return
        request = httpx2.Request("POST", self._url, headers=self._headers, content=orjson.dumps(body),
                                 extensions={"timeout": self._timeouts})
        response = await self._direct.handle_async_request(request)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise _Refused(self._status_failure(response.status_code, response, _error_body(response)))
            yield response
        finally:
            await response.aclose()

    def _chunk(self, payload: bytes) -> Chunk | None:
        """One ``data:`` payload as a Chunk; None when it carries nothing for the channel."""
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ModelError("model_error", "The model sent a reply Chime could not read.") from None
        if not isinstance(data, dict):
            raise ModelError("model_error", "The model sent a reply Chime could not read.")
        if "error" in data:
            raise ModelError("model_error", self._upstream_message(data["error"], "The model failed mid-answer."))
        content = ""
        finish_reason = None
        choices = data.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            content = delta.get("content") or ""
            finish_reason = choice.get("finish_reason")
        usage = data.get("usage")
        if usage is not None:
            usage = _usage(usage)
        if not content and usage is None and finish_reason is None:
            return None
        return Chunk(content=content, usage=usage, finish_reason=finish_reason)

    # ---- failures --------------------------------------------------------

    def _classify(self, exc: Exception) -> _Attempt:
        """Map an SDK or HTTP-layer exception to what the user reads, and whether to retry."""
        if isinstance(exc, openai.APIStatusError):
            return self._status_failure(exc.status_code, exc.response, exc.body)
        if isinstance(exc, openai.APITimeoutError) or isinstance(exc, httpx2.TimeoutException):
            cause = exc.__cause__ if isinstance(exc, openai.APITimeoutError) else exc
            if isinstance(cause, (httpx2.ConnectTimeout, httpx2.PoolTimeout)):
                return _Attempt(ModelError("model_unreachable", "The model did not accept a connection in "
                                           "time.", retryable=True))
            return _Attempt(self._stalled())
        if isinstance(exc, (openai.APIConnectionError, httpx2.TransportError)):
            return _Attempt(ModelError("model_unreachable", "Could not reach the model: the connection "
                                       "failed or broke off.", retryable=True))
        if isinstance(exc, openai.APIError):
            return _Attempt(ModelError("model_error", self._upstream_message(exc.body, "The model failed.")))
        if isinstance(exc.__context__, ModelError):
            # Closing the request failed while it was ending for a reason of its own (a stall, a
            # line too long): that reason is what the user reads; the closing failure is logged.
            log.warning("closing a failed model request failed too", exc_info=exc)
            return _Attempt(exc.__context__)
        log.error("unexpected failure talking to the model: %s", type(exc).__name__, exc_info=exc)
        return _Attempt(ModelError("model_error", "The model request failed."))

    def _status_failure(self, status: int, response: httpx2.Response, body: object) -> _Attempt:
        if status in (401, 403):
            return _Attempt(ModelError("bad_api_key", f"The model service refused the API key (HTTP {status}): "
                                       "check OPENAI_API_KEY."))
        if status == 404:
            return _Attempt(ModelError("model_not_found", f"The model {self.model!r} was not found at the "
                                       "configured endpoint: check CHIME_MODEL and OPENAI_BASE_URL."))
        if status == 429:
            return _Attempt(ModelError("rate_limited", "The model service is rate limiting requests: try "
                                       "again in a moment.", retryable=True), _retry_after_s(response))
        if status >= 500:
            return _Attempt(ModelError("model_error", f"The model service failed (HTTP {status}): try again "
                                       "later.", retryable=True), _retry_after_s(response))
        detail = self._upstream_message(body, "")
        message = f"The model rejected the request (HTTP {status})" + (f": {detail}" if detail else ".")
        return _Attempt(ModelError("model_error", message))

    def _upstream_message(self, body: object, fallback: str) -> str:
        """Upstream's own error text, cut short and with the API key blanked out."""
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
        text = body.get("message") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return fallback
        text = text.strip()[:MAX_UPSTREAM_MESSAGE_CHARS]
        return text.replace(self._secret, "***") if self._secret else text

    def _stalled(self) -> ModelError:
        return ModelError("model_stalled", f"The model sent nothing of the answer for {self.stall_s:g} s "
                          "(CHIME_MODEL_STALL_S), so Chime stopped waiting.", retryable=True)

    def _final(self, error: ModelError) -> ModelError:
        """The error as the channel will show it: no longer retryable, key-free."""
        message = error.message.replace(self._secret, "***") if self._secret else error.message
        return ModelError(error.code, message)

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Exponential backoff with jitter, at least what upstream asked; None: not worth waiting."""
        if retry_after_s is not None and retry_after_s > MAX_RETRY_AFTER_S:
            return None
        backoff_s = min(MAX_BACKOFF_S, self.retry_base_s * 2.0 ** attempt)
        backoff_s *= random.uniform(0.5, 1.0)  # spread out clients that failed together
        return max(backoff_s, retry_after_s or 0.0)


class _Taken:
    """A stream's ``take``, and whether it took anything: then a failure is mid-answer, not retried."""

    __slots__ = ("take", "any")

    def __init__(self, take: Take):
        self.take = take
        self.any = False


class _Pusher:
    """The sink of a pushed body (``LeanBody.push``), run in the connection's callback: each
    complete event's chunk goes to ``take``; one it refuses is held, with every one after it,
    for the provider's task to yield, and so is what ends the answer (``[DONE]``, a failure).

    Events that carry something move the stall deadline on, as in the task's own loop; bytes
    that arrive past it without completing one end the answer as stalled."""

    __slots__ = ("provider", "taken", "take", "loop", "body", "parser", "held", "failure", "done", "finished")

    def __init__(self, provider: OpenAIProvider, taken: _Taken, loop: asyncio.AbstractEventLoop, body: LeanBody):
        self.provider = provider
        self.taken = taken
        self.take = taken.take
        self.loop = loop
        self.body = body
        self.parser = SSEParser()
        self.held: deque[Chunk] = deque()
        self.failure: ModelError | None = None
        self.done = False  # [DONE] arrived
        self.finished = False  # a finish reason arrived

    def feed(self, data: bytes) -> bool:
        """Take ``data``; False when the task must run (something is held, or the answer ended)."""
        try:
            payloads = self.parser.feed(data)
            progressed = False
            held = self.held
            for payload in payloads:
                if payload == DONE_SENTINEL:
                    self.done = True
                    break
                chunk = self.provider._chunk(payload) if payload else None
                if chunk is None:
                    continue  # comments and empty deltas are not progress
                progressed = True
                if chunk.finish_reason is not None:
                    self.finished = True
                if held or not self.take(chunk):
                    held.append(chunk)
                else:
                    self.taken.any = True
            if progressed:
                self.body.deadline = self.loop.time() + self.provider.stall_s
            elif self.loop.time() >= self.body.deadline:  # type: ignore[operator]
                raise self.provider._stalled()  # bytes keep coming, none of them a complete event
        except ModelError as exc:
            self.failure = exc
        return not (self.held or self.done or self.failure is not None)


class _Refused(Exception):
    """The model's endpoint answered with an error status (the fast path's request)."""

    def __init__(self, attempt: _Attempt):
        super().__init__(attempt.error.message)
        self.attempt = attempt


def _error_body(response: httpx2.Response) -> object:
    """An error response's JSON, as the SDK would give it (its text when it is not JSON)."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text


def _mid_answer(error: ModelError) -> ModelError:
    """A failure after part of the answer arrived: say that the part is kept."""
    if error.code == "model_unreachable":
        return ModelError(error.code, "The connection to the model broke off mid-answer; "
                          "the part that arrived is kept.")
    return error


def _usage(raw: object) -> dict[str, int] | None:
    if not isinstance(raw, dict):
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {key: int(raw.get(key) or 0) for key in keys}


def _retry_after_s(response: httpx2.Response) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), when given."""
    headers = response.headers
    if "retry-after-ms" in headers:
        milliseconds = parse_retry_after(headers["retry-after-ms"])
        return None if milliseconds is None else milliseconds / 1000
    return parse_retry_after(headers.get("retry-after"))


class SSEParser:
    """Server-sent events, fed in pieces: the ``data`` of each complete event, multi-line data joined.

    Comment lines give ``b""`` so the caller can notice a stream of keepalives.
    A line, or one event's data, over ``MAX_LINE_BYTES`` raises ``model_error``
    as soon as it passes that size, so the parser never holds much more.
    A plain class, not an async generator: a token's bytes are parsed without
    another generator to resume and suspend.
    """

    __slots__ = ("parts", "held", "data", "data_bytes")

    def __init__(self) -> None:
        self.parts: list[bytes] = []  # the unfinished last line, kept in pieces: no copy per piece
        self.held = 0
        self.data: list[bytes] = []
        self.data_bytes = 0  # counted only once an event has a second data line

    def feed(self, piece: bytes) -> list[bytes]:
        lines = piece.split(b"\n")
        rest = lines.pop()  # the start of a line still arriving (b"" after a newline)
        out: list[bytes] = []
        if lines:
            if self.parts:
                lines[0] = self._completed(lines[0])
            if len(piece) > MAX_LINE_BYTES and any(len(line.removesuffix(b"\r")) > MAX_LINE_BYTES
                                                   for line in lines):
                raise _too_long()
            data = self.data
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.startswith(b"data:"):
                    value = line[5:]
                    value = value[1:] if value.startswith(b" ") else value
                    if data:
                        self._count(data, value)
                    data.append(value)
                elif not line:
                    if data:
                        out.append(data[0] if len(data) == 1 else b"\n".join(data))
                        data.clear()
                elif line.startswith(b":"):
                    out.append(b"")
        if rest:
            self._hold(rest)
        return out

    def end(self) -> list[bytes]:
        """What an unterminated last event holds when the body ends."""
        last = b"".join(self.parts)
        self.parts.clear()
        self.held = 0
        if last.startswith(b"data:"):
            self.data.append(last[5:].lstrip(b" "))
        out = [b"\n".join(self.data)] if self.data else []
        self.data.clear()
        return out

    def _completed(self, last_part: bytes) -> bytes:
        """The held line, now that its last part and newline arrived."""
        parts = self.parts
        parts.append(last_part)
        line = b"".join(parts)
        parts.clear()
        self.held = 0
        if len(line.removesuffix(b"\r")) > MAX_LINE_BYTES:
            raise _too_long()
        return line

    def _hold(self, part: bytes) -> None:
        self.held += len(part)
        if self.held > MAX_LINE_BYTES and (self.held > MAX_LINE_BYTES + 1 or not part.endswith(b"\r")):
            raise _too_long()  # (one byte over may be the CR that ends the line)
        self.parts.append(part)

    def _count(self, data: list[bytes], value: bytes) -> None:
        if len(data) == 1:
            self.data_bytes = len(data[0])
        self.data_bytes += len(value)
        if self.data_bytes > MAX_LINE_BYTES:
            raise _too_long()


def _too_long() -> ModelError:
    return ModelError("model_error", f"The model sent a line or event longer than {MAX_LINE_BYTES // 1024} KiB; "
                      "Chime stopped reading the answer.")


async def _sse_data(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event in ``body`` (see ``SSEParser``)."""
    parser = SSEParser()
    async for piece in body:
        for data in parser.feed(piece):
            yield data
    for data in parser.end():
        yield data


def _identity(response: httpx2.Response) -> bool:
    """The body is sent as is (no content-encoding to undo)."""
    return response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")


def _body_bytes(response: httpx2.Response) -> tuple[LeanBody | None, AsyncIterator[bytes]]:
    """The lean transport's body (to give it a deadline), when it carries this response, and the
    decoded body. Uncompressed from ``LeanTransport``, its own stream is read directly:
    httpx's wrapping generators (decode, chunk, count, time) cost a resume each per token."""
    # The fast path's response carries it as is; through the client, httpx2 wraps it once, in a
    # private attribute: its absence or another type (a new httpx2, another transport) falls back
    # to the public iterator.
    stream = response.stream if isinstance(response.stream, LeanBody) else getattr(response.stream, "_stream", None)
    if not isinstance(stream, LeanBody):
        return None, response.aiter_bytes()
    return stream, stream.__aiter__() if _identity(response) else response.aiter_bytes()
