"""The SQLite writing connection, in a process of its own.

Every write transaction of ``SQLiteStore`` runs here, one at a time, in the
order the server sent them. The server's event loop keeps only the cost of
handing a batch over (one send and one receive per group commit), so the
B-tree inserts and the WAL appends of a busy commit use the second core
instead of delaying the streams.

Wire format, both ways over a socket pair: a 4-byte big-endian length, then a
pickle. A request is ``(operation, deadline, args)``; a reply is ``(True, result)``
or ``(False, exception)``. ``deadline`` (``time.monotonic()``, the same clock in
both processes, or None) is when the caller stops waiting: a request that
reaches the writer after it is refused with ``StoreUnavailable`` and never runs,
so a caller that gave up never has its write land later. The child exits when the server closes its end, or
dies: nothing else stops it, so a ``SIGINT``/``SIGTERM`` meant for the server
cannot cut a write short while the server still finishes its streams.

Both ends of that pipe live here: ``WriterProcess`` in the server, ``serve`` in
the child, which runs as ``python -m channels.sqlite DATABASE WAL_LIMIT_BYTES FD
FOLD_ROWS FOLD_AFTER_S`` (``channels/sqlite/__main__.py``).

A request the child dies under fails with ``WriterGone``: it may or may not have
committed, and only the database can tell. The group commit settles that by
reading back what was stored (``channels.sqlite.log``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import select
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import orjson

from channels.events import TERMINAL_TYPES, USAGE
from channels.sqlite.schema import BUSY_TIMEOUT_MS, PRAGMAS, secure_files
from channels.store import StoreUnavailable, utc_now

log = logging.getLogger("chime.store")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEADER_BYTES = 4
# Events wait in ``recent_events`` until this many are there, or the oldest has waited
# this long and no request is waiting: then they are folded into ``events``.
FOLD_ROWS = 8192
FOLD_AFTER_S = 1.0
# A fold is this many transactions, each a range of channels, with requests served between.
FOLD_PIECES = 4
# How long ``close`` waits for the child to finish its last transaction and exit.
EXIT_TIMEOUT_S = 10.0
# How long past its deadline a caller still waits for the reply of a request the writer
# had already started: its lock wait and its statements. Past it the writer is stuck.
REPLY_GRACE_S = BUSY_TIMEOUT_MS / 1000 + 1.0
# A migration may rewrite a large database: it is not held to a request's deadline.
MIGRATE_DEADLINE_S = 600.0
# The child's command line after the interpreter, before its arguments.
WRITER_ENTRY = ("-m", "channels.sqlite")
# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

# A channel's events are in ``events`` once folded, and in ``recent_events`` until then.
SQL_DELTAS = """
    SELECT id, data FROM events WHERE channel = ?1 AND type = 'delta'
    UNION ALL SELECT id, data FROM recent_events WHERE channel = ?1 AND type = 'delta'
    ORDER BY id
"""
# The deltas of every channel in a JSON list ?1, for the terminal events of one commit:
# ``recent_events`` has no index by channel, so it is read once per commit, not per channel.
SQL_DELTAS_OF = """
    SELECT channel, id, data FROM events
        WHERE channel IN (SELECT value FROM json_each(?1)) AND type = 'delta'
    UNION ALL SELECT channel, id, data FROM recent_events
        WHERE channel IN (SELECT value FROM json_each(?1)) AND type = 'delta'
