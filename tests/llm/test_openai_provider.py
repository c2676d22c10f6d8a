"""The OpenAI-compatible provider against the loopback upstream, in process."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx2
import pytest

from llm.base import Chunk, ModelError, Take
from llm.openai_provider import MAX_LINE_BYTES, OpenAIProvider, SSEParser, _retry_after_s, _sse_data
from settings import Settings
from tests.support.openai_upstream import OpenAIUpstream, Reply
from tests.support.waiting import async_wait_until

KEY = "sk-unit-test-key-abcdef0123456789"
MODEL = "unit-model"
RETRIES = 2
STALL_S = 0.5
# How much later than the stall limit a stalled answer may end on a busy machine.
SLACK_S = 0.6


# Every provider test runs on each request path: the fast path's (the lean transport, sent
# directly), the SDK's (``CHIME_FAST_PATH=0``), and the fast path with the body pushed to a
# ``take`` as a generation gives it (``pushed``): requests, refusals, failures and the chunks
# read the same.
_fast_path = True
_pushed = False
REFUSE_EVERY = 3  # the pushed path's take refuses every third text chunk: the task yields it and what follows


@pytest.fixture(autouse=True, params=["direct", "sdk", "pushed"])
def request_path(request: pytest.FixtureRequest) -> Iterator[None]:
    global _fast_path, _pushed
    _fast_path, _pushed = request.param != "sdk", request.param == "pushed"
    yield
    _fast_path, _pushed = True, False


def taker(chunks: list[Chunk]) -> Take | None:
    """On the pushed path, a take that keeps text chunks in ``chunks`` (as the generation appends
    them) but refuses every ``REFUSE_EVERY``-th, and anything else, as the generation does."""
    if not _pushed:
        return None
    offered = 0

    def take(chunk: Chunk) -> bool:
        nonlocal offered
        if not chunk.content or chunk.usage is not None or chunk.finish_reason is not None:
            return False
        offered += 1
        if offered % REFUSE_EVERY == 0:
            return False
        chunks.append(chunk)
        return True

    return take


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(api_key=KEY, models=[MODEL]) as server:
        yield server


def provider_for(upstream: OpenAIUpstream, **overrides: object) -> OpenAIProvider:
    values: dict[str, object] = dict(openai_base_url=upstream.url, openai_api_key=KEY, model=MODEL,
                                     model_retries=RETRIES, model_retry_base_s=0.01, model_stall_s=STALL_S,
                                     model_connect_timeout_s=2.0, fast_path=_fast_path)
    values.update(overrides)
    return OpenAIProvider(Settings(**values))  # type: ignore[arg-type]


async def collect(provider: OpenAIProvider, message: str) -> tuple[list[Chunk], ModelError | None]:
    chunks: list[Chunk] = []
    try:
        async for chunk in provider.stream([{"role": "user", "content": message}], take=taker(chunks)):
            chunks.append(chunk)
    except ModelError as exc:
        return chunks, exc
    finally:
        await provider.close()
    return chunks, None


def text(chunks: list[Chunk]) -> str:
    return "".join(c.content for c in chunks)


async def test_a_streamed_answer_becomes_chunks_with_usage_and_finish_reason(upstream: OpenAIUpstream) -> None:
    upstream.when("hello", Reply(tokens=["Hi", " there", "!"], finish_reason="stop"))
    chunks, error = await collect(provider_for(upstream), "hello")
    assert error is None
    assert [c.content for c in chunks if c.content] == ["Hi", " there", "!"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [c.usage for c in chunks if c.usage] == [{"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}]
    [request] = upstream.requests
    assert "temperature" not in request.body and "max_tokens" not in request.body


async def test_a_pushed_body_gives_its_text_to_take_without_yielding_it(upstream: OpenAIUpstream) -> None:
    upstream.when("push", Reply(tokens=["a ", "b ", "c "], finish_reason="stop"))
    provider = provider_for(upstream, fast_path=True)
    taken: list[str] = []

    def take(chunk: Chunk) -> bool:
        if not chunk.content or chunk.finish_reason is not None or chunk.usage is not None:
            return False
        taken.append(chunk.content)
        return True

    for _ in range(2):
        taken.clear()
        yielded = [chunk async for chunk in provider.stream([{"role": "user", "content": "push"}], take=take)]
        assert taken == ["a ", "b ", "c "]
        assert not any(chunk.content for chunk in yielded)  # none of the text woke the reader's task
        assert [chunk.finish_reason for chunk in yielded if chunk.finish_reason] == ["stop"]
        assert [chunk.usage for chunk in yielded if chunk.usage]
    await provider.close()


async def test_the_next_answer_reuses_the_connection_of_a_finished_one(upstream: OpenAIUpstream) -> None:
    upstream.when("again", Reply(tokens=["a ", "b "]))  # its [DONE] and the body's end are written apart
    provider = provider_for(upstream, fast_path=True)
    assert provider._direct is not None
    idle = provider._direct._idle
    kept = []
    for _ in range(3):
        chunks: list[Chunk] = []
        async for chunk in provider.stream([{"role": "user", "content": "again"}], take=taker(chunks)):
            chunks.append(chunk)
        assert text(chunks) == "a b "
        await async_wait_until(lambda: sum(map(len, idle.values())) == 1, 5, "the connection to be kept")
        kept.append(next(iter(idle.values()))[0])
    assert kept[0] is kept[1] is kept[2]
    await provider.close()


@pytest.mark.parametrize("fast_path", [True, False])
async def test_the_body_is_read_the_same_with_the_fast_path_off(upstream: OpenAIUpstream, fast_path: bool) -> None:
    upstream.when("hello", Reply(tokens=["Hi", " there", "!"], finish_reason="stop"))
    provider = provider_for(upstream, fast_path=fast_path)
    assert provider.unwrap_body is fast_path  # off: httpx2's private stream is never touched
    chunks, error = await collect(provider, "hello")
    assert error is None and text(chunks) == "Hi there!"


async def test_a_server_without_a_key_gets_a_placeholder_bearer(upstream: OpenAIUpstream) -> None:
    with OpenAIUpstream(models=[MODEL]) as keyless:
        chunks, error = await collect(provider_for(keyless, openai_api_key=None), "hi")
        assert error is None and text(chunks) == "Echo: hi"
        assert keyless.requests[0].headers["authorization"] == "Bearer not-needed"


@pytest.mark.parametrize("first", [Reply.error(429, retry_after="0"), Reply.error(500), Reply.error(502),
                                   Reply.text("lost", drop_after=0)])
async def test_failures_before_the_first_token_are_retried(upstream: OpenAIUpstream, first: Reply) -> None:
    upstream.when("again", first, Reply.text("recovered"))
    chunks, error = await collect(provider_for(upstream), "again")
    assert error is None and text(chunks) == "recovered"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("reply, code", [(Reply.error(500), "model_error"),
                                         (Reply.error(429, retry_after="0"), "rate_limited"),
                                         (Reply.text("lost", drop_after=0), "model_unreachable")])
async def test_retries_are_bounded(upstream: OpenAIUpstream, reply: Reply, code: str) -> None:
    upstream.when("always", reply)
    chunks, error = await collect(provider_for(upstream), "always")
    assert error is not None and error.code == code and not chunks
    assert len(upstream.requests) == 1 + RETRIES


@pytest.mark.parametrize("reply, code", [(Reply.error(401), "bad_api_key"), (Reply.error(403), "bad_api_key"),
                                         (Reply.error(404), "model_not_found"), (Reply.error(400), "model_error"),
                                         (Reply.error(429, retry_after="3600"), "rate_limited")])
async def test_final_answers_fail_at_once(upstream: OpenAIUpstream, reply: Reply, code: str) -> None:
    upstream.when("once", reply)
    _, error = await collect(provider_for(upstream), "once")
    assert error is not None and error.code == code
    assert len(upstream.requests) == 1


async def test_retry_after_is_honoured(upstream: OpenAIUpstream) -> None:
    upstream.when("patience", Reply.error(429, retry_after_ms="150"), Reply.text("ok"))
    _, error = await collect(provider_for(upstream, model_retry_base_s=0.001), "patience")
    assert error is None
    first, second = upstream.requests
    assert second.received_at - first.received_at >= 0.15


async def test_the_sdks_own_retries_are_off(upstream: OpenAIUpstream) -> None:
    upstream.when("count", Reply.error(500))
    _, error = await collect(provider_for(upstream, model_retries=0), "count")
    assert error is not None and len(upstream.requests) == 1


async def test_the_api_key_never_reaches_the_message(upstream: OpenAIUpstream) -> None:
    upstream.when("leak-401", Reply.error(401, f"Incorrect API key provided: {KEY}"))
    upstream.when("leak-400", Reply.error(400, f"Bad request for key {KEY}: context too long"))
    _, unauthorised = await collect(provider_for(upstream), "leak-401")
    _, bad = await collect(provider_for(upstream), "leak-400")
    assert unauthorised is not None and KEY not in unauthorised.message
    assert bad is not None and KEY not in bad.message and "context too long" in bad.message


async def test_a_wrong_model_name_is_model_not_found(upstream: OpenAIUpstream) -> None:
    _, error = await collect(provider_for(upstream, model="no-such-model"), "hi")
    assert error is not None and error.code == "model_not_found" and "no-such-model" in error.message


async def test_failures_after_the_first_token_are_not_retried(upstream: OpenAIUpstream) -> None:
    upstream.when("midway", Reply.text("a b c d", drop_after=2))
    chunks, error = await collect(provider_for(upstream), "midway")
    assert text(chunks) == "a b " and error is not None and error.code == "model_unreachable"
    assert "kept" in error.message and len(upstream.requests) == 1


async def test_keepalive_comments_do_not_hide_a_stall(upstream: OpenAIUpstream) -> None:
    upstream.when("chatty", Reply.text("a b c", stall_after=1, keepalive_s=0.05))
    chunks, error = await collect(provider_for(upstream), "chatty")
    assert text(chunks) == "a " and error is not None and error.code == "model_stalled"


# ---- slow or silent models: CHIME_MODEL_STALL_S bounds the wait for a complete event ----


async def timed_collect(provider: OpenAIProvider, message: str) -> tuple[list[Chunk], ModelError | None, float]:
    """``collect`` with how long it took; a stream that does not end fails the test within 5 s."""
    started = time.monotonic()
    chunks, error = await asyncio.wait_for(collect(provider, message), 5)
    return chunks, error, time.monotonic() - started


def test_a_failure_while_closing_a_stalled_request_still_reads_as_the_stall(upstream: OpenAIUpstream) -> None:
    provider = provider_for(upstream)
    stalled = provider._stalled()
    try:
        try:
            raise stalled
        except ModelError:
            raise AttributeError("closing the response failed")  # noqa: B904  (as __aexit__ replaces it)
    except AttributeError as closing:
        attempt = provider._classify(closing)
    assert attempt.error is stalled and attempt.error.code == "model_stalled"
    assert provider._classify(AttributeError("alone")).error.code == "model_error"


@pytest.mark.parametrize("tokens_first", [0, 1])
async def test_an_unfinished_line_trickling_in_ends_with_model_stalled(upstream: OpenAIUpstream,
                                                                       tokens_first: int) -> None:
    upstream.when("trickle", Reply.text("a b c", stall_after=tokens_first, trickle_s=0.05))
    chunks, error, elapsed_s = await timed_collect(provider_for(upstream), "trickle")
    assert error is not None and error.code == "model_stalled", error
    assert "CHIME_MODEL_STALL_S" in error.message
    assert text(chunks) == "a " * tokens_first
    [request] = upstream.requests  # the stall spent the budget: no retry
    assert request.trickled_bytes >= 5  # bytes did arrive during the wait
    assert STALL_S <= elapsed_s < STALL_S + SLACK_S


async def test_keepalive_comments_alone_end_with_model_stalled_without_retries(upstream: OpenAIUpstream) -> None:
    upstream.when("comments", Reply.text("a b", stall_after=0, keepalive_s=0.05))
    chunks, error, elapsed_s = await timed_collect(provider_for(upstream), "comments")
    assert error is not None and error.code == "model_stalled" and not chunks
    assert len(upstream.requests) == 1
    assert STALL_S <= elapsed_s < STALL_S + SLACK_S


@pytest.mark.parametrize("reply", [Reply(silent=True), Reply.text("slow", stall_after=0)], ids=["no-head", "no-event"])
async def test_a_hanging_model_ends_within_the_stall_limit_whatever_the_retries(upstream: OpenAIUpstream,
                                                                               reply: Reply) -> None:
    upstream.when("hang", reply)
    _, error, elapsed_s = await timed_collect(provider_for(upstream, model_retries=5), "hang")
    assert error is not None and error.code == "model_stalled"
    assert len(upstream.requests) == 1
    assert STALL_S <= elapsed_s < STALL_S + SLACK_S


async def test_retries_are_made_only_within_the_stall_budget(upstream: OpenAIUpstream) -> None:
    upstream.when("later", Reply.error(429, retry_after="1"), Reply.text("too late"))
    _, error, elapsed_s = await timed_collect(provider_for(upstream), "later")
    assert error is not None and error.code == "rate_limited"  # the real cause, not a wait for nothing
    assert len(upstream.requests) == 1 and elapsed_s < STALL_S


async def test_a_slow_but_steady_model_is_not_stalled(upstream: OpenAIUpstream) -> None:
    # Each token comes well within the limit, the whole answer takes several times it.
    upstream.when("steady", Reply(tokens=["t "] * 6, token_delay_s=STALL_S * 0.4))
    chunks, error, elapsed_s = await timed_collect(provider_for(upstream), "steady")
    assert error is None and text(chunks) == "t " * 6
    assert elapsed_s > 2 * STALL_S


async def test_a_line_over_one_mebibyte_is_model_error_without_holding_it(upstream: OpenAIUpstream) -> None:
    upstream.when("giant", Reply.giant_line(40 * 1024 * 1024, after=1))
    tracemalloc.start()
    try:
        chunks, error, elapsed_s = await timed_collect(provider_for(upstream), "giant")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error is not None and error.code == "model_error" and "line" in error.message
    assert text(chunks) == "one "
    assert peak_bytes < 8 * MAX_LINE_BYTES, f"{peak_bytes / 2**20:.1f} MiB held"
    request = await async_wait_until(lambda: upstream.requests[0] if upstream.requests[0].disconnected_at else None,
                                     5, "the upstream to see the disconnect")
    assert len(upstream.requests) == 1 and not request.completed
    assert request.giant_bytes_sent < 40 * 1024 * 1024


async def test_a_giant_line_before_the_first_token_is_not_retried(upstream: OpenAIUpstream) -> None:
    upstream.when("giant-first", Reply.giant_line(3 * MAX_LINE_BYTES, after=0))
    chunks, error, _ = await timed_collect(provider_for(upstream), "giant-first")
    assert error is not None and error.code == "model_error" and "line" in error.message and not chunks
    assert len(upstream.requests) == 1


async def test_an_error_inside_the_stream_is_reported(upstream: OpenAIUpstream) -> None:
    upstream.when("inner", Reply.text("a b c", error_after=1))
    chunks, error = await collect(provider_for(upstream), "inner")
    assert text(chunks) == "a " and error is not None and error.code == "model_error"


async def test_closing_the_stream_closes_the_upstream_connection(upstream: OpenAIUpstream) -> None:
    upstream.when("long", Reply(tokens=["x "] * 1000, token_delay_s=0.01))
    provider = provider_for(upstream)
    stream = provider.stream([{"role": "user", "content": "long"}], take=taker([]))
    async for chunk in stream:
        if chunk.content:
            break
    closed_at = time.monotonic()
    await stream.aclose()  # type: ignore[attr-defined]
    request = await async_wait_until(lambda: upstream.requests[0] if upstream.requests[0].disconnected_at else None,
                                     5, "the upstream to see the disconnect")
    assert not request.completed and request.disconnected_at is not None
    print(f"\naclose → upstream disconnect: {(request.disconnected_at - closed_at) * 1000:.1f} ms")
    await provider.close()


async def test_cancelling_the_reader_closes_the_upstream_connection(upstream: OpenAIUpstream) -> None:
    upstream.when("long", Reply(tokens=["x "] * 1000, token_delay_s=0.01))
    provider = provider_for(upstream)
    got_one = asyncio.Event()

    async def read() -> None:
        async for _chunk in provider.stream([{"role": "user", "content": "long"}], take=taker([])):
            got_one.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(got_one.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await async_wait_until(lambda: upstream.requests[0].disconnected_at, 5, "the upstream to see the disconnect")
    await provider.close()


async def test_an_unreachable_endpoint_is_model_unreachable() -> None:
    from tests.support.server import free_port

    provider = OpenAIProvider(Settings(openai_base_url=f"http://127.0.0.1:{free_port()}/v1", openai_api_key=KEY,
                                       model_retries=1, model_retry_base_s=0.01))
    _, error = await collect(provider, "anyone?")
    assert error is not None and error.code == "model_unreachable" and KEY not in error.message


# ---- the pieces -------------------------------------------------------------------


async def pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_sse_data_handles_split_lines_crlf_comments_and_multi_line_data() -> None:
    body = pieces(b"data: {\"a\"", b":1}\r\n\r\n: keep", b"alive\n\ndata: one\ndata:two\n\nevent: x\ndata: [DONE]")
    assert [d async for d in _sse_data(body)] == [b'{"a":1}', b"", b"one\ntwo", b"[DONE]"]


PIECE_BYTES = 64 * 1024


def test_the_parser_refuses_an_unfinished_line_once_it_passes_one_mebibyte() -> None:
    parser = SSEParser()
    fed = len(b"data: ")
    parser.feed(b"data: ")
    with pytest.raises(ModelError) as refused:
        while fed < 40 * MAX_LINE_BYTES:
            fed += PIECE_BYTES
            parser.feed(b"x" * PIECE_BYTES)
            assert parser.held <= MAX_LINE_BYTES
    assert refused.value.code == "model_error" and not refused.value.retryable
    assert MAX_LINE_BYTES < fed <= MAX_LINE_BYTES + PIECE_BYTES


@pytest.mark.parametrize("body", [
    b"data: " + b"x" * MAX_LINE_BYTES + b"\n\n",  # a whole line in one piece
    b"".join(b"data: " + b"y" * 1000 + b"\n" for _ in range(1100)) + b"\n",  # one event of many lines
    b": " + b"z" * MAX_LINE_BYTES + b"\n",  # a comment is a line too
], ids=["line", "event", "comment"])
def test_the_parser_refuses_a_line_or_event_over_one_mebibyte(body: bytes) -> None:
    with pytest.raises(ModelError) as refused:
        SSEParser().feed(body)
    assert refused.value.code == "model_error"


def test_the_parser_takes_a_line_of_one_mebibyte_in_pieces_and_not_a_byte_more() -> None:
    line = b"data: " + b"x" * (MAX_LINE_BYTES - 6)
    parser = SSEParser()
    for start in range(0, len(line), PIECE_BYTES):
        assert parser.feed(line[start:start + PIECE_BYTES]) == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n\n") == [line[6:]]
    assert parser.held == 0
    with pytest.raises(ModelError):
        parser.feed(line + b"x")
    with pytest.raises(ModelError):
        SSEParser().feed(line + b"x\r\n")


def test_retry_after_reads_seconds_milliseconds_and_dates() -> None:
    def response(**headers: str) -> httpx2.Response:
        return httpx2.Response(429, headers={k.replace("_", "-"): v for k, v in headers.items()})

    assert _retry_after_s(response(retry_after="2")) == 2.0
    assert _retry_after_s(response(retry_after_ms="250")) == 0.25
    assert _retry_after_s(response()) is None
    assert _retry_after_s(response(retry_after="soon")) is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (_retry_after_s(response(retry_after=later)) or 0) <= 30


def test_backoff_is_bounded_and_waits_at_least_what_upstream_asked() -> None:
    provider = OpenAIProvider(Settings(openai_base_url="http://127.0.0.1:9/v1", model_retry_base_s=1.0))
    assert all((backoff_s := provider._backoff_s(attempt, None)) is not None and backoff_s <= 8.0
               for attempt in range(20))
    assert provider._backoff_s(0, 5.0) == 5.0
    assert provider._backoff_s(0, 3600.0) is None
