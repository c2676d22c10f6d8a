"""SQLite implementation of the ``Store`` contract.

Writes of events go through one writer task (group commit): it takes every
event that arrived while the previous commit ran, writes them in one
transaction, commits, then tells ``on_commit``. Reads use a second connection
(aiosqlite), so in WAL mode they see exactly what is committed and never wait
for a writer.

Every write transaction runs in the writer process (``channels.sqlite_writer``),
one at a time, in the order they were sent. The event loop keeps only the cost
of handing each group commit over and hearing it is done; the B-tree inserts
and WAL appends use the other core (measured at 1000 paced streams: the loop's
CPU per token went from 41 to 32 µs). In WAL mode with ``synchronous = NORMAL``
a commit appends to the WAL file without an fsync. The one slow part, the
checkpoint that copies the WAL into the database and fsyncs, is taken off the
writer (``wal_autocheckpoint = 0``) and run by a third connection on its own
thread once enough has been written.

Every call has a deadline: a write the writer cannot start within
``write_deadline_s`` (a locked database, a backlog, a stuck or restarting
writer) raises ``StoreUnavailable`` and never lands later; reads wait for a lock
at most ``BUSY_TIMEOUT_MS``. A dead writer (``WriterGone``) is retried once
where running the write twice changes nothing; otherwise it stays a
``StoreUnavailable``, whose outcome ``create_answer`` settles by looking.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import aiosqlite
import orjson

from channels.events import META, TERMINAL_TYPES, Event
from channels.sqlite_writer import (
    FOLD_AFTER_S,
    FOLD_ROWS,
    PRAGMAS,
    SQL_DELTAS,
    WriterGone,
    WriterProcess,
    secure_files,
    unavailable,
)
from channels.store import (
    ChannelClosed,
    ChannelRecord,
    CommitListener,
    ConversationRecord,
    MessageRecord,
    NewAnswer,
    PushSubscription,
    UnknownChannel,
    utc_now,
)

log = logging.getLogger("chime.store")

# Numbered migrations: index + 1 is the schema version (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id          TEXT PRIMARY KEY,
        token_hash  TEXT NOT NULL UNIQUE,
        created_at  TEXT NOT NULL
    );
    CREATE TABLE conversations (
        id          TEXT PRIMARY KEY,
        user_id     TEXT NOT NULL REFERENCES users(id),
        title       TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        touched     INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX conversations_by_user ON conversations (user_id, updated_at DESC, touched DESC);
    CREATE TABLE channels (
        id               TEXT PRIMARY KEY,
        user_id          TEXT NOT NULL REFERENCES users(id),
        conversation_id  TEXT NOT NULL REFERENCES conversations(id),
        model            TEXT NOT NULL,
        status           TEXT NOT NULL DEFAULT 'running',
        created_at       TEXT NOT NULL,
        finished_at      TEXT,
        usage            TEXT
    );
    CREATE INDEX channels_running ON channels (status) WHERE status = 'running';
    CREATE INDEX channels_by_conversation ON channels (conversation_id);
    CREATE TABLE events (
        channel  TEXT NOT NULL,
        id       INTEGER NOT NULL,
        type     TEXT NOT NULL,
        data     BLOB NOT NULL,
        PRIMARY KEY (channel, id)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id  TEXT NOT NULL REFERENCES conversations(id),
        role             TEXT NOT NULL,
        content          TEXT NOT NULL,
        channel          TEXT,
        status           TEXT NOT NULL,
        created_at       TEXT NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, seq);
    CREATE INDEX messages_by_channel ON messages (channel) WHERE channel IS NOT NULL;
    CREATE TABLE push_subscriptions (
        endpoint    TEXT PRIMARY KEY,
        user_id     TEXT NOT NULL REFERENCES users(id),
        p256dh      TEXT NOT NULL,
        auth        TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user_id);
    """,
    # Events are appended here in commit order and folded into ``events`` in batches
    # (``channels.sqlite_writer.Writer``): a commit then writes a few pages, not one per channel.
    """
    CREATE TABLE recent_events (
        seq      INTEGER PRIMARY KEY,
        channel  TEXT NOT NULL,
        id       INTEGER NOT NULL,
        type     TEXT NOT NULL,
        data     BLOB NOT NULL
    );
    """,
)

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
SQL_CHANNEL = f"""
    SELECT c.id, c.user_id, c.conversation_id, c.model, c.status, c.created_at, c.finished_at, c.usage,
           {_LAST_ID}
    FROM channels c WHERE c.id = ?1
"""
SQL_CHANNEL_STATUS = "SELECT status FROM channels WHERE id = ?"