"""
SQL_INSERT_EVENT = "INSERT INTO recent_events (channel, id, type, data) VALUES (?, ?, ?, ?)"
SQL_FOLD = ("INSERT INTO events (channel, id, type, data) SELECT channel, id, type, data FROM recent_events "
            "WHERE channel BETWEEN ?1 AND ?2 ORDER BY channel, id")
SQL_FOLDED = "DELETE FROM recent_events WHERE channel BETWEEN ?1 AND ?2"
SQL_SET_USAGE = "UPDATE channels SET usage = ? WHERE id = ?"
SQL_FINISH_CHANNEL = "UPDATE channels SET status = ?, finished_at = ? WHERE id = ?"
SQL_FINISH_MESSAGE = "UPDATE messages SET content = ?, status = ? WHERE channel = ? AND role = 'assistant'"

EventRow = tuple[str, int, str, bytes]  # channel, id, type, data
Request = tuple[str, float | None, tuple[Any, ...]]  # operation, deadline, args


class WriterGone(StoreUnavailable):
    """The writer process exited; what it was sent has an unknown outcome."""


def unavailable(exc: BaseException) -> BaseException:
    """A lock held by another connection as ``StoreUnavailable``; any other error as it is."""
    if isinstance(exc, sqlite3.OperationalError) and \
            getattr(exc, "sqlite_errorcode", 0) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StoreUnavailable(f"the database is locked: {exc}")
    return exc


# ---- the server's side -------------------------------------------------------------


class WriterProcess:
    """Sends whole transactions to the writer process and awaits each one's reply.

    Replies come back in the order requests were sent, so one FIFO of futures
    matches them. If the process dies, every request in flight fails with
    ``WriterGone`` and the next request starts a new process.

    ``entry`` is how the child is started (``WRITER_ENTRY``): the recovery tests
    start one that dies at a chosen point of a transaction.
    """

    def __init__(self, path: Path, wal_limit_bytes: int, migrations: Sequence[str], *,
                 fold_rows: int = FOLD_ROWS, fold_after_s: float = FOLD_AFTER_S,
                 entry: Sequence[str] = WRITER_ENTRY):
        self.path = path
        self.entry = tuple(entry)
        self.wal_limit_bytes = wal_limit_bytes
        self.migrations = tuple(migrations)
        self.fold_rows = fold_rows
        self.fold_after_s = fold_after_s
        self._process: asyncio.subprocess.Process | None = None
        self._replies: _Replies | None = None
        self._starting: asyncio.Lock | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._replies.in_flight if self._replies is not None else 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, *self.entry, str(self.path), str(self.wal_limit_bytes),
                str(theirs.fileno()), str(self.fold_rows), str(self.fold_after_s),
                pass_fds=(theirs.fileno(),), cwd=PROJECT_ROOT, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _, self._replies = await loop.create_unix_connection(_Replies, sock=ours)
        # Each start re-checks the schema, so a restarted writer never runs on an old one.
        await self.run("migrate", self.migrations, deadline_s=MIGRATE_DEADLINE_S)

    async def run(self, operation: str, *args: Any, deadline_s: float | None = None) -> Any:
        """One whole transaction in the writer; its result, or its exception raised here.

        With ``deadline_s`` the writer refuses the request if it reaches it later than
        that, and this raises ``StoreUnavailable`` then, or if no reply comes even
        ``REPLY_GRACE_S`` after (a stuck writer: that outcome is unknown).
        """
        await self.ensure_running()
        replies = self._replies
        assert replies is not None
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        reply = replies.request(pickle.dumps((operation, deadline, args), protocol=pickle.HIGHEST_PROTOCOL))
        if deadline_s is None:
            ok, value = await reply
        else:
            try:
                ok, value = await asyncio.wait_for(reply, deadline_s + REPLY_GRACE_S)
            except TimeoutError:
                raise StoreUnavailable("the database writer did not answer in time") from None
        if not ok:
            raise value
        return value

    @property
    def exited(self) -> bool:
        """Whether the process is gone (or was never started): the next request starts another."""
        return self._replies is None or self._replies.closed

    async def ensure_running(self) -> None:
        """Start another process if the last one exited; the one that exited is reaped first,
        so nothing it was sent can still commit once this returns."""
        if self.exited:
            await self._restart()

    async def _restart(self) -> None:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._replies is not None and not self._replies.closed:
                return  # another request restarted it while this one waited
            if self._process is not None:
                log.error("the database writer process exited (status %s); starting another",
                          await self._process.wait())
            await self.start()

    async def close(self) -> None:
        """Let the child finish what it was sent, then wait for it to exit."""
        if self._replies is not None:
            await self._replies.drain_and_close()
            self._replies = None
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), EXIT_TIMEOUT_S)
            except TimeoutError:
                log.error("the database writer process did not exit; killing it")
                self._process.kill()
                await self._process.wait()
            self._process = None


class _Replies(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[asyncio.Future[tuple[bool, Any]]] = collections.deque()
        self._buffer = bytearray()
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def request(self, payload: bytes) -> asyncio.Future[tuple[bool, Any]]:
        future: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        if self.closed or self._transport is None:
            future.set_exception(WriterGone("the database writer process is not running"))
            return future
        self._waiting.append(future)
        self._transport.write(len(payload).to_bytes(HEADER_BYTES, "big") + payload)
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= HEADER_BYTES:
            end = start + HEADER_BYTES + int.from_bytes(buffer[start:start + HEADER_BYTES], "big")
            if len(buffer) < end:
                break
            reply = pickle.loads(buffer[start + HEADER_BYTES:end])
            start = end
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(reply)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(WriterGone("the database writer process exited"))
        if not self._lost.done():
            self._lost.set_result(None)

    async def drain_and_close(self) -> None:
        """Wait for every reply in flight, then close: the child sees the end and exits."""
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        await self._lost


# ---- the writer process ------------------------------------------------------------


def connect(path: Path | str, wal_limit_bytes: int) -> sqlite3.Connection:
    secure_files(path)
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        db.execute(pragma)
    db.execute(f"PRAGMA journal_size_limit = {int(wal_limit_bytes)}")
    # Checkpoints (the only writes that fsync) run on the server's own checkpoint connection.
    db.execute("PRAGMA wal_autocheckpoint = 0")
    return db


class Writer:
    """The writing connection and what it knows of ``recent_events``.

    Events are appended to ``recent_events``, keyed by append order: each insert
    lands on the B-tree's last page, so a group commit of one token from each of
    a thousand channels writes a few pages to the WAL, not a page per channel.
    Folding moves them into ``events`` (keyed by channel and id), where each
    channel's page then takes many events at once. A fold runs in pieces, each a
    range of channels in its own transaction, with requests served in between:
    no commit waits for more than one piece.
    """

    def __init__(self, db: sqlite3.Connection, fold_rows: int = FOLD_ROWS, fold_after_s: float = FOLD_AFTER_S,
                 fold_pieces: int = FOLD_PIECES):
        self.db = db
        self.fold_rows = fold_rows
        self.fold_after_s = fold_after_s
        self.fold_pieces = fold_pieces
        self.recent = 0  # rows in recent_events
        self.channels: set[str] = set()  # the channels with rows there since the last fold began
        self.fold_at = 0.0  # when waiting rows must be folded even if more keep coming
        self.pieces: collections.deque[tuple[str, str]] = collections.deque()  # the fold under way

    def migrate(self, migrations: Sequence[str]) -> None:
        """Bring the schema to ``len(migrations)``; index + 1 is the version (PRAGMA user_version)."""
        db = self.db
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise RuntimeError(f"database schema version {version} is newer than this Chime ({len(migrations)})")
        for number, script in enumerate(migrations[version:], start=version + 1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
            log.info("database migrated to schema version %d", number)
        self.channels = self._waiting_channels()
        (self.recent,) = db.execute("SELECT COUNT(*) FROM recent_events").fetchone()
        if self.recent:  # what the previous writer left
            self.start_fold()
            while self.pieces:
                self.fold_piece()

    def statements(self, statements: list[tuple[str, Sequence[Any]]], rows: Sequence[EventRow] = ()) -> int:
        """One transaction: the statements, then ``rows`` appended (a new channel's ``meta``);
        returns the rows the last statement changed."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            changed = 0
            for sql, params in statements:
                changed = db.execute(sql, params).rowcount
            if rows:
                db.executemany(SQL_INSERT_EVENT, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._appended(rows)
        return changed

    def events(self, rows: list[EventRow]) -> None:
        """One group commit: the events, and what a usage or terminal event changes besides."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(SQL_INSERT_EVENT, rows)
            endings: dict[str, str] = {}
            for channel, _, type_, data in rows:
                if type_ == USAGE:
                    db.execute(SQL_SET_USAGE, (data, channel))
                elif type_ in TERMINAL_TYPES:
                    endings[channel] = type_
            if endings:
                _finish_channels(db, endings)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._appended(rows)

    def probe(self) -> None:
        """Whether a write could start now: take the write lock and let it go, writing nothing."""
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("ROLLBACK")

    def _appended(self, rows: Sequence[EventRow]) -> None:
        """Committed rows now wait in ``recent_events`` for a fold."""
        if not rows:
            return
        if not self.recent:
            self.fold_at = time.monotonic() + self.fold_after_s
        self.recent += len(rows)
        self.channels.update(row[0] for row in rows)

    @property
    def folding(self) -> bool:
        return bool(self.pieces)

    def fold_due(self) -> bool:
        return self.recent >= self.fold_rows or (self.recent > 0 and time.monotonic() >= self.fold_at)

    def fold_wait_s(self) -> float | None:
        """How long the writer may wait for a request before folding (None: no rows wait)."""
        return max(0.0, self.fold_at - time.monotonic()) if self.recent else None

    def start_fold(self) -> None:
        """Split the channels with waiting rows into ranges of about equal count."""
        names = sorted(self.channels)
        self.channels = set()
        self.fold_at = time.monotonic() + self.fold_after_s  # for rows that come during this fold
        if not names:  # the rows counted were deleted with their conversation
            self._recount()
            if self.recent:  # never expected: rows of channels not tracked; take them next time
                self.channels.update(self._waiting_channels())
            return
        size = -(-len(names) // self.fold_pieces)
        self.pieces.extend((names[i], names[min(i + size, len(names)) - 1]) for i in range(0, len(names), size))

    def fold_piece(self) -> None:
        """Move one range of channels' rows into ``events``, in one transaction."""
        low, high = self.pieces.popleft()
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(SQL_FOLD, (low, high))
                db.execute(SQL_FOLDED, (low, high))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except Exception:  # the rows stay readable where they are; the next fold takes them
            log.exception("folding the recent events of channels %s..%s failed", low, high)
            self.pieces.clear()
            self.channels.update(self._waiting_channels())
        if not self.pieces:
            self._recount()

    def _waiting_channels(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT DISTINCT channel FROM recent_events")}

    def _recount(self) -> None:
        """What is left: rows that came during the fold, none deleted behind the count's back."""
        (self.recent,) = self.db.execute("SELECT COUNT(*) FROM recent_events").fetchone()


def _finish_channels(db: sqlite3.Connection, endings: dict[str, str]) -> None:
    """Each channel's status, and its answer joined from the stored deltas: the server keeps
    none of it in memory. One read for all of a commit's endings (1000 answers ending
    together cost one scan of ``recent_events``, not 1000)."""
    pieces: dict[str, list[tuple[int, str]]] = {channel: [] for channel in endings}
    for channel, id_, data in db.execute(SQL_DELTAS_OF, (orjson.dumps(list(endings)).decode(),)):
        pieces[channel].append((id_, orjson.loads(data)["content"]))
    now = utc_now()
    for channel, type_ in endings.items():
        answer = "".join(content for _, content in sorted(pieces[channel]))
        db.execute(SQL_FINISH_CHANNEL, (type_, now, channel))
        db.execute(SQL_FINISH_MESSAGE, (answer, type_, channel))


OPERATIONS = ("migrate", "statements", "events", "probe")


def _reply(value: Any, ok: bool) -> bytes:
    try:
        payload = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot cross: its text still does
        payload = pickle.dumps((False, sqlite3.OperationalError(repr(value))), protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


class _Requests:
    """Length-prefixed requests from the server's socket."""

    def __init__(self, channel: socket.socket):
        self.channel = channel
        self.buffer = bytearray()

    def _complete(self) -> int:
        """The length of the first whole request in the buffer, header included (0: none)."""
        if len(self.buffer) < HEADER_BYTES:
            return 0
        end = HEADER_BYTES + int.from_bytes(self.buffer[:HEADER_BYTES], "big")
        return end if len(self.buffer) >= end else 0

    def waiting(self, timeout_s: float) -> bool:
        """Whether a request is here or arrives within ``timeout_s``."""
        return bool(self._complete()) or bool(select.select([self.channel], [], [], timeout_s)[0])

    def next(self) -> Request | None:
        """The next request; None once the server closed its end."""
        while not (end := self._complete()):
            data = self.channel.recv(1 << 20)
            if not data:
                return None
            self.buffer += data
        request: Request = pickle.loads(self.buffer[HEADER_BYTES:end])
        del self.buffer[:end]
        return request


def serve(writer: Writer, channel: socket.socket) -> None:
    """Run each request to its end, in order, until the server closes its end.

    A fold starts when enough rows wait, or when they waited long enough and no
    request is here; while one is under way, requests and its pieces take turns.
    """
    requests = _Requests(channel)
    piece_next = False
    while True:
        if writer.folding:
            if piece_next or not requests.waiting(0):
                writer.fold_piece()
                piece_next = False
                continue
        else:
            wait_s = writer.fold_wait_s()
            if wait_s is not None and (writer.fold_due() or not requests.waiting(wait_s)):
                writer.start_fold()
                continue
        request = requests.next()
        if request is None:
            return
        piece_next = True
        operation, deadline, args = request
        try:
            if operation not in OPERATIONS:
                raise sqlite3.OperationalError(f"unknown writer operation {operation!r}")
            if deadline is not None and time.monotonic() > deadline:
                raise StoreUnavailable("the database writer was too busy to start this write in time")
            reply = _reply(getattr(writer, operation)(*args), True)
        except Exception as exc:
            reply = _reply(unavailable(exc), False)
        channel.sendall(reply)


def main(argv: list[str], writer: type[Writer] = Writer) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path, wal_limit_bytes, fd, fold_rows, fold_after_s = argv
    channel = socket.socket(fileno=int(fd))
    db = connect(path, int(wal_limit_bytes))
    try:
        serve(writer(db, int(fold_rows), float(fold_after_s)), channel)
    finally:
        db.close()
        channel.close()
