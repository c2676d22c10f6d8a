"""Fan-out: wakes a channel's readers after its events are committed.

The hub holds no queue per reader. Each live channel has a ``Feed``: a bounded
tail of its latest committed events and the futures of readers waiting for
more. A reader that falls behind the tail reads the store instead, so a slow
reader costs memory for nothing but its own position and never slows the
writer or another reader.
"""

from __future__ import annotations

import asyncio
from typing import Iterable, Sequence

from channels.events import Event

TAIL_EVENTS = 64


class Feed:
    __slots__ = ("channel", "tail", "first_id", "last_id", "closed", "_waiters", "refs")

    def __init__(self, channel: str):
        self.channel = channel
        self.tail: list[Event] = []
        self.first_id = 0          # id of tail[0]; 0 while the tail is empty
        self.last_id: int | None = None  # last committed id seen by this feed
        self.closed = False        # the terminal event was published
        self._waiters: set[asyncio.Future[bool]] = set()
        self.refs = 0

    def add(self, events: Sequence[Event]) -> None:
        for event in events:
            if self.tail and event.id != self.last_id + 1:  # type: ignore[operator]
                self.tail.clear()
            if not self.tail:
                self.first_id = event.id
            self.tail.append(event)
            self.last_id = event.id
            if event.terminal:
                self.closed = True
        if len(self.tail) > 2 * TAIL_EVENTS:
            del self.tail[:-TAIL_EVENTS]
            self.first_id = self.tail[0].id
        self.wake()

    def since(self, after: int, limit: int) -> list[Event] | None:
        """Events with id > after from the tail; None when the tail cannot tell."""
        if self.last_id is None or not self.tail:
            return None
        if after >= self.last_id:
            return []
        if after + 1 < self.first_id:
            return None
        start = after + 1 - self.first_id
        return self.tail[start:start + limit]

    def has_after(self, after: int) -> bool:
        return self.last_id is not None and self.last_id > after

    async def wait(self, after: int, timeout_s: float | None) -> bool:
        """Wait for an event with id > after; False when the timeout ran out first."""
        if self.has_after(after) or self.closed:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.add(waiter)
        # One timer handle, not an asyncio.timeout() scope: this runs once per event per reader.
        timer = loop.call_later(timeout_s, _expire, waiter) if timeout_s is not None else None
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.discard(waiter)

    def wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)
        self._waiters.clear()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Hub:
    def __init__(self) -> None:
        self._feeds: dict[str, Feed] = {}
        self.shutting_down = False

    def acquire(self, channel: str) -> Feed:
        feed = self._feeds.get(channel)
        if feed is None:
            feed = self._feeds[channel] = Feed(channel)
        feed.refs += 1
        return feed

    def release(self, feed: Feed) -> None:
        feed.refs -= 1
        if feed.refs <= 0 and self._feeds.get(feed.channel) is feed:
            del self._feeds[feed.channel]

    def publish(self, events: Iterable[Event]) -> None:
        """Called by the store after each commit."""
        by_channel: dict[str, list[Event]] = {}
        for event in events:
            if event.channel in self._feeds:
                by_channel.setdefault(event.channel, []).append(event)
        for channel, batch in by_channel.items():
            self._feeds[channel].add(batch)

    def forget(self, channel: str) -> None:
        """The channel was deleted: wake its readers so they notice."""
        feed = self._feeds.get(channel)
        if feed is not None:
            feed.closed = True
            feed.wake()

    def shutdown(self) -> None:
        """Wake every reader so that it ends its stream: the server is stopping."""
        self.shutting_down = True
        for feed in self._feeds.values():
            feed.wake()

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    @property
    def readers(self) -> int:
        return sum(feed.refs for feed in self._feeds.values())
