"""The ``EventLog`` seam in SQLite: channels, the group commit of their events, and reads of them.

Writes of events go through one writer task (group commit): it takes every
event that arrived while the previous commit ran, writes them in one
transaction, commits, then tells ``on_commit``. Reads use the reader connection,
so they see exactly what is committed and never wait for a writer.

A commit the writer process died under (``WriterGone``) has an unknown outcome,
not a failed one: once another writer runs, the database says which of its
events are stored. Those are told and resolved as committed; the others are
sent again, first in the next commit, under the ids they already have. Only a
commit that failed for a known reason (a constraint, a full disk, a lock held
past the busy timeout) drops its channels' queued events.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Unpack

import orjson

from channels.appends import AppendQueue, ChannelLog, Pending
from channels.events import META, Event
from channels.sqlite.database import Database, Statement, Tuning
from channels.sqlite.writer import SQL_DELTAS, WriterGone
from channels.store import (
    ChannelClosed,
    ChannelRecord,
    StoreUnavailable,
    UnknownChannel,
    utc_now,
)

log = logging.getLogger("chime.store")

# A channel's events are in ``events`` once folded and in ``recent_events`` until then;
# a fold moves them in one transaction, so each statement below sees every one exactly once.
SQL_READ_AFTER = """
    SELECT id, type, data FROM events WHERE channel = ?1 AND id > ?2
    UNION ALL SELECT id, type, data FROM recent_events WHERE channel = ?1 AND id > ?2
    ORDER BY id LIMIT ?3
"""
# The last event id of channel ?1 (0 for none).
_LAST_ID = """MAX((SELECT COALESCE(MAX(id), 0) FROM events WHERE channel = ?1),
               (SELECT COALESCE(MAX(id), 0) FROM recent_events WHERE channel = ?1))"""
SQL_LAST_ID = f"SELECT {_LAST_ID}"
# The last stored event id of each channel in the JSON array ?1 (absent: none), in one read.
# ``events`` answers by its primary key; ``recent_events`` has no index on channel, so it
# is scanned once for all of them rather than once per channel.
SQL_LAST_IDS = """
    SELECT channel, MAX(id) FROM (
        SELECT value AS channel, (SELECT MAX(id) FROM events WHERE channel = value) AS id FROM json_each(?1)
        UNION ALL
        SELECT channel, MAX(id) FROM recent_events WHERE channel IN (SELECT value FROM json_each(?1))
        GROUP BY channel
    ) WHERE id IS NOT NULL GROUP BY channel
"""
SQL_CHANNEL = f"""
    SELECT c.id, c.user_id, c.conversation_id, c.model, c.status, c.created_at, c.finished_at, c.usage,
           {_LAST_ID}
    FROM channels c WHERE c.id = ?1
