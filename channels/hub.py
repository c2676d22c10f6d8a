"""Fan-out: wakes a channel's readers after its events are committed.

The hub holds no queue per reader. Each live channel has a ``Feed``: a bounded
tail of its latest committed events and the futures of readers waiting for
more. A reader that falls behind the tail reads the store instead, so a slow
reader costs memory for nothing but its own position and never slows the
writer or another reader.

The store tells the hub of each commit (``publish``). When a write fails or
its outcome is unknown (a writer that died after COMMIT, before replying), the
store may hold events the hub was never told of: ``resync`` reads them before
any reader is woken, so no reader waits for an event that is already stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from channels.events import Event

log = logging.getLogger("chime.hub")

# A feed keeps its latest TAIL_EVENTS events, and drops the oldest as each new one comes: a
# running answer's events then leave memory as fast as they arrive. Dropping half the tail at
# once let the garbage collector's count of new objects grow between drops (the count never
# goes below zero), so its young collections, each walking every event of every tail, went on
# for the whole answer: 10-40 ms pauses every second or two per process at a thousand streams.
TAIL_EVENTS = 64
RESYNC_PAGE_EVENTS = 2_000

# Takes a batch of committed events and writes it at once; False when it cannot now
# (the connection is closing or its send buffer is full): the reader's task takes over.
DirectWrite = Callable[[list[Event]], bool]


class Follower:
    """A caught-up reader that the feed writes to as events are committed, without waking its task.

    Waking a task per reader per event (a future, a task step, the reader's
    generators and the framework's send) was a large share of the CPU per token.
    """

    __slots__ = ("write", "after", "done", "last_write", "timer")

    def __init__(self, write: DirectWrite, after: int, done: asyncio.Future[bool], now: float):
        self.write = write
        self.after = after
        self.done = done          # True: handed back (refused, gap, terminal, woken); False: quiet
        self.last_write = now
        self.timer: asyncio.TimerHandle | None = None

    def end(self, result: bool) -> None:
        if not self.done.done():
            self.done.set_result(result)


class Feed:
    __slots__ = ("channel", "tail", "first_id", "last_id", "closed", "_waiters", "_followers", "refs", "watching",
                 "_loop")

    def __init__(self, channel: str):
        self.channel = channel
        self.tail: list[Event] = []
        self.first_id = 0          # id of tail[0]; 0 while the tail is empty
        self.last_id: int | None = None  # last committed id seen by this feed
        self.closed = False        # the terminal event was published
        self._waiters: set[asyncio.Future[bool]] = set()
        self._followers: set[Follower] = set()
        self.refs = 0
        self.watching: asyncio.Future[None] | None = None  # the store's watch of it, for readers
        # The loop of its readers, kept at the first ``follow`` or ``wait``: Python 3.11's
        # get_running_loop() makes a getpid() system call each time, and these run per event.
        self._loop: asyncio.AbstractEventLoop | None = None

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
        excess = len(self.tail) - TAIL_EVENTS
        if excess > 0:
            del self.tail[:excess]
            self.first_id = self.tail[0].id
        if self._followers:
            self._write_followers(events)
        if self._waiters:
            self.wake()

    def _write_followers(self, events: Sequence[Event]) -> None:
        now = self._running_loop().time()
        first = events[0].id
        for follower in list(self._followers):
            if follower.after + 1 < first:  # a gap this batch cannot fill: the task reads the store
                self._unfollow(follower, True)
                continue
            batch = events if follower.after + 1 == first else [e for e in events if e.id > follower.after]
            if not batch:
                continue
            if not follower.write(list(batch)):
                self._unfollow(follower, True)
                continue
            follower.after = batch[-1].id
            follower.last_write = now
            if batch[-1].terminal:
                self._unfollow(follower, True)

    def _unfollow(self, follower: Follower, result: bool) -> None:
        self._followers.discard(follower)
        follower.end(result)

    async def follow(self, after: int, quiet_s: float | None, write: DirectWrite) -> tuple[int, bool]:
        """Write each committed event after ``after`` through ``write`` until handed back.

        Returns (the last id written, whether it ended because ``quiet_s`` passed
        with nothing written). It hands back at once when events are already
        there to read, and on a refused write, a gap, the terminal event, a
        deletion or shutdown: the reader's own loop then goes on from that id.
        """
        if self.has_after(after) or self.closed:
            return after, False
        loop = self._running_loop()
        follower = Follower(write, after, loop.create_future(), loop.time())
        self._followers.add(follower)
        if quiet_s is not None:
            # One timer for the whole follow that re-arms itself, not one per event.
            follower.timer = loop.call_later(quiet_s, self._check_quiet, follower, quiet_s)
        try:
            handed_back = await follower.done
        finally:
            if follower.timer is not None:
                follower.timer.cancel()
            self._followers.discard(follower)
        return follower.after, not handed_back

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _check_quiet(self, follower: Follower, quiet_s: float) -> None:
        loop = self._running_loop()
        due = follower.last_write + quiet_s
        if loop.time() >= due:
            self._unfollow(follower, False)
        else:
            follower.timer = loop.call_at(due, self._check_quiet, follower, quiet_s)

    def release_followers(self) -> None:
        """Hand every follower back to its task (deletion, shutdown)."""
        for follower in list(self._followers):
            self._unfollow(follower, True)

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
        loop = self._running_loop()
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

    def rewind(self) -> None:
        """Forget the tail and send every reader back to the store: what it holds is unknown here."""
        self.tail.clear()
        self.first_id = 0
        self.last_id = None
        self.wake()
        self.release_followers()


def _watched(watching: asyncio.Future[None]) -> bool:
    """Whether a watch is set up or being set up (not failed, not cancelled)."""
    return not watching.done() or (not watching.cancelled() and watching.exception() is None)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class LogReader(Protocol):
    """What the hub reads of the store: committed events of a channel with ``id > after``."""

    async def read_after(self, channel_id: str, after: int, limit: int = ...) -> list[Event]: ...


class Watcher(Protocol):
    """A store shared by several processes: it tells ``publish`` of other processes' commits
    to the channels it watches (``EventLog.watch``)."""

    async def watch(self, channel_id: str) -> None: ...
    def unwatch(self, channel_id: str) -> None: ...


class Hub:
    def __init__(self, store: LogReader | None = None, watcher: Watcher | None = None) -> None:
        self._feeds: dict[str, Feed] = {}
        self.shutting_down = False
        # Read by ``resync``; without it a resync sends the readers to the store themselves.
        self.store = store
        # With several processes on one store: a channel with readers here is watched.
        self.watcher = watcher
        self._resyncs: set[asyncio.Task[None]] = set()

    def acquire(self, channel: str) -> Feed:
        feed = self._feeds.get(channel)
        if feed is None:
            feed = self._feeds[channel] = Feed(channel)
        feed.refs += 1
        return feed

    async def attach(self, channel: str) -> Feed:
        """``acquire`` for a reader: with a ``watcher``, returns once other processes' commits to
        the channel reach this hub, so a reader that reads the store after this misses nothing."""
        feed = self.acquire(channel)
        watcher = self.watcher
        if watcher is None:
            return feed
        try:
            if feed.watching is None or not _watched(feed.watching):
                feed.watching = asyncio.ensure_future(watcher.watch(channel))
            await asyncio.shield(feed.watching)
        except BaseException:
            self.release(feed)
            raise
        return feed

    def feed(self, channel: str) -> Feed | None:
        """The channel's feed when some reader or writer holds it; None otherwise."""
        return self._feeds.get(channel)

    def release(self, feed: Feed) -> None:
        feed.refs -= 1
        if feed.refs <= 0 and self._feeds.get(feed.channel) is feed:
            del self._feeds[feed.channel]
            watcher, watching = self.watcher, feed.watching
            if watcher is not None and watching is not None:
                # A watch still being set up is undone once it is (a failed one needs nothing).
                watching.add_done_callback(lambda done: watcher.unwatch(feed.channel) if _watched(done) else None)

    def publish(self, events: Iterable[Event]) -> None:
        """Called by the store after each commit."""
        by_channel: dict[str, list[Event]] = {}
        for event in events:
            if event.channel in self._feeds:
                by_channel.setdefault(event.channel, []).append(event)
        for channel, batch in by_channel.items():
            self._feeds[channel].add(batch)

    def resync(self, channels: Iterable[str]) -> None:
        """A write of these channels failed or has an unknown outcome: catch up with the store.

        Each affected feed reads the store after the last event it was told
        of, adds what is there as if it had been published, and only then
        wakes its readers; a feed that was told of nothing yet (or a hub
        without ``store``, or a failed read) sends its readers back to the store
        instead. Synchronous, so a store can call it from its failure path; the
        reading runs in a task of its own.
        """
        feeds = [self._feeds[channel] for channel in set(channels) if channel in self._feeds]
        if not feeds:
            return
        task = asyncio.get_running_loop().create_task(self._resync(feeds), name="chime-hub-resync")
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _resync(self, feeds: list[Feed]) -> None:
        for feed in feeds:
            try:
                await self._catch_up(feed)
            except Exception:
                log.exception("re-reading channel %s after a failed write failed", feed.channel)
                feed.rewind()

    async def _catch_up(self, feed: Feed) -> None:
        if self.store is None or feed.last_id is None:
            feed.rewind()
            return
        while feed.last_id is not None:
            after = feed.last_id
            events = await self.store.read_after(feed.channel, after, RESYNC_PAGE_EVENTS)
            # A commit published during the read is already in the feed: only what follows it.
            last_id = feed.last_id if feed.last_id is not None else after
            fresh = [event for event in events if event.id > last_id]
            if fresh:
                feed.add(fresh)
            if len(events) < RESYNC_PAGE_EVENTS:
                return

    async def settle(self) -> None:
        """Wait until no resync is under way."""
        while self._resyncs:
            await asyncio.gather(*self._resyncs, return_exceptions=True)

    def forget(self, channel: str) -> None:
        """The channel was deleted: wake its readers so they notice."""
        feed = self._feeds.get(channel)
        if feed is not None:
            feed.closed = True
            feed.wake()
            feed.release_followers()

    def shutdown(self) -> None:
        """Wake every reader so that it ends its stream: the server is stopping."""
        self.shutting_down = True
        for feed in self._feeds.values():
            feed.wake()
            feed.release_followers()

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    @property
    def readers(self) -> int:
        return sum(feed.refs for feed in self._feeds.values())
