"""What a WebSocket client may send (API.md, "Slow clients").

A client that sends more than 100 frames a second averaged over 10 seconds,
or faster than the server reads them, is closed with ``1008`` before its
frames cost memory.

Why the check sits where Sanic parses frames: ``WebsocketImplProtocol.
data_received`` parses every TCP read into frames and hands each batch to a new
task; those tasks queue on one lock and on the frame assembler, which holds one
message until ``recv()`` takes it. Sanic pauses reading only while no
``recv()`` is pending, and a reader that always waits in ``recv()`` never lets
it: a client writing presence frames in a loop took the server from 108 MB to
1 GB in 20 s, as hundreds of thousands of waiting tasks that outlived the
socket. Counting in ``recv()`` would see frames only after they are queued;
counting where they are parsed bounds what can queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.frames import Opcode

from routes import sanic_internals

log = logging.getLogger("chime.ws_limits")

WS_CLOSE_POLICY_VIOLATION = 1008

MAX_FRAMES_PER_WINDOW = 1000  # 100 frames a second ...
RATE_WINDOW_S = 10.0  # ... averaged over 10 seconds
# A client's frames are a few presence reports and a cancel, a few dozen bytes
# each: a second's worth at the allowed rate, or 256 KiB (four messages of the
# largest size Sanic accepts here), waiting unread means it sends faster than
# the server reads.
MAX_UNREAD_MESSAGES = 100
MAX_UNREAD_BYTES = 256 * 1024

TOO_MANY_FRAMES = "more than 100 frames a second"
UNREAD_BACKLOG = "frames sent faster than the server reads them"

_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class SlidingWindowLimit:
    """At most ``limit`` arrivals in any ``window_s`` seconds, counted exactly.

    Arrivals at one instant are one entry, so a client near the limit costs a
    few hundred entries at most and a quiet one almost none. Times are integer
    nanoseconds: at exactly the allowed rate, the arrival one window after
    another must see it leave, which float sums get wrong.
    """

    def __init__(self, limit: int = MAX_FRAMES_PER_WINDOW, window_s: float = RATE_WINDOW_S,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.limit = limit
        self.window_ns = round(window_s * 1e9)
        self.clock_ns = clock_ns
        self._arrivals: deque[list[int]] = deque()  # [time, count], oldest first
        self._in_window = 0

    def admit(self, count: int = 1) -> bool:
        """Record ``count`` arrivals now; False, recording nothing, if that passes the limit."""
        now = self.clock_ns()
        horizon = now - self.window_ns
        while self._arrivals and self._arrivals[0][0] <= horizon:
            self._in_window -= self._arrivals.popleft()[1]
        if self._in_window + count > self.limit:
            return False
        if self._arrivals and self._arrivals[-1][0] == now:
            self._arrivals[-1][1] += count
        else:
            self._arrivals.append([now, count])
        self._in_window += count
        return True


class InboundGuard:
    """One WebSocket's client frames, read through ``recv()``, within API.md's limits.

    On a violation the connection is failed with ``1008`` (a close frame, then
    the TCP connection closed without reading further), the frames still
    queued inside Sanic are dropped and ``on_violation`` is called so the
    handler can stop. Without the Sanic internals it hooks (another Sanic, ASGI,
    ``CHIME_FAST_PATH=0``; see ``routes.sanic_internals``) it counts messages as
    ``recv()`` returns them and closes with ``1008`` there: the same rate rule,
    without the bound on unread frames.
    """

    def __init__(self, ws: Any, on_violation: Callable[[str], None],
                 limit: SlidingWindowLimit | None = None) -> None:
        self.ws = ws
        self.on_violation = on_violation
        self.limit = limit or SlidingWindowLimit()
        self.violation: str | None = None
        self._unread: deque[int] = deque()  # byte sizes of complete messages not yet read
        self._unread_bytes = 0
        self._partial_bytes = 0  # of a fragmented message still arriving
        self._tasks: set[asyncio.Task[None]] = set()
        self.hooked = sanic_internals.hook_received(ws, self._data_received)

    def release(self) -> None:
        """Give reading back to Sanic: the handler is done with this connection."""
        if self.hooked:
            sanic_internals.unhook_received(self.ws)

    async def recv(self) -> str | bytes | None:
        message: str | bytes | None = await self.ws.recv()
        if message is None:
            return None
        if self.hooked:
            self._message_read()
        elif not self.limit.admit():
            await self._close_from_recv(TOO_MANY_FRAMES)
            return None
        return message

    # ---- the hook on Sanic's data_received ----

    def _data_received(self, data: bytes) -> None:
        """Sanic's ``data_received`` (parse, reply, queue a task), checked before anything queues."""
        if self.violation is not None:
            return  # failed with 1008: whatever else arrives is dropped unparsed
        data_to_send, frames = sanic_internals.parse_received(self.ws, data)
        violation = self._admit(frames)
        if violation is not None:
            self._fail(violation)
            return
        if data_to_send or frames:
            task = asyncio.get_running_loop().create_task(sanic_internals.hand_over(self.ws, data_to_send, frames))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _admit(self, frames: list[Any]) -> str | None:
        if not frames:
            return None
        if not self.limit.admit(len(frames)):
            return TOO_MANY_FRAMES
        for frame in frames:
            if getattr(frame, "opcode", None) in _DATA_OPCODES:
                self._partial_bytes += len(frame.data)
                if frame.fin:
                    self._unread.append(self._partial_bytes)
                    self._unread_bytes += self._partial_bytes
                    self._partial_bytes = 0
        if (len(self._unread) > MAX_UNREAD_MESSAGES
                or self._unread_bytes + self._partial_bytes > MAX_UNREAD_BYTES):
            return UNREAD_BACKLOG
        return None

    def _message_read(self) -> None:
        if self._unread:
            self._unread_bytes -= self._unread.popleft()

    def _fail(self, violation: str) -> None:
        self.violation = violation
        log.info("closing a WebSocket with 1008: %s", violation)
        sanic_internals.fail_connection(self.ws, WS_CLOSE_POLICY_VIOLATION, violation)
        for task in self._tasks:
            task.cancel()  # each waits to hand a frame to a recv() that will not come
        self._unread.clear()
        self.on_violation(violation)

    async def _close_from_recv(self, violation: str) -> None:
        self.violation = violation
        log.info("closing a WebSocket with 1008: %s", violation)
        await self.ws.close(code=WS_CLOSE_POLICY_VIOLATION, reason=violation)
        self.on_violation(violation)
