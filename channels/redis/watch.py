"""Other processes' commits: one pub/sub connection per store, and the channels it watches.

Every append script publishes what it stored on the channel's wake channel,
tagged with the origin of the store that sent it. ``Watches`` subscribes to the
wake channels of the channels watched here (reference-counted) and tells the
store's ``on_commit`` of the events that other stores published, skipping its
own (told already, right after their round trip).

What it tells, per channel, is each event once, in id order, none missed:

- ``watch`` returns once the subscription is live *and* the channel's stored
  last id (the baseline) is read. Later events reach ``on_commit``; earlier ones
  are the caller's to read from the stream (subscribe first, read, merge by id).
- A published batch that does not continue what was told (a message lost to a
  reconnect; another store's terminal event while this one's own events are
  still on their way) starts a catch-up instead: the stream is read after the
  last id told, and what is there is told; messages arriving meanwhile wait.
  For a channel this store appends to, the catch-up first waits until the
  store's own queued events are committed and told, so they keep their order.
- After the connection drops, it reconnects, subscribes to every watched
  channel again, and catches each one up.

Pub/sub gives wake-ups without history and costs Redis nothing per event per
reader, unlike a ``XREAD BLOCK`` per reader (``ECOSYSTEM.md``). The connection
has no socket timeout (redis-py #2807): it waits for messages as long as it takes,
and is sent a PING when it has been quiet for a while (``HEARTBEAT_S``), so a
connection dropped without a word is noticed within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import hiredis
import redis.asyncio
import redis.asyncio.connection

from channels.events import META, TERMINAL_TYPES, Event
from channels.redis.keys import Keys
from channels.store import StoreUnavailable

log = logging.getLogger("chime.store")

# Reconnecting waits this long after a drop, doubling up to RECONNECT_MAX_S.
RECONNECT_FIRST_S = 0.05
RECONNECT_MAX_S = 2.0
# A catch-up reads the stream in pages of this many events, and tries again this long after
# a failed read.
CATCH_UP_PAGE_EVENTS = 2_000
CATCH_UP_RETRY_S = 0.5

# The pub/sub connection reads this much at a time: every message in it is handled in a row.
READ_SIZE = 256 * 1024
# A pub/sub connection quiet this long is sent a PING; one whose PING gets no answer within the
# store's timeout is taken for dropped without a word (a middlebox that forgets idle connections
# sends none) and is replaced. TCP keepalive alone would take its system's two hours to notice.
HEARTBEAT_S = 5.0

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
# What ends the connection: reconnecting is the answer (an error reply here means a confused one).
_RECONNECT: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS, redis.exceptions.ResponseError, hiredis.ProtocolError)

_TYPE_NAMES = {name.encode(): name for name in (META, "delta", "usage", *TERMINAL_TYPES)}


class WatchingStore(Protocol):
    """What ``Watches`` uses of its store (``channels.redis.log.RedisLog``)."""

    keys: Keys
    origin: str
    timeout_s: float

    def connect(self, socket_timeout: float | None) -> redis.asyncio.Redis: ...
    async def read_after(self, channel_id: str, after: int, limit: int = ...) -> list[Event]: ...
    async def _read_last_id(self, channel_id: str) -> int: ...
    async def _flush_channels(self, channels: set[str]) -> None: ...
    def _owns(self, channel_id: str) -> bool: ...
    def tell(self, events: list[Event]) -> None: ...


class _Watch:
    """One watched channel: who watches it, what was told of it, what waits to be told."""

    __slots__ = ("channel", "refs", "told", "baseline", "held", "busy", "ready")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.refs = 1
        self.told = 0         # the last id told to on_commit (by this store's commits or another's)
        self.baseline = 0     # the stored last id when the watch began: the caller reads up to it
        self.held: list[Event] = []  # published by another store, not told yet
        self.busy = True      # the baseline or a catch-up is being read: held events wait for it
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def floor(self) -> int:
        """Events up to this id are told, or are the watcher's to read."""
        return max(self.told, self.baseline)


