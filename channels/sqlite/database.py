"""The connections that both seams of ``SQLiteStore`` share, and the write transactions over them.

Every write transaction runs in the writer process (``channels.sqlite.writer``),
one at a time, in the order they were sent. The event loop keeps only the cost
of handing each group commit over and hearing it is done; the B-tree inserts
and WAL appends use the other core (measured at 1000 paced streams: the loop's
CPU per token went from 41 to 32 µs). Reads use a second connection
(aiosqlite), so in WAL mode they see exactly what is committed and never wait
for a writer. In WAL mode with ``synchronous = NORMAL`` a commit appends to the
WAL file without an fsync. The one slow part, the checkpoint that copies the WAL
into the database and fsyncs, is taken off the writer (``wal_autocheckpoint =
0``) and run by a third connection on its own thread once enough has been
written, by the log's group commits and the records' transactions alike.

Every call has a deadline: a write the writer cannot start within
``write_deadline_s`` (a locked database, a backlog, a stuck or restarting
writer) raises ``StoreUnavailable`` and never lands later; reads wait for a lock
at most ``BUSY_TIMEOUT_MS``. A dead writer (``WriterGone``) is retried once
where running the write twice changes nothing; otherwise it stays a
``StoreUnavailable``, whose outcome ``create_answer`` settles by looking. The
group commit settles it by looking too, and sends again what was not stored
(``channels.sqlite.log``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import aiosqlite

from channels.sqlite.schema import MIGRATIONS, PRAGMAS, secure_files
from channels.sqlite.writer import FOLD_AFTER_S, FOLD_ROWS, EventRow, WriterGone, WriterProcess, unavailable

log = logging.getLogger("chime.store")

Statement = tuple[str, Sequence[Any]]  # SQL and its parameters

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


class Tuning(TypedDict, total=False):
    """``Database``'s keyword arguments, for the classes built on it."""

    checkpoint_every_events: int
    wal_limit_bytes: int
    fold_rows: int
    fold_after_s: float
    write_deadline_s: float


class Database:
    """One SQLite file: its writer process, its reader and checkpoint connections."""

    def __init__(self, path: Path | str, *, checkpoint_every_events: int = CHECKPOINT_EVERY_EVENTS,
                 wal_limit_bytes: int = WAL_LIMIT_BYTES, fold_rows: int = FOLD_ROWS,
                 fold_after_s: float = FOLD_AFTER_S, write_deadline_s: float = WRITE_DEADLINE_S) -> None:
        self.path = Path(path)
        self.write_deadline_s = write_deadline_s
        self.checkpoint_every_events = checkpoint_every_events
        self.wal_limit_bytes = wal_limit_bytes
        self.fold_rows = fold_rows
        self.fold_after_s = fold_after_s
        self._writer: WriterProcess | None = None
        self._reader_db: aiosqlite.Connection | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        # Set while a catching-up checkpoint copies the last frames: commits wait for it.
        self._writes_held: asyncio.Future[None] | None = None
        self._since_checkpoint = 0
        self._writable: tuple[float, bool] = (0.0, False)  # (until when, the answer)
        self._probe: asyncio.Task[bool] | None = None

    # ---- lifecycle -------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        secure_files(self.path)
        self._writer = WriterProcess(self.path, self.wal_limit_bytes, MIGRATIONS, fold_rows=self.fold_rows,
                                     fold_after_s=self.fold_after_s)
        await self._writer.start()
        self._reader_db = await self._connect()
        self._checkpointer = await self._connect()

    async def close(self) -> None:
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

    # ---- reads and write transactions ------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return list(await self._r.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            raise unavailable(exc) from exc

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    async def _write(self, *statements: Statement, idempotent: bool = False) -> int:
        return await self._write_transaction(list(statements), idempotent=idempotent)

    async def _write_transaction(self, statements: list[Statement], rows: Sequence[EventRow] = (),
                                 *, idempotent: bool = False) -> int:
        """Run statements in one transaction (then append ``rows``); returns the rows the last
        statement changed. Only an ``idempotent`` one is sent again after ``WriterGone``."""
        if self._writes_held is not None:
            await self._writes_held
        try:
            changed: int = await self._w.run("statements", statements, rows, deadline_s=self.write_deadline_s)
        except WriterGone:
            if not idempotent:
                raise
            log.warning("the database writer exited during a write; sending it again")
            changed = await self._w.run("statements", statements, rows, deadline_s=self.write_deadline_s)
        self._maybe_checkpoint(TRANSACTION_COST_EVENTS + len(rows))
        return changed

    # ---- health ----------------------------------------------------------

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

    # ---- checkpoints -----------------------------------------------------

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
