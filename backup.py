"""Backing up a data directory while its server runs, and putting a backup back.

What a server cannot lose is its database and its VAPID private key (without
the key every browser's push subscription is orphaned). The database is in WAL
mode: until a checkpoint, recent commits live only in ``chime.sqlite3-wal``, so
copying ``chime.sqlite3`` alone can give an empty or stale database. A backup
therefore reads through SQLite's online backup API, in one step, which holds a
single read transaction: the copy is the database exactly as it was at one
commit, while the server goes on writing.

A serving process holds ``chime.lock`` in its data directory (``flock``) for as
long as it runs; a restore takes the same lock, so it refuses while a server
runs there, and no server starts while a restore is half done.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from notify.vapid import KEY_FILE_MODE, KEY_FILE_NAME

DB_FILE_NAME = "chime.sqlite3"
LOCK_FILE_NAME = "chime.lock"
FILE_MODE = 0o600  # the database holds token hashes and every conversation
DIRECTORY_MODE = 0o700
# How long a backup waits for the server's writer to let it start its read.
BUSY_TIMEOUT_S = 10.0


class OperatorError(Exception):
    """A backup or restore that cannot go ahead; the message says what to do."""


class DataDirBusy(OperatorError):
    """Another process (a running server, a restore) holds the data directory."""


@dataclass(frozen=True)
class Contents:
    """What a database holds, for the line an operator reads."""

    conversations: int
    answers: int
    running: int
    schema_version: int

    def describe(self) -> str:
        running = f", {self.running} running" if self.running else ""
        return f"{_count(self.conversations, 'conversation')} ({_count(self.answers, 'answer')}{running})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


class DataDirLock:
    """The data directory's ``chime.lock``, held with ``flock`` until released or the process ends.

    ``flock`` rather than a POSIX record lock: the store closes descriptors of the
    database, which drops a process's POSIX locks but never a ``flock`` held on
    another file. The lock file holds the holder's pid, for the refusal message.
    """

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        path = Path(data_dir) / LOCK_FILE_NAME
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(descriptor)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise DataDirBusy(f"a Chime process{_holder(path)} is using {Path(data_dir).resolve()}") from None
            raise
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        return cls(path, descriptor)

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing drops the flock
            self._descriptor = None

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def backup(data_dir: Path, destination: Path) -> Contents:
    """Copy the database and the VAPID key of ``data_dir`` into the new directory ``destination``."""
    data_dir, destination = Path(data_dir), Path(destination)
    source = data_dir / DB_FILE_NAME
    if not source.is_file():
        raise OperatorError(f"there is no database at {source.resolve()}: set CHIME_DATA_DIR to the "
                            "server's data directory")
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise OperatorError(f"{destination} already exists: name a new or empty directory for the backup")
    destination.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    partial = destination / f".{DB_FILE_NAME}.partial"
    try:
        _create_private(partial)
        _copy_database(source, partial, source_mode="ro")
        contents = inspect(partial)
        _fsync(partial)
        os.replace(partial, destination / DB_FILE_NAME)
    finally:
        partial.unlink(missing_ok=True)
    key = data_dir / KEY_FILE_NAME
    if key.is_file():
        _copy_private(key, destination / KEY_FILE_NAME, KEY_FILE_MODE)
    _fsync(destination)
    return contents


def restore(data_dir: Path, source: Path) -> tuple[Contents, list[Path]]:
    """Put the backup at ``source`` (a directory ``backup`` made, or a database file) into ``data_dir``.

    Refuses while a server runs on ``data_dir``. What it replaces is renamed, never
    deleted; the renamed paths are returned.
    """
    data_dir, source = Path(data_dir), Path(source)
    source_db = source / DB_FILE_NAME if source.is_dir() else source
    if not source_db.is_file():
        raise OperatorError(f"there is no backup at {source}: name a directory made by "
                            f"`python app.py backup` or a {DB_FILE_NAME} file")
    contents = inspect(source_db)
    target = data_dir / DB_FILE_NAME
    if target.exists() and target.resolve() == source_db.resolve():
        raise OperatorError(f"{source_db} is the data directory's own database: restore from a copy")
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    try:
        lock = DataDirLock.acquire(data_dir)
    except DataDirBusy as exc:
        raise DataDirBusy(f"{exc}: stop the server, then restore") from None
    with lock:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        partial = data_dir / f".{DB_FILE_NAME}.restoring"
        try:
            _create_private(partial)
            _copy_database(source_db, partial, source_mode=_read_mode(source_db))
            inspect(partial)
            _fsync(partial)
            kept = _set_aside_database(target, stamp)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        key = source_db.parent / KEY_FILE_NAME
        if key.is_file():
            kept += _set_aside_if_different(data_dir / KEY_FILE_NAME, key, stamp)
            _copy_private(key, data_dir / KEY_FILE_NAME, KEY_FILE_MODE)
        _fsync(data_dir)
    return contents, kept


def inspect(path: Path) -> Contents:
    """Check that ``path`` is a sound Chime database and count what it holds; it is not changed."""
    try:
        db = sqlite3.connect(_uri(path, _read_mode(path)), uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OperatorError(f"{path} is damaged ({check}): use another backup")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            conversations = db.execute("SELECT count(*) FROM conversations").fetchone()[0]
            answers, running = db.execute(
                "SELECT count(*), coalesce(sum(status = 'running'), 0) FROM channels").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise OperatorError(f"{path} is not a Chime database ({exc})") from None
    return Contents(conversations, answers, running, version)


def _copy_database(source: Path, destination: Path, source_mode: str) -> None:
    """SQLite's online backup, all pages in one step: one read transaction, one consistent copy.

    Copying in several steps would let the server's commits in between restart the
    copy, which under steady writes might never end.
    """
    try:
        reader = sqlite3.connect(_uri(source, source_mode), uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            writer = sqlite3.connect(destination)
            try:
                reader.backup(writer)
            finally:
                writer.close()
        finally:
            reader.close()
    except sqlite3.DatabaseError as exc:
        raise OperatorError(f"could not copy {source}: {exc}") from None


def _read_mode(path: Path) -> str:
    """``immutable`` leaves no -wal or -shm files beside a backup; a database with a WAL needs it read."""
    return "ro" if Path(f"{path}-wal").exists() else "immutable"


def _uri(path: Path, mode: str) -> str:
    query = "mode=ro" if mode == "ro" else "immutable=1"
    return f"{Path(path).resolve().as_uri()}?{query}"


def _set_aside_database(target: Path, stamp: str) -> list[Path]:
    """Rename the database and its WAL together (SQLite finds a WAL by the database's name + -wal).

    A -wal or -shm left beside the restored file would be read as its own, and corrupt it.
    """
    kept: list[Path] = []
    if target.exists():
        aside = target.with_name(f"{target.name}.replaced-{stamp}")
        os.replace(target, aside)
        kept.append(aside)
        wal = Path(f"{target}-wal")
        if wal.exists():
            os.replace(wal, f"{aside}-wal")
            kept.append(Path(f"{aside}-wal"))
    Path(f"{target}-wal").unlink(missing_ok=True)  # a WAL without its database is nothing's
    Path(f"{target}-shm").unlink(missing_ok=True)  # the shared index is rebuilt on open
    return kept


def _set_aside_if_different(target: Path, replacement: Path, stamp: str) -> list[Path]:
    if not target.exists() or target.read_bytes() == replacement.read_bytes():
        return []
    aside = target.with_name(f"{target.name}.replaced-{stamp}")
    os.replace(target, aside)
    return [aside]


def _create_private(path: Path) -> None:
    path.unlink(missing_ok=True)  # a partial file an interrupted run left
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def _copy_private(source: Path, destination: Path, mode: int) -> None:
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as out, open(source, "rb") as data:
            os.fchmod(out.fileno(), mode)  # whatever the umask
            shutil.copyfileobj(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
