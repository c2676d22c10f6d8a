"""The connection protocol: Sanic's, with a deadline on receiving each request.

Sanic's request timeout restarts with every byte that arrives, and once the
headers are in, a slow body falls under the response timeout instead (a 503
after a minute). A client sending one byte every few seconds could hold a
connection, and a handler slot, for as long as it liked. Here a request's
headers and body must all arrive within ``request_timeout_s`` of its first
byte, or it gets ``408 request_timeout`` and the connection is closed.
"""

from __future__ import annotations

from sanic.exceptions import RequestTimeout
from sanic.http.constants import Stage
from sanic.server.protocols.base_protocol import current_time
from sanic.server.protocols.websocket_protocol import WebSocketProtocol


class DeadlineProtocol(WebSocketProtocol):
    """``request_timeout`` (Sanic's ``REQUEST_TIMEOUT``) counted from a request's first byte."""

    __slots__ = ("_request_began",)  # Sanic's protocols have slots: no attribute may be added otherwise

    def connection_made(self, transport) -> None:
        self._request_began: float | None = None
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        http = getattr(self, "_http", None)  # made by the connection's task, after the first bytes may arrive
        if not self.recv_buffer and (http is None or http.stage is Stage.IDLE):
            self._request_began = current_time()
        super().data_received(data)

    def check_timeouts(self) -> None:
        http = getattr(self, "_http", None)
        began = self._request_began
        if self._task and http is not None and began is not None and self._receiving(http):
            if current_time() - began > self.request_timeout:
                http.exception = RequestTimeout("The request did not arrive in time.")
                http.keep_alive = False
                http.request_body = None  # or Sanic would go on reading the rest of the late body
                self._task.cancel()
                return
        super().check_timeouts()

    @staticmethod
    def _receiving(http) -> bool:
        """Headers not yet complete, or a body still arriving before the handler may answer."""
        if http.stage is Stage.REQUEST:
            return True
        return http.stage is Stage.HANDLER and bool(http.request_body) and not http.upgrade_websocket
