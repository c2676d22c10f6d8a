"""Every reach into Sanic's private attributes, in this one module.

Sanic's public API does not give three things Chime needs:

- the fast path for live events: an event's ready-made SSE chunk or WebSocket
  frame written straight to the socket from the hub's commit callback
  (``response.send`` and ``ws.send`` cost four coroutines and, for WebSocket, a
  frame built per connection, for every event and every reader);
- the WebSocket flood guard (``routes.ws_limits``): client frames counted
  where Sanic parses them, before they can queue;
- the request deadline (``routes.protocol``): a request's headers and body
  timed from its first byte.

``PROBLEMS`` is found at import: every attribute used here must exist with the
kind this code expects (Sanic 25.12; ``pyproject.toml`` keeps Sanic below its
next major). ``enabled`` is False when there is a problem or when
``CHIME_FAST_PATH=0`` (``configure``, at server start). Then nothing here
touches Sanic's internals and every caller takes the public API instead:
``response.send``, ``ws.send``, ``ws.recv`` and Sanic's own request timeout.
Everything works, more slowly; the flood guard then counts client frames as
they are read (the rate rule, without the bound on unread frames), and a
request's deadline restarts with each byte as Sanic's does.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from types import MemberDescriptorType
from typing import TYPE_CHECKING, Any

from sanic.exceptions import WebsocketClosed
from sanic.http import http1
from sanic.http.constants import Stage
from sanic.response import HTTPResponse
from sanic.server.protocols import base_protocol, http_protocol
from sanic.server.websockets import impl as ws_impl

if TYPE_CHECKING:
    from channels.events import Event
    from channels.hub import DirectWrite

log = logging.getLogger("chime.sanic_internals")

# A live event is written directly only while less than this waits in the send buffer.
DIRECT_WRITE_MAX_BUFFERED_BYTES = 64 * 1024

Websocket = ws_impl.WebsocketImplProtocol
Encode = Callable[["list[Event]"], bytes]


# ---- the start-up check -----------------------------------------------------------

def _slot(cls: type, name: str) -> str | None:
    """None when ``cls`` has ``name`` as a slot (an instance attribute, set per connection)."""
    for klass in cls.__mro__:
        if isinstance(klass.__dict__.get(name), MemberDescriptorType):
            return None
    return f"{cls.__name__}.{name} is not a slot"


def _method(cls: type, name: str, coroutine: bool = False) -> str | None:
    function = getattr(cls, name, None)
    if not callable(function):
        return f"{cls.__name__}.{name} is not a method"
    if coroutine != inspect.iscoroutinefunction(function):
        return f"{cls.__name__}.{name} is {'not ' if coroutine else ''}a coroutine function"
    return None


def _annotated(cls: type, name: str) -> str | None:
    return None if name in getattr(cls, "__annotations__", {}) else f"{cls.__name__}.{name} is not declared"


def find_problems() -> list[str]:
    """What this Sanic lacks of what this module uses; empty on the version it was written for."""
    protocol, http, ws = http_protocol.HttpProtocol, http1.Http, ws_impl.WebsocketImplProtocol
    found = [
        *(_slot(protocol, name) for name in ("transport", "_can_write", "_time", "_task", "_http",
                                               "recv_buffer", "request_timeout")),
        *(_slot(http, name) for name in ("protocol", "response_func", "stage", "exception",
                                          "keep_alive", "request_body", "upgrade_websocket")),
        _method(http, "http1_response_chunked", coroutine=True),
        _method(protocol, "check_timeouts"),
        _method(protocol, "data_received"),
        *(_annotated(ws, name) for name in ("ws_proto", "io_proto", "conn_mutex")),
        _method(ws, "data_received"),
        _method(ws, "async_data_received", coroutine=True),
        _method(ws, "fail_connection"),
        _method(base_protocol.SanicProtocol, "send", coroutine=True),
        # Sanic imports monotonic as current_time without re-exporting it: this reads it on purpose.
        None if base_protocol.current_time is time.monotonic  # type: ignore[attr-defined]
        else "Sanic's clock is not time.monotonic",
        None if {"IDLE", "REQUEST", "HANDLER"} <= set(Stage.__members__) else "sanic Stage lacks a stage",
        None if {"CLOSED", "CLOSING"} <= set(vars(ws_impl)) else "sanic.server.websockets.impl lacks a state",
        _slot(HTTPResponse, "stream"),
    ]
    return [problem for problem in found if problem is not None]


PROBLEMS: tuple[str, ...] = tuple(find_problems())
enabled: bool = not PROBLEMS


def configure(wanted: bool) -> bool:
    """Use Sanic's internals when ``wanted`` (``CHIME_FAST_PATH``) and this Sanic has them."""
    global enabled
    if wanted and PROBLEMS:
        log.warning("this Sanic lacks what the fast path uses (%s): serving through its public API only",
                    "; ".join(PROBLEMS))
    elif not wanted:
        log.info("CHIME_FAST_PATH=0: serving through Sanic's public API only")
    enabled = wanted and not PROBLEMS
    return enabled


# ---- the fast path: HTTP streams ------------------------------------------------------