"""
SQL_CHANNEL_STATUS = "SELECT status FROM channels WHERE id = ?"
SQL_RUNNING = "SELECT id FROM channels WHERE status = 'running'"
SQL_INSERT_CHANNEL = ("INSERT INTO channels (id, user_id, conversation_id, model, status, created_at) "
                      "VALUES (?, ?, ?, ?, 'running', ?)")
SQL_CHANNELS_OF = "SELECT id FROM channels WHERE conversation_id = ?"
SQL_DELETE_CHANNELS_OF = "DELETE FROM channels WHERE conversation_id = ?"

# Each commit takes at most this many events, so one huge backlog cannot hold
# every waiting writer for a single long transaction.
MAX_BATCH_EVENTS = 4096
# ``append(..., wait=False)`` stops returning at once when this many events wait
# for a commit: a model faster than the disk is slowed to the disk's pace.
MAX_UNAWAITED_BACKLOG = 2 * MAX_BATCH_EVENTS
# A commit whose writer died is recovered at most this many times in a row (another writer
# started, what it stored read back), waiting twice as long before each try after the first
# from this; then it fails like any commit. A writer that dies on every commit, or a database
# that cannot be read, costs its answers about a second, never a loop.
MAX_RECOVERIES = 4
RECOVERY_BACKOFF_S = 0.1


class SQLiteLog(Database, AppendQueue):
    """``EventLog`` in SQLite: two small fields per running channel, one queue of pending events."""

    def __init__(self, path: Path | str, **tuning: Unpack[Tuning]) -> None:
        Database.__init__(self, path, **tuning)
        AppendQueue.__init__(self, MAX_UNAWAITED_BACKLOG)
        self._recoveries = 0  # unknown outcomes in a row
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.committed_events = 0

    async def open(self) -> None:
        await super().open()
        self._closing = False  # a closed store may be opened again
        self._wake = asyncio.Event()
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop(), name="chime-store-writer")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
            self._writer_task = None
        await super().close()

    # ---- channels --------------------------------------------------------

    async def create_channel(self, channel_id: str, user_id: str, conversation_id: str, model: str) -> Event:
        return await self._create(channel_id, user_id, conversation_id, model, utc_now())

    async def _create(self, channel_id: str, user_id: str, conversation_id: str, model: str, now: str,
                      alongside: Sequence[Statement] = ()) -> Event:
        """A new channel's row and its ``meta`` event in one transaction with ``alongside``
        (records of the same submission), then told like any commit.

        The meta row rides in the same ordered pipe as the group commits, and nothing can
        be appended to the channel before this returns, so readers still hear ids in order.
        """
        meta = Event.make(channel_id, 1, META, {"channel": channel_id, "conversation_id": conversation_id,
                                                "model": model})
        statements = [*alongside, (SQL_INSERT_CHANNEL, (channel_id, user_id, conversation_id, model, now))]
        try:
            await self._write_transaction(statements, [(channel_id, meta.id, meta.type, meta.data_json)])
        except WriterGone:
            # The writer died with the transaction: whether it committed is in the database.
            if await self._fetchone(SQL_CHANNEL_STATUS, (channel_id,)) is None:
                raise
        self._logs[channel_id] = ChannelLog(meta.id + 1)
        self.commits += 1
        self.committed_events += 1
        self._tell([meta])
        return meta

    async def _channels_of(self, conversation_id: str) -> list[str]:
        return [row[0] for row in await self._fetchall(SQL_CHANNELS_OF, (conversation_id,))]

    # ---- reading ---------------------------------------------------------

    async def get_channel(self, channel_id: str) -> ChannelRecord | None:
        row = await self._fetchone(SQL_CHANNEL, (channel_id,))
        if row is None:
            return None
        usage = orjson.loads(row[7]) if row[7] else None
        return ChannelRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], usage, row[8])

    async def read_after(self, channel_id: str, after: int, limit: int = 1000) -> list[Event]:
        rows = await self._fetchall(SQL_READ_AFTER, (channel_id, after, limit))
        return [Event(channel_id, id_, type_, data) for id_, type_, data in rows]

    async def channel_content(self, channel_id: str) -> str:
        rows = await self._fetchall(SQL_DELTAS, (channel_id,))
        return "".join(orjson.loads(data)["content"] for _, data in rows)

    async def running_channels(self) -> list[str]:
        return [row[0] for row in await self._fetchall(SQL_RUNNING)]

    async def watch(self, channel_id: str) -> None:
        """Nothing to watch: one process owns the database, and every commit is its own."""

    def unwatch(self, channel_id: str) -> None:
        """Nothing to undo (see ``watch``)."""

    # ---- appending: the group commit -------------------------------------

    async def _load_log(self, channel_id: str) -> ChannelLog:
        row = await self._fetchone(SQL_CHANNEL_STATUS, (channel_id,))
        if row is None:
            raise UnknownChannel(channel_id)
        if row[0] != "running":  # kept out of ``_logs``: an ended channel needs no entry there
            raise ChannelClosed(channel_id)
        (last_id,) = await self._fetchone(SQL_LAST_ID, (channel_id,))
        # Another append may have loaded it while this one waited.
        return self._logs.setdefault(channel_id, ChannelLog(last_id + 1))

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if self._writes_held is not None:
                    await self._writes_held
                batch = self._in_flight = self._pending[:MAX_BATCH_EVENTS]
                del self._pending[:MAX_BATCH_EVENTS]
                await self._commit(batch)
                self._in_flight = []
            if self._closing:
                return

    async def _commit(self, batch: list[Pending]) -> None:
        events = [p.event for p in batch]
        try:
            await self._write_events(events)
        except WriterGone as exc:
            await self._recover(batch, exc)
            return
        except Exception as exc:  # the disk is full, the file is gone: fail the batch, not the server
            self._recoveries = 0
            log.exception("commit of %d events failed", len(events))
            self._fail(batch, exc)
            return
        self._recoveries = 0
        self._committed(batch, events)

    def _committed(self, batch: list[Pending], events: list[Event]) -> None:
        self.commits += 1
        self.committed_events += len(events)
        self._maybe_checkpoint(len(events))
        self._tell(events)
        for p in batch:
            if p.future and not p.future.done():
                p.future.set_result(p.event)
        for event in events:
            if event.terminal:
                self._logs.pop(event.channel, None)

    async def _recover(self, batch: list[Pending], gone: Exception) -> None:
        """The writer died with ``batch`` in flight: complete what it stored, send the rest again.

        The transaction either committed or not, so each channel's stored events are a
        prefix of its events here. The rest keep their ids and go first in the next
        commit, ahead of the events queued since: ids stay gapless and nothing is
        stored twice. A terminal event is sent again whole, with the status and the
        answer its commit sets.
        """
        try:
            stored = await self._stored_ids(list({p.event.channel: None for p in batch}), gone)
        except Exception as exc:  # tried enough, or cannot be tried again (a newer schema)
            self._recoveries = 0
            log.exception("a commit of %d events the database writer died under could not be recovered",
                          len(batch))
            self._fail(batch, exc)
            return
        done = [p for p in batch if p.event.id <= stored.get(p.event.channel, 0)]
        again = [p for p in batch if p.event.id > stored.get(p.event.channel, 0)]
        log.warning("the database writer exited during a commit of %d events: %d were stored, %d go again",
                    len(batch), len(done), len(again))
        if done:
            self._committed(done, [p.event for p in done])
        if again:
            self._pending[:0] = again
        else:  # it had committed: nothing is left to go wrong in a row
            self._recoveries = 0

    async def _stored_ids(self, channels: list[str], gone: Exception) -> dict[str, int]:
        """Each channel's last stored id (absent: none), read once another writer runs and the
        dead one is reaped. Raises the last failure once ``MAX_RECOVERIES`` ran in a row."""
        wanted = orjson.dumps(channels).decode()
        while self._recoveries < MAX_RECOVERIES:
            if self._recoveries:
                await asyncio.sleep(RECOVERY_BACKOFF_S * 2 ** (self._recoveries - 1))
            self._recoveries += 1
            try:
                await self._w.ensure_running()
                return dict(await self._fetchall(SQL_LAST_IDS, (wanted,)))
            except (StoreUnavailable, OSError, sqlite3.Error) as exc:  # another dead writer, a lock
                log.warning("recovering a commit the database writer died under: %s", exc)
                gone = exc
        raise gone

    def _tell(self, events: list[Event]) -> None:
        if self.on_commit is not None:
            try:
                self.on_commit(events)
            except Exception:
                log.exception("on_commit listener failed")

    async def _write_events(self, events: list[Event]) -> None:
        # No deadline: a group commit's outcome must be known before ids are reused, and the
        # writer's lock wait (``BUSY_TIMEOUT_MS``) already bounds how long it can take.
        await self._w.run("events", [(e.channel, e.id, e.type, e.data_json) for e in events])


def channel_deletion(conversation_id: str, channels: list[str]) -> list[Statement]:
    """The channels of a conversation with their events; before the conversation, in one transaction."""
    marks = ",".join("?" * len(channels))
    statements: list[Statement] = [
        (f"DELETE FROM events WHERE channel IN ({marks})", channels),
        (f"DELETE FROM recent_events WHERE channel IN ({marks})", channels),
    ] if channels else []
    return statements + [(SQL_DELETE_CHANNELS_OF, (conversation_id,))]
