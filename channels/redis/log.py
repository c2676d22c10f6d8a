"""The ``EventLog`` seam in Redis: channels, the group commit of their events, reads of them.

Appends go through one flusher task (group commit): it takes every event that
arrived while the previous round ran and sends them in one round trip, one run
of the ``append`` script (``channels.redis.scripts``) over every channel's batch.
It stores each batch as stream entries whose ids are the event ids, and
publishes it for other processes. When the reply is in, the flusher tells
``on_commit`` of every stored batch, then resolves the waiting appends.

Ids are taken here, when an event is queued, so ``append(..., wait=False)``
returns with its id; the process knows the last id of each channel it appends to
(read from Redis the first time), and the script checks that a batch starts
right after the stored last id. Another process appends to a channel only its
terminal event (ending a dead process's answer); a batch after it is refused
as ``ChannelClosed``.

A round whose outcome is unknown (the connection dropped, a reply timed out) is
sent again whole under the same ids: the script recognises what it already
stored, so each event is stored once and told once, in id order. It is sent
again until ``recovery_s`` after the first unknown outcome; then its events, and
every other one waiting, fail with ``StoreUnavailable`` (and, by the scripts'
deadline, never land later). A refusal (an unknown or closed channel, ids that do
not continue) fails that channel's batch only: its queued events are dropped,
ids stay gapless, ``on_failure`` hears of it, and the channel's next append
raises it.

Reads (``read_after``, ``get_channel``, ...) are single commands with the
store's timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import redis.exceptions

from channels.appends import AppendQueue, ChannelLog, Pending
from channels.events import META, TERMINAL_TYPES, Event
from channels.redis.database import CONNECTION_ERRORS, TIMEOUT_S, RedisDatabase, busy_reply, unavailable
from channels.redis.scripts import APPEND, CLOSED, CONFLICT, CREATE, LATE, STORED, UNKNOWN
from channels.redis.watch import Watches
from channels.store import (
    ChannelClosed,
    ChannelRecord,
    StoreUnavailable,
    UnknownChannel,
    utc_now,
)

log = logging.getLogger("chime.store")

# Each round takes at most this many events, so one huge backlog cannot hold every
# waiting append for one long round trip (or Redis for one long run of scripts).
MAX_ROUND_EVENTS = 4096
# ``append(..., wait=False)`` stops returning at once when this many events wait for a
# round: a model faster than Redis is slowed to Redis's pace.
MAX_UNAWAITED_BACKLOG = 2 * MAX_ROUND_EVENTS
# How long a round whose outcome is unknown is sent again before its events fail, and the
# first wait between two tries (doubling, at most RECOVERY_BACKOFF_MAX_S).
RECOVERY_S = 3.0
RECOVERY_BACKOFF_S = 0.05
RECOVERY_BACKOFF_MAX_S = 0.5
# Stream ids are unsigned 64-bit: a resume point at or past this has nothing after it.
MAX_STREAM_ID = 2**64 - 1

_TYPE_NAMES = {name.encode(): name for name in (META, "delta", "usage", *TERMINAL_TYPES)}


class _Retry(Exception):
    """One channel's batch was not run (its script not loaded, its deadline passed, Redis busy)."""


class _Conflict(StoreUnavailable):
    """The channel's stored ids do not continue where its batch starts: another process appended."""

    def __init__(self, channel: str, last: int) -> None:
        super().__init__(f"channel {channel} has {last} events stored, not the ids this process expected")
        self.last = last


# What a round sends again: a batch that was not run, or whose outcome is unknown.
_SENT_AGAIN: tuple[type[BaseException], ...] = (_Retry, *CONNECTION_ERRORS)
_PREPARE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)