def direct_chunks(response: HTTPResponse, encode: Encode) -> DirectWrite | None:
    """Live events written straight to the connection, framed as Sanic frames them.

    ``response.send`` goes through four coroutines per call; this is one
    ``transport.write`` of the same HTTP/1.1 chunk. Only for a chunked response
    (Sanic's choice for a stream without a length); it refuses, so the
    reader's task sends instead, while Sanic holds writing back or the
    connection is closing. None when the fast path is off.
    """
    if not enabled:
        return None
    http = response.stream
    if not isinstance(http, http1.Http) or http.response_func != http.http1_response_chunked:
        return None
    protocol = http.protocol

    def write(events: list[Event]) -> bool:
        if not _takes_a_direct_write(protocol):
            return False
        payload = encode(events)
        _write_directly(protocol, b"%x\r\n%b\r\n" % (len(payload), payload))
        return True

    return write


def _takes_a_direct_write(protocol: Any) -> bool:
    """Open, not held back by Sanic, and with little waiting in its send buffer."""
    transport = protocol.transport
    return (transport is not None and not transport.is_closing() and protocol._can_write.is_set()
            and transport.get_write_buffer_size() <= DIRECT_WRITE_MAX_BUFFERED_BYTES)


def _write_directly(protocol: Any, data: bytes) -> None:
    protocol.transport.write(data)
    protocol._time = time.monotonic()  # what protocol.send records: the response timeout's clock


# ---- the fast path: WebSocket -----------------------------------------------------------

def shares_frames(ws: Websocket) -> bool:
    """Whether this connection is sent the events' cached frames (no extension changes them)."""
    return enabled and not ws.ws_proto.extensions


async def send_frames(ws: Websocket, frames: bytes) -> None:
    """Ready-made frames in one write, under the lock ``ws.send`` takes: frames never interleave."""
    async with ws.conn_mutex:
        if ws.ws_proto.state in (ws_impl.CLOSED, ws_impl.CLOSING) or ws.io_proto is None:
            raise WebsocketClosed("the WebSocket is closed")
        await ws.io_proto.send(frames)


def direct_frames(ws: Websocket, encode: Encode) -> DirectWrite | None:
    """Live events as the frames ``send_frames`` writes, straight to the connection.

    Refused, so the reader's task sends instead, while another frame is being
    sent (the lock ``ws.send`` takes), writing is held back, or the WebSocket
    is closing. None when the fast path is off or the frames are per connection.
    """
    if not shares_frames(ws) or ws.io_proto is None:
        return None
    protocol = ws.io_proto

    def write(events: list[Event]) -> bool:
        if (ws.conn_mutex.locked() or ws.ws_proto.state in (ws_impl.CLOSED, ws_impl.CLOSING)
                or not _takes_a_direct_write(protocol)):
            return False
        _write_directly(protocol, encode(events))
        return True

    return write


# ---- the WebSocket flood guard ---------------------------------------------------------

def hook_received(ws: Websocket, received: Callable[[bytes], None]) -> bool:
    """Have every TCP read of this WebSocket go to ``received`` instead of Sanic; False when off.

    An instance attribute over the method: Sanic's WebSocketProtocol calls
    ``self.websocket.data_received(data)`` for every TCP read.
    """
    if not enabled or not isinstance(ws, Websocket):
        return False
    ws.data_received = received  # type: ignore[method-assign]
    return True


def unhook_received(ws: Websocket) -> None:
    """Give reading back to Sanic."""
    ws.__dict__.pop("data_received", None)


def parse_received(ws: Websocket, data: bytes) -> tuple[list[bytes], list[Any]]:
    """What Sanic's ``data_received`` does first: the bytes to reply with and the frames parsed."""
    proto = ws.ws_proto
    proto.receive_data(data)
    return proto.data_to_send(), proto.events_received()


def hand_over(ws: Websocket, data_to_send: list[bytes], frames: Sequence[Any]) -> Coroutine[Any, Any, None]:
    """The rest of Sanic's ``data_received``: send the replies, queue the frames for ``recv()``."""
    coroutine: Coroutine[Any, Any, None] = ws.async_data_received(data_to_send, frames)
    return coroutine


def fail_connection(ws: Websocket, code: int, reason: str) -> None:
    """Synchronous: stop reading, write the close frame, close without waiting for the reply."""
    ws.fail_connection(code, reason)


# ---- the request deadline ----------------------------------------------------------------

def starts_a_request(protocol: Any) -> bool:
    """Bytes arriving now begin a request: nothing buffered, and no request under way."""
    http = getattr(protocol, "_http", None)  # made by the connection's task, after the first bytes may arrive
    return not protocol.recv_buffer and (http is None or http.stage is Stage.IDLE)


def receiving_request(protocol: Any) -> bool:
    """Headers not yet complete, or a body still arriving before the handler may answer."""
    http = getattr(protocol, "_http", None)
    if protocol._task is None or http is None:
        return False
    if http.stage is Stage.REQUEST:
        return True
    return http.stage is Stage.HANDLER and bool(http.request_body) and not http.upgrade_websocket


def request_timeout_s(protocol: Any) -> float:
    timeout: float = protocol.request_timeout
    return timeout


def end_late_request(protocol: Any, error: Exception) -> None:
    """Answer the request under way with ``error`` and close the connection after it."""
    http = protocol._http
    http.exception = error
    http.keep_alive = False
    http.request_body = None  # or Sanic would go on reading the rest of the late body
    protocol._task.cancel()


def current_time() -> float:
    """The clock Sanic's timeouts read."""
    return time.monotonic()
