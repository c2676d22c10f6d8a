"""A loopback TCP proxy that can cut every connection through it on demand.

Browser tests put it between Chromium and the server to simulate a network
drop: ``drop_all()`` resets every open connection (both sides see a reset, as
when a phone changes networks), and ``refuse(seconds)`` also resets every new
connection for a while, so clients have to keep retrying. ``silence_all()``
makes every open connection lose what is sent either way without a word, as
a middlebox that forgot an idle connection does; new connections still work.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from tests.support.server import free_port

CHUNK_BYTES = 64 * 1024
ACCEPT_POLL_S = 0.05  # how often the accept loop looks at the stop flag
# SO_LINGER on, zero seconds: close() sends RST instead of a polite FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _reset(sock: socket.socket) -> None:
    """Abort the connection with a RST, waking any thread blocked reading it.

    close() alone would not do: while another thread sits in recv() the kernel
    keeps the socket open. shutdown(SHUT_RD) wakes that reader without sending
    anything; the last close then sends the RST.
    """
    for step in (lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE),
                 lambda: sock.shutdown(socket.SHUT_RD),
                 sock.close):
        try:
            step()
        except OSError:
            pass


class _Pair:
    """One client connection and its upstream twin; closing either ends both."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client = client
        self.upstream = upstream
        self._closed = threading.Event()
        self.silent = threading.Event()  # what arrives is dropped, nothing is said

    def start(self) -> None:
        for source, sink in ((self.client, self.upstream), (self.upstream, self.client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                data = source.recv(CHUNK_BYTES)
                if not data:
                    break
                if not self.silent.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        self.reset()

    def reset(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            _reset(self.client)
            _reset(self.upstream)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``.

    Use as a context manager. ``url`` is what clients should connect to.
    """

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self.connections_total = 0
        self.dropped_total = 0
        self._pairs: list[_Pair] = []
        self._lock = threading.Lock()
        self._refuse_until = 0.0
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(ACCEPT_POLL_S)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        if time.monotonic() < self._refuse_until:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        with self._lock:
            self._pairs = [p for p in self._pairs if not p.closed]
            self._pairs.append(pair)
            self.connections_total += 1
        pair.start()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for p in self._pairs if not p.closed)

    def drop_all(self, refuse_s: float = 0.0) -> int:
        """Reset every open connection; with ``refuse_s``, reset new ones for that long too.

        Returns how many open connections were cut.
        """
        self.refuse(refuse_s)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        cut = 0
        for pair in pairs:
            if not pair.closed:
                cut += 1
                pair.reset()
        self.dropped_total += cut
        return cut

    def silence_all(self) -> int:
        """Drop everything sent on every open connection from now on, closing none; how many."""
        with self._lock:
            pairs = [pair for pair in self._pairs if not pair.closed]
        for pair in pairs:
            pair.silent.set()
        return len(pairs)

    def refuse(self, seconds: float) -> None:
        """Reset every connection attempt for the next ``seconds``."""
        self._refuse_until = max(self._refuse_until, time.monotonic() + seconds)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self.drop_all()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