class Watches:
    """The channels this store watches, over one ``Subscriber``."""

    def __init__(self, store: WatchingStore) -> None:
        self._store = store
        self._origin = store.origin.encode() + b"\n"
        self._watches: dict[str, _Watch] = {}
        self._by_name: dict[bytes, _Watch] = {}
        self._subscriber: Subscriber | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __bool__(self) -> bool:
        return bool(self._watches)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._subscriber is not None:
            await self._subscriber.close()
            self._subscriber = None
        for watch in self._watches.values():
            if not watch.ready.done():
                watch.ready.set_exception(StoreUnavailable("the store is closed"))
                watch.ready.exception()  # retrieved: nobody may be waiting
        self._watches.clear()
        self._by_name.clear()

    async def watch(self, channel: str) -> None:
        watch = self._watches.get(channel)
        if watch is None:
            watch = self._watches[channel] = _Watch(channel)
            name = self._store.keys.wake(channel).encode()
            self._by_name[name] = watch
            if self._subscriber is None:
                self._subscriber = Subscriber(self._store.connect(socket_timeout=None), self._on_message,
                                              self._on_live, reply_s=self._store.timeout_s)
            self._subscriber.subscribe(name)
        else:
            watch.refs += 1
        try:
            await asyncio.wait_for(asyncio.shield(watch.ready), self._store.timeout_s)
        except BaseException as exc:
            self.unwatch(channel)
            if isinstance(exc, TimeoutError):
                raise StoreUnavailable("Redis did not confirm the subscription in time") from exc
            raise

    def unwatch(self, channel: str) -> None:
        watch = self._watches.get(channel)
        if watch is None:
            return
        watch.refs -= 1
        if watch.refs > 0:
            return
        del self._watches[channel]
        name = self._store.keys.wake(channel).encode()
        del self._by_name[name]
        if not watch.ready.done():
            watch.ready.cancel()
        if self._subscriber is not None:
            self._subscriber.unsubscribe(name)

    def local(self, events: list[Event]) -> list[Event]:
        """This store's own commit of one channel's ``events``: those not told yet (a catch-up
        may have told them first), noted as told."""
        watch = self._watches.get(events[0].channel)
        if watch is None:
            return events
        told = watch.told
        if events[-1].id <= told:
            return []
        if events[0].id <= told:
            events = [event for event in events if event.id > told]
        watch.told = events[-1].id
        return events

    # ---- the subscriber's news -------------------------------------------

    def _on_live(self, name: bytes) -> None:
        """The subscription is (again) live: read the baseline, or catch up after a reconnect."""
        watch = self._by_name.get(name)
        if watch is None:
            return
        if watch.ready.done():
            self._start(self._catch_up(watch), watch)
        else:
            self._start(self._begin(watch), watch)

    def _on_message(self, name: bytes, payload: bytes) -> None:
        watch = self._by_name.get(name)
        if watch is None:
            return
        if payload.startswith(self._origin):  # this store's own commit: told already
            return
        parts = payload.split(b"\n")
        first = int(parts[1])
        channel = watch.channel
        watch.held += [Event(channel, first + n, _TYPE_NAMES.get(parts[i]) or parts[i].decode(), parts[i + 1])
                       for n, i in enumerate(range(2, len(parts) - 1, 2))]
        if not watch.busy:
            self._drain(watch)

    # ---- telling ---------------------------------------------------------

    def _drain(self, watch: _Watch) -> None:
        """Tell the held events that continue what was told; a gap (or this store's own events
        perhaps still on their way) starts a catch-up instead."""
        watch.held = [event for event in watch.held if event.id > watch.floor]
        if not watch.held:
            return
        if watch.held[0].id != watch.floor + 1 or self._store._owns(watch.channel):
            self._start(self._catch_up(watch), watch)
            return
        self._tell_run(watch)
        if watch.held:
            self._start(self._catch_up(watch), watch)

    def _tell_run(self, watch: _Watch) -> None:
        """Tell the held events that continue what was told, up to the first gap."""
        held = watch.held
        if not held or held[0].id != watch.floor + 1:
            return
        end = 1
        while end < len(held) and held[end].id == held[end - 1].id + 1:
            end += 1
        watch.held = held[end:]
        watch.told = held[end - 1].id
        self._store.tell(held[:end])

    def _start(self, work: Coroutine[Any, Any, None], watch: _Watch) -> None:
        watch.busy = True
        task = asyncio.get_running_loop().create_task(work, name=f"chime-store-watch-{watch.channel}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _current(self, watch: _Watch) -> bool:
        return self._watches.get(watch.channel) is watch

    async def _begin(self, watch: _Watch) -> None:
        try:
            watch.baseline = await self._store._read_last_id(watch.channel)
        except Exception as exc:
            if not watch.ready.done() and self._current(watch):  # its watchers hear it (and unwatch)
                watch.ready.set_exception(exc)
            return
        watch.busy = False
        if not watch.ready.done():
            watch.ready.set_result(None)
        if self._current(watch):
            self._drain(watch)

    async def _catch_up(self, watch: _Watch) -> None:
        """Tell what the stream holds after what was told (this store's own queued events first),
        then what arrived meanwhile; read again while a gap is left."""
        while self._current(watch):
            try:
                if self._store._owns(watch.channel):
                    await self._store._flush_channels({watch.channel})
                events = await self._store.read_after(watch.channel, watch.floor, CATCH_UP_PAGE_EVENTS)
            except Exception as exc:
                log.warning("catching up with channel %s failed: %s; trying again", watch.channel, exc)
                await asyncio.sleep(CATCH_UP_RETRY_S)
                continue
            if not self._current(watch):
                return
            fresh = [event for event in events if event.id > watch.floor]  # told meanwhile: not again
            if fresh:
                watch.told = fresh[-1].id
                self._store.tell(fresh)
            if len(events) == CATCH_UP_PAGE_EVENTS:
                continue
            watch.held = [event for event in watch.held if event.id > watch.floor]
            if not events and watch.held and watch.held[0].id != watch.floor + 1:
                watch.held = []  # the stream has no such ids (the channel was deleted): nothing to tell
            self._tell_run(watch)
            if not watch.held:
                break
        watch.busy = False


class Subscriber:
    """One pub/sub connection; resubscribes to everything after a reconnect.

    ``on_live(name)`` is called when the latest SUBSCRIBE sent for ``name`` is
    confirmed (and after each reconnect), ``on_message(name, payload)`` for each
    message. Commands are sent by one task, never while the connection is being
    set up. A connection quiet for ``HEARTBEAT_S`` is sent a PING, and replaced
    when nothing answers within ``reply_s``.
    """

    def __init__(self, client: redis.asyncio.Redis, on_message: Callable[[bytes, bytes], None],
                 on_live: Callable[[bytes], None], *, reply_s: float) -> None:
        self._client = client
        self._on_message = on_message
        self._on_live = on_live
        self._reply_s = reply_s
        self._heard_at = 0.0  # event-loop time of the last bytes read on the current connection
        self._conn: redis.asyncio.connection.AbstractConnection = (
            client.connection_pool.make_connection())  # type: ignore[no-untyped-call]  # unannotated in redis-py
        self._wanted: set[bytes] = set()
        # SUBSCRIBEs sent and confirmed per name on the current connection: live when they match.
        self._sent: dict[bytes, int] = {}
        self._confirmed: dict[bytes, int] = {}
        self._outbox: list[tuple[bytes, ...]] = []
        self._outbox_ready = asyncio.Event()
        self._lock = asyncio.Lock()  # held while connecting (its handshake) and while sending
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop(), name="chime-store-pubsub"),
                       loop.create_task(self._send_loop(), name="chime-store-pubsub-send"),
                       loop.create_task(self._heartbeat_loop(), name="chime-store-pubsub-heartbeat")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._conn.disconnect(nowait=True)
        await self._client.aclose()

    def subscribe(self, name: bytes) -> None:
        self._wanted.add(name)
        self._sent[name] = self._sent.get(name, 0) + 1
        self._queue(b"SUBSCRIBE", name)

    def unsubscribe(self, name: bytes) -> None:
        self._wanted.discard(name)
        self._queue(b"UNSUBSCRIBE", name)

    def _queue(self, *command: bytes) -> None:
        self._outbox.append(command)
        self._outbox_ready.set()

    async def _send_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            async with self._lock:
                commands, self._outbox = self._outbox, []
                if not commands or not self._conn.is_connected:
                    continue  # the reconnect subscribes to every wanted name again
                try:
                    await self._conn.send_packed_command(self._conn.pack_commands(commands), check_health=False)
                except CONNECTION_ERRORS:
                    pass  # the read loop sees the connection drop and reconnects

    async def _read_loop(self) -> None:
        delay_s = RECONNECT_FIRST_S
        while True:
            try:
                if not self._conn.is_connected:
                    async with self._lock:
                        await self._conn.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                        self._resubscribe()
                    delay_s = RECONNECT_FIRST_S
                await self._read_until_dropped()
            except _RECONNECT as exc:
                log.warning("the pub/sub connection to Redis failed: %s; reconnecting in %.2f s", exc, delay_s)
                await self._conn.disconnect(nowait=True)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    async def _read_until_dropped(self) -> None:
        """Hand each message to ``_handle``, every one that one read brought in a row; raise
        when the connection drops.

        It reads the connection's stream through a hiredis reader of its own, not
        redis-py's ``read_response``: that costs several coroutine layers and a timeout
        context per message, and with a thousand streams across processes every event
        is a message. The stream is set up (and authenticated) by redis-py's ``connect``.
        """
        stream = self._conn._reader
        if stream is None:
            raise redis.exceptions.ConnectionError("the pub/sub connection is not open")
        reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        loop = asyncio.get_running_loop()
        self._heard_at = loop.time()
        while True:
            data = await stream.read(READ_SIZE)
            if not data:
                raise redis.exceptions.ConnectionError("Redis closed the pub/sub connection")
            self._heard_at = loop.time()
            reader.feed(data)
            while (response := reader.gets()) is not False:
                if isinstance(response, redis.exceptions.ResponseError):
                    raise response
                try:
                    self._handle(response)
                except Exception:  # one bad message must not end every later one
                    log.exception("a pub/sub message from Redis could not be handled: %r", response)

    async def _heartbeat_loop(self) -> None:
        """PING a connection quiet for ``HEARTBEAT_S``; drop it when the answer does not come
        within ``reply_s`` (the read loop then reconnects and every watch catches up)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self._conn.is_connected or loop.time() - self._heard_at < HEARTBEAT_S:
                continue
            asked_at = loop.time()
            self._queue(b"PING")
            await asyncio.sleep(self._reply_s)
            if self._heard_at < asked_at and self._conn.is_connected:
                log.warning("the pub/sub connection to Redis did not answer a PING within %.1f s; "
                            "replacing it", self._reply_s)
                await self._conn.disconnect(nowait=True)

    def _resubscribe(self) -> None:
        """A new connection: every wanted name is subscribed again, and nothing else queued counts."""
        self._outbox = [(b"SUBSCRIBE", *self._wanted)] if self._wanted else []
        self._sent = dict.fromkeys(self._wanted, 1)
        self._confirmed = {}
        self._outbox_ready.set()

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list):
            return  # PONG outside subscribed mode: the heartbeat's answer, heard already
        kind, name = response[0], response[1]
        if kind == b"message":
            if name in self._wanted:
                self._on_message(name, response[2])
        elif kind == b"subscribe":
            confirmed = self._confirmed[name] = self._confirmed.get(name, 0) + 1
            if confirmed == self._sent.get(name) and name in self._wanted:
                self._on_live(name)
        elif kind == b"unsubscribe" and name not in self._wanted:
            if self._confirmed.get(name) == self._sent.get(name):
                self._sent.pop(name, None)
                self._confirmed.pop(name, None)