SQL_INSERT_USER = "INSERT INTO users (id, token_hash, created_at) VALUES (?, ?, ?)"
# ``touched`` orders conversations updated within the same millisecond: the latest is first.
_NEXT_TOUCH = "(SELECT COALESCE(MAX(touched), 0) + 1 FROM conversations)"
SQL_INSERT_CONVERSATION = ("INSERT INTO conversations (id, user_id, title, created_at, updated_at, touched) "
                           f"VALUES (?, ?, ?, ?, ?, {_NEXT_TOUCH})")
SQL_TOUCH_CONVERSATION = f"UPDATE conversations SET updated_at = ?, touched = {_NEXT_TOUCH} WHERE id = ?"
SQL_INSERT_CHANNEL = ("INSERT INTO channels (id, user_id, conversation_id, model, status, created_at) "
                      "VALUES (?, ?, ?, ?, 'running', ?)")
SQL_INSERT_QUESTION = ("INSERT INTO messages (conversation_id, role, content, channel, status, created_at) "
                       "VALUES (?, 'user', ?, ?, 'done', ?)")
SQL_INSERT_ANSWER = ("INSERT INTO messages (conversation_id, role, content, channel, status, created_at) "
                     "VALUES (?, 'assistant', '', ?, 'running', ?)")

# Each commit takes at most this many events, so one huge backlog cannot hold
# every waiting writer for a single long transaction.
MAX_BATCH_EVENTS = 4096
# ``append(..., wait=False)`` stops returning at once when this many events wait
# for a commit: a model faster than the disk is slowed to the disk's pace.
MAX_UNAWAITED_BACKLOG = 2 * MAX_BATCH_EVENTS
# A background checkpoint starts once this many events were committed since the last.
CHECKPOINT_EVERY_EVENTS = 20_000
# Past this size the next checkpoint holds the writer until it ends. A checkpoint that
# runs while commits go on can never copy the newest frames, so the WAL would never
# start over and would grow by a page per event for as long as writes continue.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
# What one write transaction outside the group commit counts toward the checkpoint, in events:
# each writes pages of its own (a sign-up, ~13 KiB of WAL) where batched events share theirs.
# Uncounted, 30,000 sign-ups grew the WAL to 397 MiB with no checkpoint.
TRANSACTION_COST_EVENTS = 20
# How long a request's write may wait for the writer to start it; with the writer's lock
# wait (``BUSY_TIMEOUT_MS``) and ``REPLY_GRACE_S`` a refusal comes within 10 seconds.
WRITE_DEADLINE_S = 4.0
# How long ``writable`` reuses its last answer: a flood of health checks costs one probe.
WRITABLE_CACHE_S = 1.0


@dataclass(slots=True)
class _Pending:
    event: Event
    future: asyncio.Future[None] | None


class _ChannelLog:
    """What the writer knows of a running channel it appends to: two fields, however long the answer.

    The terminal commit joins the answer from the stored deltas in the writer process,
    so nothing here grows with the answer; the entry goes with the channel's terminal
    commit, a failed commit, or its deletion.
    """

    __slots__ = ("next_id", "closed")

    def __init__(self, next_id: int, closed: bool = False):
        self.next_id = next_id
        self.closed = closed


