"""The connection protocol: Sanic's, with a deadline on receiving each request.

Sanic's request timeout restarts with every byte that arrives, and once the
headers are in, a slow body falls under the response timeout instead (a 503
after a minute). A client sending one byte every few seconds could hold a
connection, and a handler slot, for as long as it liked. Here a request's
headers and body must all arrive within ``request_timeout_s`` of its first
byte, or it gets ``408 request_timeout`` and the connection is closed.

What it reads of the connection's state is Sanic's private business, so it
goes through ``routes.sanic_internals``; with those off (``CHIME_FAST_PATH=0``,
or a Sanic without them) this is Sanic's protocol as it is.
"""

from __future__ import annotations

from typing import Any

from sanic.exceptions import RequestTimeout
from sanic.server.protocols.websocket_protocol import WebSocketProtocol

from routes import sanic_internals


class DeadlineProtocol(WebSocketProtocol):
    """``request_timeout`` (Sanic's ``REQUEST_TIMEOUT``) counted from a request's first byte."""

    __slots__ = ("_request_began",)  # Sanic's protocols have slots: no attribute may be added otherwise

    def connection_made(self, transport: Any) -> None:
        self._request_began: float | None = None
        super().connection_made(transport)  # type: ignore[no-untyped-call]  # Sanic's protocol is unannotated

    def data_received(self, data: bytes) -> None:
        if sanic_internals.enabled and sanic_internals.starts_a_request(self):
            self._request_began = sanic_internals.current_time()
        super().data_received(data)  # type: ignore[no-untyped-call]  # Sanic's protocol is unannotated

    def check_timeouts(self) -> None:
        began = self._request_began
        if (sanic_internals.enabled and began is not None and sanic_internals.receiving_request(self)
                and sanic_internals.current_time() - began > sanic_internals.request_timeout_s(self)):
            sanic_internals.end_late_request(self, RequestTimeout("The request did not arrive in time."))
            return
        super().check_timeouts()  # type: ignore[no-untyped-call]  # Sanic's protocol is unannotated
