"""Reading a channel: SSE, WebSocket and JSON polling.

Every transport reads the same way (``subscribe``): it is an attached reader
for presence while it reads, through the one replay-then-live reader, and
differs from the others only in its encoder (``routes/encoders``) and in how
the bytes reach the client. ``stream_http`` serves any encoder as a streamed
HTTP response: a new streaming wire format needs an encoder and a route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sanic import Blueprint
from sanic.exceptions import WebsocketClosed
from sanic.response import HTTPResponse, empty

from channels.answers import ReadPoint
from channels.events import Event
from channels.hub import DirectWrite, Feed
from channels.presence import Reader
from channels.reader import replay_then_live
from channels.store import ChannelRecord
from errors import ApiError, domain_error
from routes import sanic_internals
from routes.auth import require_user, set_cookie
from routes.encoders import StreamEncoder, polling
from routes.encoders import sse as sse_wire
from routes.encoders import ws as ws_wire
from routes.params import bounded_number, non_negative_int, query_value
from routes.sanic_internals import Websocket
from routes.ws_limits import InboundGuard
from services import ChimeApp, ChimeRequest, Services

log = logging.getLogger("chime.streams")

bp = Blueprint("streams")

# WebSocket close codes (API.md): an ApiError's status maps onto 4000 + status.
WS_CLOSE_NORMAL = 1000
WS_CLOSE_GOING_AWAY = 1001

POLL_MAX_WAIT_S = 30.0

SendEvents = Callable[[list[Event]], Awaitable[None]]


@bp.before_server_start
async def use_sanic_internals(app: ChimeApp) -> None:
    """``CHIME_FAST_PATH``: the fast path, the flood guard's hook and the request deadline."""
    sanic_internals.configure(app.ctx.settings.fast_path)


def accepts_event_stream(request: ChimeRequest) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def owned_channel(request: ChimeRequest, channel_id: str, user_id: str) -> ChannelRecord:
    return await request.app.ctx.answers.answer_of(user_id, channel_id)


def resume_point(request: ChimeRequest) -> int:
    """``Last-Event-ID`` header, else ``last_event_id`` query; none means from the start."""
    header = request.headers.get("last-event-id")
    if header is not None:
        return non_negative_int(header, "Last-Event-ID") or 0
    return non_negative_int(query_value(request, "last_event_id"), "last_event_id") or 0


async def read_point(request: ChimeRequest, channel_id: str, user_id: str) -> ReadPoint:
    return await request.app.ctx.answers.read_point(user_id, channel_id)


def finished_at_or_before(record: ChannelRecord | ReadPoint, after: int) -> bool:
    return not record.running and after >= record.last_event_id


# ---- the one way to read a channel --------------------------------------------------

@dataclass(frozen=True, slots=True)
class Subscription:
    reader: Reader  # the presence entry: a WebSocket reports its own visibility through it
    batches: AsyncIterator[list[Event]]


@asynccontextmanager
async def subscribe(request: ChimeRequest, channel: str, after: int, transport: str, keepalive_s: float | None,
                    direct: DirectWrite | None = None, feed: Feed | None = None) -> AsyncIterator[Subscription]:
    """Read ``channel`` after ``after`` (see ``replay_then_live``), attached for presence meanwhile.

    Every transport counts as an attached reader for as long as it reads: a
    stream until it ends, a poll while it holds the request (API.md, push).
    ``feed``: the channel's feed when the caller attached it already (released here).
    """
    ctx = request.app.ctx
    reader = ctx.presence.attach(channel)
    ctx.metrics.inc("chime_stream_readers_total", help="Readers attached to channels.", transport=transport)
    try:
        async with aclosing(replay_then_live(ctx.store, ctx.hub, channel, after, keepalive_s, direct,
                                             feed)) as batches:
            yield Subscription(reader, batches)
    finally:
        ctx.presence.detach(reader)


async def stream_http(request: ChimeRequest, channel: str, after: int, encoder: StreamEncoder, *,
                      content_type: str, headers: Mapping[str, str], first: bytes = b"",
                      token: str | None = None) -> None:
    """``encoder``'s stream of the channel as a streamed HTTP response, ended after the terminal event."""
    ctx = request.app.ctx
    # Attached before the response starts: a store that cannot watch the channel for other
    # processes' commits is a clean 503, not a stream cut after its headers.
    feed = await ctx.hub.attach(channel)
    try:
        response = await request.respond(content_type=content_type, headers=dict(headers))
        if token is not None:
            set_cookie(response, token, secure=request.scheme == "https")
        # The headers go now, with ``first`` if any: only once they are out is the response
        # chunked, and only then can live events be written straight to it.
        await response.send(first)
    except BaseException:
        ctx.hub.release(feed)
        raise
    keepalive = encoder.keepalive
    direct = sanic_internals.direct_chunks(response, encoder.encode)
    async with subscribe(request, channel, after, encoder.transport,
                         ctx.settings.keepalive_s if keepalive is not None else None, direct,
                         feed) as subscription:
        async for batch in subscription.batches:
            if batch:
                await response.send(encoder.encode(batch))
            elif keepalive is not None:
                await response.send(keepalive)
    await response.eof()


# ---- SSE -----------------------------------------------------------------

@bp.get("/api/channels/<channel_id:str>/events")
async def sse(request: ChimeRequest, channel_id: str) -> HTTPResponse | None:
    user_id = await require_user(request, allow_query=True)
    after = resume_point(request)
    point = await read_point(request, channel_id, user_id)
    if finished_at_or_before(point, after):
        return empty(status=204)
    await stream_sse(request, channel_id, after)
    return None