class SQLiteStore:
    def __init__(self, path: Path | str, *, checkpoint_every_events: int = CHECKPOINT_EVERY_EVENTS,
                 wal_limit_bytes: int = WAL_LIMIT_BYTES, fold_rows: int = FOLD_ROWS,
                 fold_after_s: float = FOLD_AFTER_S, write_deadline_s: float = WRITE_DEADLINE_S):
        self.path = Path(path)
        self.write_deadline_s = write_deadline_s
        self.checkpoint_every_events = checkpoint_every_events
        self.wal_limit_bytes = wal_limit_bytes
        self.fold_rows = fold_rows
        self.fold_after_s = fold_after_s
        self.on_commit: CommitListener | None = None
        self._writer: WriterProcess | None = None
        self._reader_db: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        # Set while a catching-up checkpoint copies the last frames: commits wait for it.
        self._writes_held: asyncio.Future[None] | None = None
        self._since_checkpoint = 0
        self._logs: dict[str, _ChannelLog] = {}
        self._pending: list[_Pending] = []
        # A failed commit of events nobody awaited is raised by the channel's next append.
        self._failures: dict[str, BaseException] = {}
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self._writable: tuple[float, bool] = (0.0, False)  # (until when, the answer)
        self._probe: asyncio.Task[bool] | None = None
        self.commits = 0
        self.committed_events = 0

    # ---- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        secure_files(self.path)
        self._writer = WriterProcess(self.path, self.wal_limit_bytes, MIGRATIONS, fold_rows=self.fold_rows,
                                     fold_after_s=self.fold_after_s)
        await self._writer.start()
        self._reader_db = await self._connect()
        self._checkpointer = await self._connect()
        self._closing = False  # a closed store may be opened again
        self._wake = asyncio.Event()
        self._writer_task = asyncio.get_running_loop().create_task(self._write_loop(), name="chime-store-writer")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
            self._writer_task = None
        for task in (self._checkpoint, self._probe):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        self._checkpoint = self._probe = None
        for db in (self._reader_db, self._checkpointer):
            if db is not None:
                await db.close()
        if self._writer is not None:
            await self._writer.close()
        self._reader_db = self._checkpointer = self._writer = None

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in PRAGMAS:
            await db.execute(pragma)
        return db

    @property
    def _w(self) -> WriterProcess:
        assert self._writer is not None, "store is not open"
        return self._writer

    @property
    def _r(self) -> aiosqlite.Connection:
        assert self._reader_db is not None, "store is not open"
        return self._reader_db

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self._r.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            raise unavailable(exc) from exc

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _write(self, *statements: tuple[str, Sequence[Any]], idempotent: bool = False) -> int:
        return await self._write_transaction(list(statements), idempotent=idempotent)

    async def _write_transaction(self, statements: list[tuple[str, Sequence[Any]]], rows: Sequence[Any] = (),
                                 *, idempotent: bool = False) -> int:
        """Run statements in one transaction (then append ``rows``); returns the rows the last
        statement changed. Only an ``idempotent`` one is sent again after ``WriterGone``."""
        if self._writes_held is not None:
            await self._writes_held
        try:
            changed = await self._w.run("statements", statements, rows, deadline_s=self.write_deadline_s)
        except WriterGone:
            if not idempotent:
                raise
            log.warning("the database writer exited during a write; sending it again")
            changed = await self._w.run("statements", statements, rows, deadline_s=self.write_deadline_s)
        self._maybe_checkpoint(TRANSACTION_COST_EVENTS + len(rows))
        return changed

    async def writable(self) -> bool:
        """Whether a write transaction can start now (nobody else holds the lock, the writer
        answers in time). One probe at a time, its answer reused for ``WRITABLE_CACHE_S``."""
        until, answer = self._writable
        if time.monotonic() < until:
            return answer
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(self._run_probe(), name="chime-store-probe")
        # Shielded: a caller that hangs up does not cancel the answer the others wait for.
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> bool:
        try:
            await self._w.run("probe", deadline_s=self.write_deadline_s)
            answer = True
        except Exception as exc:
            log.warning("the database cannot be written: %s", exc)
            answer = False
        self._writable = (time.monotonic() + WRITABLE_CACHE_S, answer)
        self._probe = None
        return answer

    # ---- users -----------------------------------------------------------

    async def create_user(self, user_id: str, token_hash: str) -> None:
        await self._write((SQL_INSERT_USER, (user_id, token_hash, utc_now())))

    async def user_for_token_hash(self, token_hash: str) -> str | None:
        row = await self._fetchone("SELECT id FROM users WHERE token_hash = ?", (token_hash,))
        return row[0] if row else None

    # ---- conversations ---------------------------------------------------

    async def create_conversation(self, conversation_id: str, user_id: str, title: str) -> ConversationRecord:
        now = utc_now()
        await self._write((SQL_INSERT_CONVERSATION, (conversation_id, user_id, title, now, now)))
        return ConversationRecord(conversation_id, user_id, title, now, now)

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = await self._fetchone("SELECT id, user_id, title, created_at, updated_at FROM conversations "
                                   "WHERE id = ?", (conversation_id,))
        return ConversationRecord(*row) if row else None

    async def list_conversations(self, user_id: str) -> list[ConversationRecord]:
        rows = await self._fetchall("SELECT id, user_id, title, created_at, updated_at FROM conversations "
                                    "WHERE user_id = ? ORDER BY updated_at DESC, touched DESC", (user_id,))
        return [ConversationRecord(*row) for row in rows]

    async def delete_conversation(self, conversation_id: str) -> list[str]:
        channels = [row[0] for row in await self._fetchall(
            "SELECT id FROM channels WHERE conversation_id = ?", (conversation_id,))]
        marks = ",".join("?" * len(channels))
        statements: list[tuple[str, Sequence[Any]]] = [
            (f"DELETE FROM events WHERE channel IN ({marks})", channels),
            (f"DELETE FROM recent_events WHERE channel IN ({marks})", channels),
        ] if channels else []
        statements += [
            ("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,)),
            ("DELETE FROM channels WHERE conversation_id = ?", (conversation_id,)),
            ("DELETE FROM conversations WHERE id = ?", (conversation_id,)),
        ]
        await self._flush_channels(set(channels))
        await self._write_transaction(statements, idempotent=True)
        for channel in channels:  # an append from now on finds no channel
            self._logs.pop(channel, None)
            self._failures.pop(channel, None)
        return channels

    async def add_turn(self, conversation_id: str, user_message: str, channel_id: str) -> None:
        await self._write(*_turn(conversation_id, user_message, channel_id, utc_now()))

    async def messages(self, conversation_id: str) -> list[MessageRecord]:
        rows = await self._fetchall("SELECT role, content, channel, status, created_at FROM messages "
                                    "WHERE conversation_id = ? ORDER BY seq", (conversation_id,))
        return [MessageRecord(*row) for row in rows]

    # ---- channels --------------------------------------------------------

    async def create_channel(self, channel_id: str, user_id: str, conversation_id: str, model: str) -> Event:
        meta = _meta(channel_id, conversation_id, model)
        await self._create(channel_id, meta, [(SQL_INSERT_CHANNEL, (channel_id, user_id, conversation_id, model,
                                                                    utc_now()))])
        return meta

    async def create_answer(self, answer: NewAnswer) -> Event:
        now = utc_now()
        statements: list[tuple[str, Sequence[Any]]] = []
        if answer.new_user is not None:
            statements.append((SQL_INSERT_USER, (*answer.new_user, now)))
        if answer.new_title is not None:
            statements.append((SQL_INSERT_CONVERSATION, (answer.conversation_id, answer.user_id, answer.new_title,
                                                         now, now)))
        statements.append((SQL_INSERT_CHANNEL, (answer.channel_id, answer.user_id, answer.conversation_id,
                                                answer.model, now)))
        statements += _turn(answer.conversation_id, answer.message, answer.channel_id, now)
        meta = _meta(answer.channel_id, answer.conversation_id, answer.model)
        await self._create(answer.channel_id, meta, statements)
        return meta

    async def _create(self, channel_id: str, meta: Event, statements: list[tuple[str, Sequence[Any]]]) -> None:
        """A new channel's rows and its ``meta`` event in one transaction, then told like any commit.

        The meta row rides in the same ordered pipe as the group commits, and nothing can
        be appended to the channel before this returns, so readers still hear ids in order.
        """
        try:
            await self._write_transaction(statements, [(channel_id, meta.id, meta.type, meta.data_json)])
        except WriterGone:
            # The writer died with the transaction: whether it committed is in the database.
            if await self._fetchone(SQL_CHANNEL_STATUS, (channel_id,)) is None:
                raise
        self._logs[channel_id] = _ChannelLog(meta.id + 1)
        self.commits += 1
        self.committed_events += 1
        self._tell([meta])

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
        return [row[0] for row in await self._fetchall("SELECT id FROM channels WHERE status = 'running'")]

    # ---- appending: the group commit -------------------------------------

    async def append(self, channel_id: str, type: str, data: dict[str, Any], *, wait: bool = True) -> Event:
        """See ``Store.append``; ``wait=False`` returns once the event is queued (not for terminals)."""
        failure = self._failures.pop(channel_id, None)
        if failure is not None:
            raise failure
        log_ = self._logs.get(channel_id)
        if log_ is None:
            log_ = await self._load_log(channel_id)
        if log_.closed:
            raise ChannelClosed(channel_id)
        event = Event.make(channel_id, log_.next_id, type, data)
        log_.next_id += 1
        if type in TERMINAL_TYPES:
            log_.closed = True
        elif not wait and len(self._pending) < MAX_UNAWAITED_BACKLOG:
            self._pending.append(_Pending(event, None))
            self._wake.set()
            return event
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(event, future))
        self._wake.set()
        await future
        return event

    async def _load_log(self, channel_id: str) -> _ChannelLog:
        row = await self._fetchone(SQL_CHANNEL_STATUS, (channel_id,))
        if row is None:
            raise UnknownChannel(channel_id)
        if row[0] != "running":  # kept out of ``_logs``: an ended channel needs no entry there
            raise ChannelClosed(channel_id)
        (last_id,) = await self._fetchone(SQL_LAST_ID, (channel_id,))
        # Another append may have loaded it while this one waited.
        return self._logs.setdefault(channel_id, _ChannelLog(last_id + 1))

    async def _flush_channels(self, channels: set[str]) -> None:
        """Wait until every pending event of these channels is committed.

        Commits go in order, so each channel's last pending event is enough;
        one queued with ``wait=False`` gets a future here.
        """
        last: dict[str, _Pending] = {}
        for pending in self._pending:
            if pending.event.channel in channels:
                last[pending.event.channel] = pending
        for pending in last.values():
            if pending.future is None:
                pending.future = asyncio.get_running_loop().create_future()
        if last:
            await asyncio.gather(*(p.future for p in last.values()), return_exceptions=True)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if self._writes_held is not None:
                    await self._writes_held
                batch = self._pending[:MAX_BATCH_EVENTS]
                del self._pending[:MAX_BATCH_EVENTS]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        events = [p.event for p in batch]
        try:
            await self._write_events(events)
        except Exception as exc:  # the disk is full, the file is gone: fail the batch, not the server
            log.exception("commit of %d events failed", len(events))
            self._fail(batch, exc)
            return
        self.commits += 1
        self.committed_events += len(events)
        self._maybe_checkpoint(len(events))
        self._tell(events)
        for p in batch:
            if p.future and not p.future.done():
                p.future.set_result(None)
        for event in events:
            if event.terminal:
                self._logs.pop(event.channel, None)

    def _tell(self, events: list[Event]) -> None:
        if self.on_commit is not None:
            try:
                self.on_commit(events)
            except Exception:
                log.exception("on_commit listener failed")

    def _fail(self, batch: list[_Pending], exc: BaseException) -> None:
        """A batch did not commit: its channels' queued events go too, so ids keep no gaps."""
        failed = {p.event.channel for p in batch}
        doomed = batch + [p for p in self._pending if p.event.channel in failed]
        self._pending = [p for p in self._pending if p.event.channel not in failed]
        for channel in failed:
            self._logs.pop(channel, None)  # reload the true next id from the database
        told = set()
        for p in doomed:
            if p.future is not None:
                told.add(p.event.channel)
                if not p.future.done():
                    p.future.set_exception(exc)
        for channel in failed - told:  # nobody awaited these: the channel's next append hears it
            self._failures[channel] = exc

    async def _write_events(self, events: list[Event]) -> None:
        # No deadline: a group commit's outcome must be known before ids are reused, and the
        # writer's lock wait (``BUSY_TIMEOUT_MS``) already bounds how long it can take.
        await self._w.run("events", [(e.channel, e.id, e.type, e.data_json) for e in events])

    def _maybe_checkpoint(self, committed: int) -> None:
        """Copy the WAL into the database off the loop, once enough was written."""
        self._since_checkpoint += committed
        if self._since_checkpoint < self.checkpoint_every_events or self._checkpoint is not None:
            return
        self._since_checkpoint = 0
        catch_up = self.wal_bytes() > self.wal_limit_bytes
        self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint(catch_up),
                                                                  name="chime-store-checkpoint")

    def wal_bytes(self) -> int:
        """The size of the write-ahead log file (0 when there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    async def _run_checkpoint(self, catch_up: bool) -> None:
        """PASSIVE never blocks the writer or a reader; what it cannot copy now waits for the next.

        With ``catch_up`` a second pass copies, while commits wait, only what was
        committed during the first: then nothing is left, the next commit starts
        the WAL over, and ``journal_size_limit`` trims the file.
        """
        checkpointer = self._checkpointer
        try:
            if checkpointer is None:
                return
            await checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if catch_up:
                self._writes_held = asyncio.get_running_loop().create_future()
                await checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:
            log.exception("WAL checkpoint failed")
        finally:
            held, self._writes_held = self._writes_held, None
            if held is not None:
                held.set_result(None)
            self._checkpoint = None

    # ---- push subscriptions ---------------------------------------------

    async def save_subscription(self, user_id: str, endpoint: str, p256dh: str, auth: str) -> None:
        await self._write(("INSERT INTO push_subscriptions (endpoint, user_id, p256dh, auth, created_at) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET "
                           "user_id = excluded.user_id, p256dh = excluded.p256dh, auth = excluded.auth, "
                           "created_at = excluded.created_at", (endpoint, user_id, p256dh, auth, utc_now())),
                          idempotent=True)

    async def delete_subscription(self, endpoint: str, user_id: str | None = None) -> bool:
        if user_id is None:
            statement = ("DELETE FROM push_subscriptions WHERE endpoint = ?", (endpoint,))
        else:
            statement = ("DELETE FROM push_subscriptions WHERE endpoint = ? AND user_id = ?", (endpoint, user_id))
        return await self._write(statement) > 0

    async def subscriptions_for(self, user_id: str) -> list[PushSubscription]:
        rows = await self._fetchall("SELECT user_id, endpoint, p256dh, auth, created_at FROM push_subscriptions "
                                    "WHERE user_id = ? ORDER BY created_at", (user_id,))
        return [PushSubscription(*row) for row in rows]


def _meta(channel_id: str, conversation_id: str, model: str) -> Event:
    return Event.make(channel_id, 1, META, {"channel": channel_id, "conversation_id": conversation_id,
                                           "model": model})


def _turn(conversation_id: str, question: str, channel_id: str, now: str) -> list[tuple[str, Sequence[Any]]]:
    """The user's message, the running answer's, and the conversation moved to the top of its list."""
    return [(SQL_INSERT_QUESTION, (conversation_id, question, channel_id, now)),
            (SQL_INSERT_ANSWER, (conversation_id, channel_id, now)),
            (SQL_TOUCH_CONVERSATION, (now, conversation_id))]
