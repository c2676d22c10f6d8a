"""The SQLite writing connection, in a process of its own.

Every write transaction of ``SQLiteStore`` runs here, one at a time, in the
order the server sent them. The server's event loop keeps only the cost of
handing a batch over (one send and one receive per group commit), so the
B-tree inserts and the WAL appends of a busy commit use the second core
instead of delaying the streams.

Wire format, both ways over a socket pair: a 4-byte big-endian length, then a
pickle. A request is ``(operation, args)``; a reply is ``(True, result)`` or
``(False, exception)``. The child exits when the server closes its end, or
dies: nothing else stops it, so a ``SIGINT``/``SIGTERM`` meant for the server
cannot cut a write short while the server still finishes its streams.

Run as ``python -m channels.sqlite_writer DATABASE WAL_LIMIT_BYTES FD``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import pickle
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import orjson

from channels.events import TERMINAL_TYPES, USAGE
from channels.store import utc_now

log = logging.getLogger("chime.store")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HEADER_BYTES = 4
# How long ``close`` waits for the child to finish its last transaction and exit.
EXIT_TIMEOUT_S = 10.0

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # NORMAL in WAL mode: a commit survives a crash of the process; only a
    # power loss can take back the last transactions.
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 5000",
)

SQL_DELTAS = "SELECT data FROM events WHERE channel = ? AND type = 'delta' ORDER BY id"
SQL_INSERT_EVENT = "INSERT INTO events (channel, id, type, data) VALUES (?, ?, ?, ?)"
SQL_SET_USAGE = "UPDATE channels SET usage = ? WHERE id = ?"
SQL_FINISH_CHANNEL = "UPDATE channels SET status = ?, finished_at = ? WHERE id = ?"
SQL_FINISH_MESSAGE = "UPDATE messages SET content = ?, status = ? WHERE channel = ? AND role = 'assistant'"

EventRow = tuple[str, int, str, bytes]  # channel, id, type, data


class WriterGone(sqlite3.OperationalError):
    """The writer process exited; what it was sent has an unknown outcome."""


# ---- the server's side -------------------------------------------------------------


class WriterProcess:
    """Sends whole transactions to the writer process and awaits each one's reply.

    Replies come back in the order requests were sent, so one FIFO of futures
    matches them. If the process dies, every request in flight fails with
    ``WriterGone`` and the next request starts a new process.
    """

    def __init__(self, path: Path, wal_limit_bytes: int, migrations: Sequence[str]):
        self.path = path
        self.wal_limit_bytes = wal_limit_bytes
        self.migrations = tuple(migrations)
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
                sys.executable, "-m", "channels.sqlite_writer", str(self.path), str(self.wal_limit_bytes),
                str(theirs.fileno()), pass_fds=(theirs.fileno(),), cwd=PROJECT_ROOT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _, self._replies = await loop.create_unix_connection(_Replies, sock=ours)
        # Each start re-checks the schema, so a restarted writer never runs on an old one.
        await self.run("migrate", self.migrations)

    async def run(self, operation: str, *args: Any) -> Any:
        """One whole transaction in the writer; its result, or its exception raised here."""
        if self._replies is None or self._replies.closed:
            await self._restart()
        replies = self._replies
        assert replies is not None
        ok, value = await replies.request(pickle.dumps((operation, args), protocol=pickle.HIGHEST_PROTOCOL))
        if not ok:
            raise value
        return value

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
            except asyncio.TimeoutError:
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
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        db.execute(pragma)
    db.execute(f"PRAGMA journal_size_limit = {int(wal_limit_bytes)}")
    # Checkpoints (the only writes that fsync) run on the server's own checkpoint connection.
    db.execute("PRAGMA wal_autocheckpoint = 0")
    return db


def migrate(db: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Bring the schema to ``len(migrations)``; index + 1 is the version (PRAGMA user_version)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > len(migrations):
        raise RuntimeError(f"database schema version {version} is newer than this Chime ({len(migrations)})")
    for number, script in enumerate(migrations[version:], start=version + 1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        log.info("database migrated to schema version %d", number)


def run_statements(db: sqlite3.Connection, statements: list[tuple[str, Sequence[Any]]]) -> int:
    """One transaction; returns the rows the last statement changed."""
    db.execute("BEGIN IMMEDIATE")
    try:
        changed = 0
        for sql, params in statements:
            changed = db.execute(sql, params).rowcount
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return changed


def insert_events(db: sqlite3.Connection, rows: list[EventRow], answers: dict[str, str]) -> None:
    """One group commit: the events, and what a usage or terminal event changes besides."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(SQL_INSERT_EVENT, rows)
        for channel, _, type_, data in rows:
            if type_ == USAGE:
                db.execute(SQL_SET_USAGE, (data, channel))
            elif type_ in TERMINAL_TYPES:
                _finish_channel(db, channel, type_, answers.get(channel))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _finish_channel(db: sqlite3.Connection, channel: str, type_: str, answer: str | None) -> None:
    if answer is None:  # appended partly by an earlier process: the deltas are the truth
        rows = db.execute(SQL_DELTAS, (channel,)).fetchall()
        answer = "".join(orjson.loads(data)["content"] for (data,) in rows)
    db.execute(SQL_FINISH_CHANNEL, (type_, utc_now(), channel))
    db.execute(SQL_FINISH_MESSAGE, (answer, type_, channel))


OPERATIONS: dict[str, Callable[..., Any]] = {
    "migrate": migrate,
    "statements": run_statements,
    "events": insert_events,
}


def _reply(value: Any, ok: bool) -> bytes:
    try:
        payload = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot cross: its text still does
        payload = pickle.dumps((False, sqlite3.OperationalError(repr(value))), protocol=pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def serve(db: sqlite3.Connection, channel: socket.socket) -> None:
    """Run each request to its end, in order, until the server closes its end."""
    requests = channel.makefile("rb")
    while True:
        header = requests.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES:
            return
        operation, args = pickle.loads(requests.read(int.from_bytes(header, "big")))
        try:
            reply = _reply(OPERATIONS[operation](db, *args), True)
        except Exception as exc:
            reply = _reply(exc, False)
        channel.sendall(reply)


def main(argv: list[str]) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path, wal_limit_bytes, fd = argv
    channel = socket.socket(fileno=int(fd))
    db = connect(path, int(wal_limit_bytes))
    try:
        serve(db, channel)
    finally:
        db.close()
        channel.close()


if __name__ == "__main__":
    main(sys.argv[1:])
