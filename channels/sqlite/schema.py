"""What the SQLite database is: its tables, how every connection is set up, who may read its files."""

from __future__ import annotations

import os
from pathlib import Path

# How long a connection waits for another's lock (another process writing, a backup).
# Shorter than any caller's deadline, so a locked database is a refusal, never a hang.
BUSY_TIMEOUT_MS = 2000
# The database and the -wal and -shm files SQLite makes beside it (with the database's mode).
FILE_MODE = 0o600

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # NORMAL in WAL mode: a commit survives a crash of the process; only a
    # power loss can take back the last transactions.
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
)

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
    # (``channels.sqlite.writer.Writer``): a commit then writes a few pages, not one per channel.
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


def secure_files(path: Path | str) -> None:
    """The database and its -wal and -shm readable by their owner only, made so before SQLite opens it.

    SQLite creates the -wal and -shm files with the database file's mode, so
    creating the database itself 0600 covers them; files an older Chime left
    with the umask's mode are narrowed. An existing database is never opened
    here: closing any descriptor of it drops every POSIX lock this process holds
    on it, those of SQLite's own connections included.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        try:
            if os.stat(name).st_mode & 0o777 != FILE_MODE:
                os.chmod(name, FILE_MODE)
        except FileNotFoundError:
            pass
