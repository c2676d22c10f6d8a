"""What a group-committing ``EventLog`` keeps in front of its commits; both backends share it.

``append`` takes the event's id when it is queued (so ``wait=False`` can return
it), from what the log knows of each running channel it appends to
(``ChannelLog``: two fields, however long the answer). The backend's committer
takes the queue (``_pending``) in batches, holds the batch it sends in
``_in_flight``, resolves each waiting append with its event as committed, and
calls ``_fail`` for batches that did not commit: their channels' queued events
go too, so ids keep no gaps, and a channel whose failed events nobody awaited
raises the failure on its next append.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from channels.events import DELTA, TERMINAL_TYPES, Event
from channels.store import ChannelClosed, CommitListener, FailureListener

log = logging.getLogger("chime.store")


@dataclass(slots=True)
class Pending:
    event: Event
    future: asyncio.Future[Event] | None  # resolved with the event as committed
    revealed: bool = False  # its id is known outside (``wait=False`` returned it): it can never change
    text: str = ""  # what it adds to the answer's text: a delta's content


class ChannelLog:
    """What the log knows of a running channel it appends to: two fields, however long the answer.
    The entry goes with the channel's terminal commit, a failed commit, or its deletion."""

    __slots__ = ("next_id", "closed")

    def __init__(self, next_id: int, closed: bool = False) -> None:
        self.next_id = next_id
        self.closed = closed


class AppendQueue:
    """The queue of a group-committing log: see the module docstring."""

    def __init__(self, max_unawaited: int) -> None:
        # ``append(..., wait=False)`` stops returning at once when this many events wait for a
        # commit: a model faster than the store is slowed to the store's pace.
        self.max_unawaited = max_unawaited
        self.on_commit: CommitListener | None = None
        self.on_failure: FailureListener | None = None
        self._logs: dict[str, ChannelLog] = {}
        self._pending: list[Pending] = []
        self._in_flight: list[Pending] = []  # the batch being committed: deletions wait for it as for the queue
        self._failures: dict[str, BaseException] = {}  # raised by the channel's next append
        self._wake = asyncio.Event()

    async def _load_log(self, channel_id: str) -> ChannelLog:
        """The channel's entry from the store (``ChannelClosed``/``UnknownChannel`` when it has none)."""
        raise NotImplementedError

    def append_nowait(self, channel_id: str, type: str, data: dict[str, Any]) -> Event | None:
        """See ``EventLog.append_nowait``: ``append(..., wait=False)`` as a plain call, or None."""
        log_ = self._logs.get(channel_id)
        if (log_ is None or log_.closed or type in TERMINAL_TYPES or len(self._pending) >= self.max_unawaited
                or channel_id in self._failures):
            return None
        return self._queue(log_, channel_id, type, data, None)

    async def append(self, channel_id: str, type: str, data: dict[str, Any], *, wait: bool = True) -> Event:
        """See ``EventLog.append``; ``wait=False`` returns once the event is queued (not for terminals)."""
        failure = self._failures.pop(channel_id, None)
        if failure is not None:
            raise failure
        log_ = self._logs.get(channel_id)
        if log_ is None:
            log_ = await self._load_log(channel_id)
        if log_.closed:
            raise ChannelClosed(channel_id)
        if type in TERMINAL_TYPES:
            log_.closed = True
        elif not wait and len(self._pending) < self.max_unawaited:
            return self._queue(log_, channel_id, type, data, None)
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._queue(log_, channel_id, type, data, future)
        return await future

    def _queue(self, log_: ChannelLog, channel_id: str, type: str, data: dict[str, Any],
               future: asyncio.Future[Event] | None) -> Event:
        """The channel's next event, queued for the committer; with no future, its id is revealed."""
        event = Event.make(channel_id, log_.next_id, type, data)
        log_.next_id += 1
        text = data.get("content", "") if type == DELTA else ""
        self._pending.append(Pending(event, future, future is None, text if isinstance(text, str) else ""))
        self._wake.set()
        return event

    async def _flush_channels(self, channels: set[str]) -> None:
        """Wait until every pending event of these channels is committed (or failed).

        Commits go in order, so each channel's last pending event is enough; one
        queued with ``wait=False`` gets a future here.
        """
        last: dict[str, Pending] = {}
        for pending in (*self._in_flight, *self._pending):
            if pending.event.channel in channels:
                last[pending.event.channel] = pending
        waits: list[asyncio.Future[Event]] = []
        for pending in last.values():
            if pending.future is None:
                pending.future = asyncio.get_running_loop().create_future()
            waits.append(pending.future)
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)

    def _forget(self, channels: Iterable[str]) -> None:
        """Deleted channels: an append from now on finds no channel."""
        for channel in channels:
            self._logs.pop(channel, None)
            self._failures.pop(channel, None)

    def _fail(self, failed_batch: Sequence[Pending], exc: BaseException) -> None:
        """A batch did not commit: its channels' queued events go too, so ids keep no gaps."""
        failed = {p.event.channel for p in failed_batch}
        doomed = [*failed_batch, *(p for p in self._pending if p.event.channel in failed)]
        self._pending = [p for p in self._pending if p.event.channel not in failed]
        for channel in failed:
            self._logs.pop(channel, None)  # read the true next id from the store again
        told = set()
        for p in doomed:
            if p.future is not None:
                told.add(p.event.channel)
                if not p.future.done():
                    p.future.set_exception(exc)
        for channel in failed - told:  # nobody awaited these: the channel's next append hears it
            self._failures[channel] = exc
        if self.on_failure is not None:
            try:
                self.on_failure(failed)
            except Exception:
                log.exception("on_failure listener failed")