async def stream_sse(request: ChimeRequest, channel: str, after: int, token: str | None = None) -> None:
    retry_ms: int = request.app.ctx.settings.sse_retry_ms
    await stream_http(request, channel, after, sse_wire.ENCODER, content_type=sse_wire.CONTENT_TYPE,
                      headers=sse_wire.HEADERS, first=sse_wire.retry(retry_ms), token=token)


# ---- WebSocket -------------------------------------------------------------

# Sanic's websocket() decorator is unannotated.
@bp.websocket("/api/channels/<channel_id:str>/ws")  # type: ignore[untyped-decorator]
async def websocket(request: ChimeRequest, ws: Websocket, channel_id: str) -> None:
    # From the first moment: frames sent while the channel is looked up count too.
    guard = InboundGuard(ws, _stop_on_violation(request.app.ctx, asyncio.current_task()))
    try:
        await serve_websocket(request, ws, guard, channel_id)
    except (asyncio.CancelledError, WebsocketClosed):
        pass  # the client went away, or was closed with 1008
    finally:
        guard.release()


async def serve_websocket(request: ChimeRequest, ws: Websocket, guard: InboundGuard, channel_id: str) -> None:
    ctx = request.app.ctx
    try:
        user_id = await require_user(request, allow_query=True)
        after = resume_point(request)
        point = await read_point(request, channel_id, user_id)
    except Exception as exc:  # a refusal closes with 4000 + its HTTP status (API.md)
        refusal = domain_error(exc) or exc
        if not isinstance(refusal, ApiError):
            raise
        await ws.close(code=4000 + refusal.status_code, reason=refusal.message[:120])
        return
    if finished_at_or_before(point, after):
        await ws.close(code=WS_CLOSE_NORMAL, reason="finished")
        return
    send = ws_sender(ws)
    direct = sanic_internals.direct_frames(ws, ws_wire.encode)
    async with subscribe(request, channel_id, after, ws_wire.ENCODER.transport, None, direct) as subscription:
        listener = asyncio.get_running_loop().create_task(
            _listen(ctx, guard, channel_id, subscription.reader), name=f"chime-ws-listen-{channel_id}")
        try:
            async for batch in subscription.batches:
                await send(batch)
            await ws.close(code=WS_CLOSE_GOING_AWAY if ctx.hub.shutting_down else WS_CLOSE_NORMAL)
        finally:
            listener.cancel()


def _stop_on_violation(ctx: Services, handler: asyncio.Task[Any] | None) -> Callable[[str], None]:
    """The handler stops reading the channel for a client closed with 1008."""
    def stop(violation: str) -> None:
        ctx.metrics.inc("chime_ws_policy_closes_total",
                        help="WebSocket clients closed with 1008 for what they sent.", reason=violation)
        if handler is not None:
            handler.cancel()

    return stop


def ws_sender(ws: Websocket) -> SendEvents:
    """One frame per event (API.md), all of a batch in one write.

    The frames are the events' own cached bytes, shared by every reader. With a
    negotiated extension (compression), or the fast path off, each event goes
    through ``ws.send`` instead, framed for this connection.
    """
    if sanic_internals.shares_frames(ws):
        async def send_shared(events: list[Event]) -> None:
            await sanic_internals.send_frames(ws, ws_wire.encode(events))
        return send_shared

    async def send_each(events: list[Event]) -> None:
        for event in events:
            await ws.send(ws_wire.message(event))
    return send_each


async def _listen(ctx: Any, guard: InboundGuard, channel: str, reader: Reader) -> None:
    """Client frames: ``{"type": "cancel"}`` and ``{"type": "presence", "visible": bool}``."""
    try:
        while True:
            frame = await guard.recv()
            if frame is None:
                return
            try:
                message = orjson.loads(frame)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "cancel":
                await ctx.answers.cancel(channel)
            elif kind == "presence" and isinstance(message.get("visible"), bool):
                ctx.presence.report(channel, message["visible"], reader)
    except (asyncio.CancelledError, WebsocketClosed):
        return
    except Exception:
        log.exception("reading a WebSocket frame failed")


# ---- polling -----------------------------------------------------------------

@bp.get("/api/channels/<channel_id:str>/events.json")
async def poll(request: ChimeRequest, channel_id: str) -> HTTPResponse:
    ctx = request.app.ctx
    user_id = await require_user(request)
    after = non_negative_int(query_value(request, "after"), "after") or 0
    wait_s = bounded_number(query_value(request, "wait"), "wait", 0, POLL_MAX_WAIT_S, 0)
    point = await read_point(request, channel_id, user_id)
    events: list[Event] = []
    if not finished_at_or_before(point, after):
        events = await first_batch(request, channel_id, after, wait_s)
    last_event_id = events[-1].id if events else after
    if events:
        finished = events[-1].terminal
    else:
        latest = await ctx.answers.read_point(user_id, channel_id)
        finished = finished_at_or_before(latest, after)
    return polling.response(events, last_event_id, finished)


async def first_batch(request: ChimeRequest, channel: str, after: int, wait_s: float) -> list[Event]:
    """Events after ``after``, at once if there are any, else the first to come within ``wait_s``."""
    async with subscribe(request, channel, after, "polling", wait_s) as subscription:
        return await anext(subscription.batches, [])