class RedisLog(RedisDatabase, AppendQueue):
    """``EventLog`` in Redis: two small fields per running channel, one queue of pending events."""

    def __init__(self, url: str, *, prefix: str = "chime", timeout_s: float = TIMEOUT_S,
                 recovery_s: float = RECOVERY_S) -> None:
        RedisDatabase.__init__(self, url, prefix=prefix, timeout_s=timeout_s)
        AppendQueue.__init__(self, MAX_UNAWAITED_BACKLOG)
        self.recovery_s = recovery_s
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False
        self._watches = Watches(self)
        self._script_lost = False  # a reply said NOSCRIPT: load it before the next try
        self._clock_off = False    # a reply said LATE: measure the clock before the next try
        self.commits = 0
        self.committed_events = 0

    async def open(self) -> None:
        await super().open()
        self._closing = False  # a closed store may be opened again
        self._logs.clear()  # another process may have ended them meanwhile: read again when needed
        self._wake = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="chime-store-flusher")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
            self._flusher = None
        await self._watches.close()
        await super().close()

    # ---- channels --------------------------------------------------------

    async def create_channel(self, channel_id: str, user_id: str, conversation_id: str, model: str) -> Event:
        return await self._create(channel_id, user_id, conversation_id, model, utc_now(), {})

    async def _create(self, channel_id: str, user_id: str, conversation_id: str, model: str, now: str,
                      records: dict[str, str]) -> Event:
        """A new channel's hash and its ``meta`` event in one script with ``records`` (the rest of a
        submission), then told like any commit."""
        meta = Event.make(channel_id, 1, META, {"channel": channel_id, "conversation_id": conversation_id,
                                                "model": model})
        await self._script(CREATE, {"origin": self.origin, "now": now, "channel": channel_id, "user": user_id,
                                    "conversation": conversation_id, "model": model,
                                    "meta": meta.data_json.decode(), **records})
        self._logs[channel_id] = ChannelLog(meta.id + 1)
        self.commits += 1
        self.committed_events += 1
        self._tell([[meta]])
        return meta

    # ---- reading ---------------------------------------------------------

    async def get_channel(self, channel_id: str) -> ChannelRecord | None:
        fields: dict[bytes, bytes]
        fields, last = await self._pipelined(lambda pipe: [  # the last id is the stream's length
            pipe.hgetall(self.keys.channel(channel_id)), pipe.xlen(self.keys.log(channel_id))])
        if not fields:
            return None
        finished_at, usage = fields.get(b"finished_at"), fields.get(b"usage")
        return ChannelRecord(channel_id, fields[b"user_id"].decode(), fields[b"conversation_id"].decode(),
                             fields[b"model"].decode(), fields[b"status"].decode(), fields[b"created_at"].decode(),
                             finished_at.decode() if finished_at is not None else None,
                             orjson.loads(usage) if usage else None, last)

    async def read_after(self, channel_id: str, after: int, limit: int = 1000) -> list[Event]:
        if after >= MAX_STREAM_ID or limit <= 0:
            return []
        start = after + 1 if after >= 0 else 0
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self._read(
            lambda r: r.xrange(self.keys.log(channel_id), min=start, count=limit))
        return [Event(channel_id, int(entry_id[:entry_id.index(b"-")]), _TYPE_NAMES.get(fields[b"t"])
                      or fields[b"t"].decode(), fields[b"d"]) for entry_id, fields in entries]

    async def channel_content(self, channel_id: str) -> str:
        text: bytes | None = await self._read(lambda r: r.get(self.keys.text(channel_id)))
        return text.decode() if text else ""

    async def running_channels(self) -> list[str]:
        members: set[bytes] = await self._read(lambda r: r.smembers(self.keys.running))
        return [member.decode() for member in members]

    # ---- other processes' commits ----------------------------------------

    async def watch(self, channel_id: str) -> None:
        """Tell ``on_commit`` of the channel's commits made by other processes too, from now on.

        Returns once that holds: events committed after this returns reach ``on_commit``
        (in id order, each once, after this store's own); those committed before are in
        the stream for the caller to read. Each ``watch`` is undone by one ``unwatch``.
        """
        await self._watches.watch(channel_id)

    def unwatch(self, channel_id: str) -> None:
        self._watches.unwatch(channel_id)

    async def _read_last_id(self, channel_id: str) -> int:
        last: int = await self._read(lambda r: r.xlen(self.keys.log(channel_id)))
        return last

    def _owns(self, channel_id: str) -> bool:
        """Whether this store appends to the channel (its own events may be on the way)."""
        return channel_id in self._logs

    # ---- appending: the group commit -------------------------------------

    async def _load_log(self, channel_id: str) -> ChannelLog:
        status: bytes | None
        status, last = await self._pipelined(lambda pipe: [
            pipe.hget(self.keys.channel(channel_id), "status"), pipe.xlen(self.keys.log(channel_id))])
        if status is None:
            raise UnknownChannel(channel_id)
        if status != b"running":  # kept out of ``_logs``: an ended channel needs no entry there
            raise ChannelClosed(channel_id)
        # Another append may have loaded it while this one waited.
        return self._logs.setdefault(channel_id, ChannelLog(last + 1))

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._in_flight = self._pending[:MAX_ROUND_EVENTS]
                del self._pending[:MAX_ROUND_EVENTS]
                try:
                    await self._commit(batch)
                except Exception as exc:  # a bug here must not stop every later commit
                    log.exception("a round of %d events failed", len(batch))
                    self._fail(batch, exc)
                self._in_flight = []
            if self._closing:
                return

    @staticmethod
    def _by_channel(batch: list[Pending]) -> dict[str, list[Pending]]:
        groups: dict[str, list[Pending]] = {}
        for pending in batch:
            group = groups.get(pending.event.channel)
            if group is None:
                groups[pending.event.channel] = [pending]
            else:
                group.append(pending)
        return groups

    async def _commit(self, batch: list[Pending]) -> None:
        """One round: every channel's batch in one round trip, sent again until its outcome is known."""
        groups = self._by_channel(batch)
        give_up_at: float | None = None
        backoff_s = RECOVERY_BACKOFF_S
        while groups:
            replies = await self._send(groups)
            stored: list[list[Pending]] = []
            again: dict[str, list[Pending]] = {}
            failed: dict[str, BaseException] = {}
            for (channel, group), reply in zip(groups.items(), replies, strict=True):
                try:
                    self._settle(channel, reply)
                    stored.append(group)
                except _SENT_AGAIN as exc:
                    again[channel] = group
                    failed[channel] = exc
                except _Conflict as exc:
                    if self._renumber(channel, group, exc.last):
                        again[channel] = group
                        failed[channel] = exc
                    else:
                        self._fail(group, exc)
                except Exception as exc:
                    self._fail(group, exc)
            if stored:
                self._committed(stored)
            groups = again
            if not groups:
                return
            now = time.monotonic()
            give_up_at = now + self.recovery_s if give_up_at is None else give_up_at
            reason = next(iter(failed.values()))
            if now >= give_up_at:
                log.error("Redis did not take %d channels' events within %.1f s: %s", len(groups),
                          self.recovery_s, reason)
                self._give_up(groups, unavailable(reason))
                return
            log.warning("a round of %d channels' events is sent again: %s", len(groups), reason)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RECOVERY_BACKOFF_MAX_S)
            await self._prepare_retry()

    async def _prepare_retry(self) -> None:
        """Load the append script again (Redis restarted), measure the clock again (a deadline
        passed); what fails here fails the next try too, and is counted there."""
        try:
            if self._script_lost:
                await self._r.script_load(APPEND.source)
                self._script_lost = False
            if self._clock_off:
                await self._sync_clock()
                self._clock_off = False
        except _PREPARE_ERRORS:
            pass

    async def _send(self, groups: dict[str, list[Pending]]) -> list[Any]:
        """Run the append script over every channel's batch, in one round trip; the reply for
        each channel, in the order of ``groups``: ``(status, last id)`` or an exception."""
        keys: list[str] = [self.keys.running]
        args: list[Any] = [self.deadline_ms(), self.origin, utc_now()]
        for channel, group in groups.items():
            keys += self.keys.appending(channel)
            args += (channel, group[0].event.id, len(group), "".join([pending.text for pending in group]))
            for pending in group:
                event = pending.event
                args += (event.type, event.data_json)
        try:
            reply = await self._run_packed((b"EVALSHA", APPEND.sha, len(keys), *keys, *args))
        except CONNECTION_ERRORS as exc:  # unknown outcome: the script keeps what it stored
            return [exc] * len(groups)
        if isinstance(reply, BaseException):
            return [reply] * len(groups)
        if reply == [LATE]:
            return [(LATE, 0)] * len(groups)
        return list(zip(reply[::2], reply[1::2], strict=True))

    def _settle(self, channel: str, reply: Any) -> None:
        """Return when the channel's batch is stored; raise what became of it otherwise."""
        if isinstance(reply, BaseException):
            if isinstance(reply, redis.exceptions.NoScriptError):
                self._script_lost = True
                raise _Retry("the append script was not loaded")
            if busy_reply(reply):
                raise _Retry(str(reply))
            raise reply
        status, last = reply
        if status == STORED:
            return
        if status == LATE:
            self._clock_off = True
            raise _Retry("the deadline passed before the append script ran")
        if status == UNKNOWN:
            raise UnknownChannel(channel)
        if status == CLOSED:
            raise ChannelClosed(channel)
        assert status == CONFLICT, reply
        raise _Conflict(channel, last)

    def _renumber(self, channel: str, group: list[Pending], last: int) -> bool:
        """Give ``group`` (and the channel's events queued behind it) the ids after ``last``,
        the stored last id, unless one of their ids is known already; whether it did.

        Another process appended to the channel after this one read its last id: a sweeper
        ending a channel whose owner it thinks lost races the owner's last events. The
        sweeper's terminal event, awaited, takes the next free id.
        """
        behind = [p for p in self._pending if p.event.channel == channel]
        if any(p.revealed for p in group) or any(p.revealed for p in behind):
            return False
        next_id = last + 1
        for pending in (*group, *behind):
            event = pending.event
            pending.event = Event(channel, next_id, event.type, event.data_json)
            next_id += 1
        log_ = self._logs.get(channel)
        if log_ is not None:
            log_.next_id = next_id
        return True

    def _committed(self, groups: list[list[Pending]]) -> None:
        self.commits += 1
        self.committed_events += sum(len(group) for group in groups)
        self._tell([[p.event for p in group] for group in groups])
        for group in groups:
            for pending in group:
                if pending.future is not None and not pending.future.done():
                    pending.future.set_result(pending.event)
            last = group[-1].event
            if last.terminal:
                self._logs.pop(last.channel, None)

    def _tell(self, groups: list[list[Event]]) -> None:
        """Tell ``on_commit`` of this store's own commits (one channel's run of events per group)."""
        if self.on_commit is None:
            return
        if self._watches:
            groups = [events for group in groups if (events := self._watches.local(group))]
        events = groups[0] if len(groups) == 1 else [event for group in groups for event in group]
        if events:
            self.tell(events)

    def tell(self, events: list[Event]) -> None:
        """Call ``on_commit``, whose failure is logged, never raised into the commit."""
        if self.on_commit is not None:
            try:
                self.on_commit(events)
            except Exception:
                log.exception("on_commit listener failed")

    def _give_up(self, groups: dict[str, list[Pending]], exc: StoreUnavailable) -> None:
        """Redis stayed out of reach for ``recovery_s``: these, and every event waiting, fail."""
        doomed = [p for group in groups.values() for p in group] + self._pending
        self._pending = []
        self._fail(doomed, exc)
