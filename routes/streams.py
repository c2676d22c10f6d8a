"""Reading a channel: SSE, WebSocket and JSON polling.

All three run the same replay-then-live reader and differ only in how they
encode an event.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from sanic import Blueprint, Request
from sanic.exceptions import WebsocketClosed
from sanic.response import HTTPResponse, empty, json
from sanic.server.protocols.base_protocol import current_time
from sanic.server.websockets.impl import CLOSED, CLOSING

from channels.events import KEEPALIVE_SSE, Event, sse_batch, ws_batch
from channels.hub import DirectWrite
from channels.reader import read_once, replay_then_live
from channels.store import ChannelRecord
from errors import ApiError, NotFound
from routes.auth import require_user, set_cookie
from routes.params import bounded_number, non_negative_int, query_value
from routes.ws_limits import InboundGuard

log = logging.getLogger("chime.streams")

bp = Blueprint("streams")

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"

# WebSocket close codes (API.md): an ApiError's status maps onto 4000 + status.
WS_CLOSE_NORMAL = 1000
WS_CLOSE_GOING_AWAY = 1001

POLL_MAX_WAIT_S = 30.0
# A live event is written directly only while less than this waits in the send buffer.
DIRECT_WRITE_MAX_BUFFERED_BYTES = 64 * 1024


def accepts_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def owned_channel(request: Request, channel_id: str, user_id: str) -> ChannelRecord:
    record = await request.app.ctx.store.get_channel(channel_id)
    if record is None or record.user_id != user_id:
        raise NotFound("No such channel.")
    return record


def resume_point(request: Request) -> int:
    """``Last-Event-ID`` header, else ``last_event_id`` query; none means from the start."""
    header = request.headers.get("last-event-id")
    if header is not None:
        return non_negative_int(header, "Last-Event-ID") or 0
    return non_negative_int(query_value(request, "last_event_id"), "last_event_id") or 0


def finished_at_or_before(record: ChannelRecord, after: int) -> bool:
    return not record.running and after >= record.last_event_id


# ---- SSE -----------------------------------------------------------------

@bp.get("/api/channels/<channel_id:str>/events")
async def sse(request: Request, channel_id: str) -> HTTPResponse | None:
    user_id = await require_user(request, allow_query=True)
    after = resume_point(request)
    record = await owned_channel(request, channel_id, user_id)
    if finished_at_or_before(record, after):
        return empty(status=204)
    await stream_sse(request, record.id, after)
    return None


async def stream_sse(request: Request, channel: str, after: int, token: str | None = None) -> None:
    ctx = request.app.ctx
    response = await request.respond(content_type=SSE_CONTENT_TYPE, headers=SSE_HEADERS)
    if token is not None:
        set_cookie(response, token, secure=request.scheme == "https")
    reader = ctx.presence.attach(channel)
    ctx.metrics.inc("chime_stream_readers_total", help="Readers attached to channels.", transport="sse")
    try:
        await response.send(b"retry: %d\n\n" % ctx.settings.sse_retry_ms)
        direct = sse_direct_write(response)
        async for batch in replay_then_live(ctx.store, ctx.hub, channel, after, ctx.settings.keepalive_s,
                                            direct):
            await response.send(sse_batch(batch) if batch else KEEPALIVE_SSE)
    finally:
        ctx.presence.detach(reader)
    await response.eof()


def sse_direct_write(response) -> DirectWrite | None:
    """Live events written straight to the connection, framed as Sanic frames them.

    ``response.send`` goes through four coroutines per call; this is one
    ``transport.write`` of the same HTTP/1.1 chunk. Only for a chunked response
    (Sanic's choice for a stream without a length); it refuses, so the
    reader's task sends instead, while Sanic holds writing back or the
    connection is closing.
    """
    http = response.stream
    if http is None or http.response_func != http.http1_response_chunked:
        return None
    protocol = http.protocol

    def write(events: list[Event]) -> bool:
        if not _takes_a_direct_write(protocol):
            return False
        payload = sse_batch(events)
        _write_directly(protocol, b"%x\r\n%b\r\n" % (len(payload), payload))
        return True

    return write


def _takes_a_direct_write(protocol) -> bool:
    """Open, not held back by Sanic, and with little waiting in its send buffer."""
    transport = protocol.transport
    return (transport is not None and not transport.is_closing() and protocol._can_write.is_set()
            and transport.get_write_buffer_size() <= DIRECT_WRITE_MAX_BUFFERED_BYTES)


def _write_directly(protocol, data: bytes) -> None:
    protocol.transport.write(data)
    protocol._time = current_time()  # what protocol.send records: the response timeout's clock


# ---- WebSocket -------------------------------------------------------------

@bp.websocket("/api/channels/<channel_id:str>/ws")
async def websocket(request: Request, ws, channel_id: str) -> None:
    # From the first moment: frames sent while the channel is looked up count too.
    guard = InboundGuard(ws, _stop_on_violation(request.app.ctx, asyncio.current_task()))
    try:
        await serve_websocket(request, ws, guard, channel_id)
    except (asyncio.CancelledError, WebsocketClosed):
        pass  # the client went away, or was closed with 1008
    finally:
        guard.release()


async def serve_websocket(request: Request, ws, guard: InboundGuard, channel_id: str) -> None:
    ctx = request.app.ctx
    try:
        user_id = await require_user(request, allow_query=True)
        after = resume_point(request)
        record = await owned_channel(request, channel_id, user_id)
    except ApiError as exc:
        await ws.close(code=4000 + exc.status_code, reason=exc.message[:120])
        return
    if finished_at_or_before(record, after):
        await ws.close(code=WS_CLOSE_NORMAL, reason="finished")
        return
    reader = ctx.presence.attach(channel_id)
    ctx.metrics.inc("chime_stream_readers_total", help="Readers attached to channels.", transport="ws")
    listener = asyncio.get_running_loop().create_task(
        _listen(ctx, guard, channel_id, reader), name=f"chime-ws-listen-{channel_id}")
    try:
        async for batch in replay_then_live(ctx.store, ctx.hub, channel_id, after, None, ws_direct_write(ws)):
            await send_events(ws, batch)
        await ws.close(code=WS_CLOSE_GOING_AWAY if ctx.hub.shutting_down else WS_CLOSE_NORMAL)
    finally:
        listener.cancel()
        ctx.presence.detach(reader)


def _stop_on_violation(ctx, handler: asyncio.Task | None):
    """The handler stops reading the channel for a client closed with 1008."""
    def stop(violation: str) -> None:
        ctx.metrics.inc("chime_ws_policy_closes_total",
                        help="WebSocket clients closed with 1008 for what they sent.", reason=violation)
        if handler is not None:
            handler.cancel()

    return stop


async def send_events(ws, events: list[Event]) -> None:
    """One frame per event (API.md), all of a batch in one write.

    The frames are the events' own cached bytes, shared by every reader. With a
    negotiated extension (compression) the frames differ per connection, so
    they go through the WebSocket protocol object one by one instead.
    """
    if ws.ws_proto.extensions:
        for event in events:
            await ws.send(event.ws())
        return
    async with ws.conn_mutex:  # the same lock ws.send() takes: frames never interleave
        if ws.ws_proto.state in (CLOSED, CLOSING):
            raise WebsocketClosed("the WebSocket is closed")
        await ws.io_proto.send(ws_batch(events))


def ws_direct_write(ws) -> DirectWrite | None:
    """Live events as the same cached frames ``send_events`` writes, straight to the connection.

    Not with a negotiated extension (frames differ per connection); refused, so
    the reader's task sends instead, while another frame is being sent (the
    lock ``ws.send`` takes), writing is held back, or the WebSocket is closing.
    """
    if ws.ws_proto.extensions:
        return None
    protocol = ws.io_proto

    def write(events: list[Event]) -> bool:
        if (ws.conn_mutex.locked() or ws.ws_proto.state in (CLOSED, CLOSING)
                or not _takes_a_direct_write(protocol)):
            return False
        _write_directly(protocol, ws_batch(events))
        return True

    return write


async def _listen(ctx, guard: InboundGuard, channel: str, reader) -> None:
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
                await ctx.generations.stop(channel)
            elif kind == "presence" and isinstance(message.get("visible"), bool):
                ctx.presence.report(channel, message["visible"], reader)
    except (asyncio.CancelledError, WebsocketClosed):
        return
    except Exception:
        log.exception("reading a WebSocket frame failed")


# ---- polling -----------------------------------------------------------------

@bp.get("/api/channels/<channel_id:str>/events.json")
async def poll(request: Request, channel_id: str) -> HTTPResponse:
    ctx = request.app.ctx
    user_id = await require_user(request)
    after = non_negative_int(query_value(request, "after"), "after") or 0
    wait_s = bounded_number(query_value(request, "wait"), "wait", 0, POLL_MAX_WAIT_S, 0)
    record = await owned_channel(request, channel_id, user_id)
    if finished_at_or_before(record, after):
        events = []
    else:
        events = await read_once(ctx.store, ctx.hub, record.id, after, wait_s)
    last_event_id = events[-1].id if events else after
    if events:
        finished = events[-1].terminal
    else:
        latest = await ctx.store.get_channel(record.id)
        finished = latest is not None and finished_at_or_before(latest, after)
    return json({"events": [event.as_dict() for event in events],
                 "last_event_id": last_event_id, "finished": finished})
