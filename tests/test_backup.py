"""backup.py on real SQLite files: a consistent copy of a database still being written, and restore."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import backup
from backup import DataDirBusy, DataDirLock, OperatorError
from notify.vapid import KEY_FILE_NAME

# The tables backup.inspect counts, as the store creates them (trimmed to what it reads).
SCHEMA = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL);
CREATE TABLE channels (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, status TEXT NOT NULL);
"""
KEY = b"-----BEGIN PRIVATE KEY-----\nnot checked here\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A data directory whose database a connection is still writing, with nothing checkpointed."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / KEY_FILE_NAME).write_bytes(KEY)
    db = sqlite3.connect(data_dir / backup.DB_FILE_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")  # as the server's writer: checkpoints are its own
    db.executescript(SCHEMA)
    for n in range(3):
        db.execute("INSERT INTO conversations VALUES (?, ?)", (f"c{n}", f"conversation {n}"))
        db.execute("INSERT INTO channels VALUES (?, ?, ?)", (f"ch{n}", f"c{n}", "running" if n == 2 else "done"))
    yield db
    db.close()


def conversations(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT title FROM conversations ORDER BY id")]
    finally:
        db.close()


def test_copying_the_file_of_a_live_database_loses_what_the_backup_keeps(tmp_path: Path,
                                                                          live: sqlite3.Connection) -> None:
    data_dir = tmp_path / "data"
    naive = tmp_path / "naive.sqlite3"
    shutil.copyfile(data_dir / backup.DB_FILE_NAME, naive)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        conversations(naive)  # everything is still in the WAL

    contents = backup.backup(data_dir, tmp_path / "backup")

    assert (contents.conversations, contents.answers, contents.running) == (3, 3, 1)
    assert contents.describe() == "3 conversations (3 answers, 1 running)"
    copy = tmp_path / "backup" / backup.DB_FILE_NAME
    assert conversations(copy) == ["conversation 0", "conversation 1", "conversation 2"]
    assert (tmp_path / "backup" / KEY_FILE_NAME).read_bytes() == KEY
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "backup" / KEY_FILE_NAME).stat().st_mode) == 0o600


def test_a_backup_is_the_database_at_one_commit_while_writes_go_on(tmp_path: Path,
                                                                  live: sqlite3.Connection) -> None:
    live.execute("BEGIN")
    live.execute("INSERT INTO conversations VALUES ('c9', 'not yet committed')")
    backup.backup(tmp_path / "data", tmp_path / "backup")  # the writer holds its lock all along
    live.execute("COMMIT")
    assert "not yet committed" not in conversations(tmp_path / "backup" / backup.DB_FILE_NAME)
    assert "not yet committed" in conversations(tmp_path / "data" / backup.DB_FILE_NAME)


def test_a_backup_leaves_no_file_beside_itself_and_needs_a_new_directory(tmp_path: Path,
                                                                          live: sqlite3.Connection) -> None:
    backup.backup(tmp_path / "data", tmp_path / "backup")
    backup.inspect(tmp_path / "backup" / backup.DB_FILE_NAME)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == [backup.DB_FILE_NAME, KEY_FILE_NAME]
    with pytest.raises(OperatorError, match="already exists"):
        backup.backup(tmp_path / "data", tmp_path / "backup")
    with pytest.raises(OperatorError, match="CHIME_DATA_DIR"):
        backup.backup(tmp_path / "nowhere", tmp_path / "other")


def test_restore_sets_aside_the_database_and_wal_it_replaces(tmp_path: Path, live: sqlite3.Connection) -> None:
    backup.backup(tmp_path / "data", tmp_path / "backup")
    live.execute("INSERT INTO conversations VALUES ('c9', 'after the backup')")
    (tmp_path / "data" / KEY_FILE_NAME).write_bytes(b"another key")
    live.close()
    # A server killed with -9 leaves commits in the -wal alone: snapshot both files while open.
    target = tmp_path / "data" / backup.DB_FILE_NAME
    crashed = sqlite3.connect(target, isolation_level=None)
    crashed.execute("PRAGMA wal_autocheckpoint = 0")
    crashed.execute("INSERT INTO conversations VALUES ('c10', 'only in the wal')")
    shutil.copyfile(target, tmp_path / "db")
    shutil.copyfile(f"{target}-wal", tmp_path / "wal")
    crashed.close()
    shutil.copyfile(tmp_path / "db", target)
    shutil.copyfile(tmp_path / "wal", f"{target}-wal")
    assert "only in the wal" not in _without_wal(target)

    contents, kept = backup.restore(tmp_path / "data", tmp_path / "backup")

    assert contents.conversations == 3
    assert conversations(target) == ["conversation 0", "conversation 1", "conversation 2"]
    assert (tmp_path / "data" / KEY_FILE_NAME).read_bytes() == KEY
    old_db = next(p for p in kept if p.name.startswith(f"{backup.DB_FILE_NAME}.replaced-") and
                  not p.name.endswith("-wal"))
    assert "only in the wal" in conversations(old_db)  # the set-aside database kept its WAL
    old_key = next(p for p in kept if p.name.startswith(f"{KEY_FILE_NAME}.replaced-"))
    assert old_key.read_bytes() == b"another key"


def test_restore_refuses_while_the_data_dir_is_held(tmp_path: Path, live: sqlite3.Connection) -> None:
    backup.backup(tmp_path / "data", tmp_path / "backup")
    live.execute("INSERT INTO conversations VALUES ('c9', 'after the backup')")
    with DataDirLock.acquire(tmp_path / "data"):  # what a running server holds
        with pytest.raises(DataDirBusy, match="stop the server"):
            backup.restore(tmp_path / "data", tmp_path / "backup")
        assert "after the backup" in conversations(tmp_path / "data" / backup.DB_FILE_NAME)
        assert not list((tmp_path / "data").glob("*.replaced-*"))


def test_the_lock_is_one_holder_at_a_time_and_names_it(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path)
    with pytest.raises(DataDirBusy, match=r"pid \d+"):
        DataDirLock.acquire(tmp_path)
    lock.release()
    DataDirLock.acquire(tmp_path).release()


def test_restore_refuses_what_is_not_a_chime_database(tmp_path: Path) -> None:
    (tmp_path / "notes.sqlite3").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(OperatorError, match="not a Chime database"):
        backup.restore(tmp_path / "data", tmp_path / "notes.sqlite3")
    other = sqlite3.connect(tmp_path / "other.sqlite3")
    other.execute("CREATE TABLE t (x)")
    other.close()
    with pytest.raises(OperatorError, match="not a Chime database"):
        backup.restore(tmp_path / "data", tmp_path / "other.sqlite3")
    with pytest.raises(OperatorError, match="no backup"):
        backup.restore(tmp_path / "data", tmp_path / "missing")
    assert not (tmp_path / "data" / backup.DB_FILE_NAME).exists()


def test_a_database_file_alone_restores_too(tmp_path: Path, live: sqlite3.Connection) -> None:
    backup.backup(tmp_path / "data", tmp_path / "backup")
    contents, kept = backup.restore(tmp_path / "fresh", tmp_path / "backup" / backup.DB_FILE_NAME)
    assert contents.conversations == 3 and kept == []
    assert conversations(tmp_path / "fresh" / backup.DB_FILE_NAME)[0] == "conversation 0"


def _without_wal(path: Path) -> list[str]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT title FROM conversations")]
    finally:
        db.close()
