"""The write-ahead log stays bounded while commits never pause."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from channels.events import DELTA, DONE
from channels.sqlite import SQLiteStore
from tests.channels.stores import new_channel

WAL_LIMIT_BYTES = 512 * 1024
CHECKPOINT_EVERY_EVENTS = 200
CHANNELS = 20
ROUNDS = 1_000  # 20,000 events in 1,000 small commits, as paced streams commit them
# What may be written past the limit before the catching-up checkpoint ends: commits go
# on during its first pass. Without it the WAL grows a page per event, past 100 MB here.
SLACK_BYTES = 16 * 1024 * 1024


async def test_the_wal_stays_bounded_while_commits_never_pause(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chime.sqlite3", checkpoint_every_events=CHECKPOINT_EVERY_EVENTS,
                        wal_limit_bytes=WAL_LIMIT_BYTES)
    await store.open()
    try:
        channels = [await new_channel(store) for _ in range(CHANNELS)]
        largest = 0
        for _ in range(ROUNDS):
            for channel in channels[:-1]:
                await store.append(channel, DELTA, {"content": "x"}, wait=False)
            await store.append(channels[-1], DELTA, {"content": "x"})  # one commit per round
            largest = max(largest, store.wal_bytes())
        for channel in channels:
            await store.append(channel, DONE, {"finish_reason": "stop"})
        stored = [await store.read_after(channel, 0, ROUNDS + 10) for channel in channels]
    finally:
        await store.close()
    assert largest <= WAL_LIMIT_BYTES + SLACK_BYTES, f"the WAL grew to {largest:,} bytes"
    for events in stored:
        assert [event.id for event in events] == list(range(1, ROUNDS + 3))


SIGN_UPS = 3_000
# Each sign-up wrote ~13 KiB of WAL that no checkpoint counted: 3,000 of them grew it past 35 MiB.
SIGN_UP_WAL_BOUND_BYTES = 4 * 1024 * 1024


async def test_the_wal_stays_bounded_under_writes_that_append_no_events(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chime.sqlite3", checkpoint_every_events=CHECKPOINT_EVERY_EVENTS,
                        wal_limit_bytes=WAL_LIMIT_BYTES)
    await store.open()
    try:
        largest = 0
        for n in range(SIGN_UPS):
            await store.create_user(f"user-{n}", f"hash-{n}")
            largest = max(largest, store.wal_bytes())
        assert await store.user_for_token_hash(f"hash-{SIGN_UPS - 1}") == f"user-{SIGN_UPS - 1}"
    finally:
        await store.close()
    assert largest <= SIGN_UP_WAL_BOUND_BYTES, f"the WAL grew to {largest:,} bytes"


def _modes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mode & 0o777 for path in directory.iterdir()}


async def test_the_database_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # a common umask: files would be 0644 if left to it
    try:
        store = SQLiteStore(tmp_path / "data" / "chime.sqlite3")
        await store.open()
        try:
            await new_channel(store)
            modes = _modes(tmp_path / "data")
        finally:
            await store.close()
    finally:
        os.umask(old_umask)
    assert {"chime.sqlite3", "chime.sqlite3-wal", "chime.sqlite3-shm"} <= set(modes)
    assert modes == {name: 0o600 for name in modes}


async def test_files_an_older_version_left_readable_by_others_are_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "chime.sqlite3"
    with sqlite3.connect(path) as db:  # as made before: the umask's mode
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE t (x)")
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if name.exists():
                name.chmod(0o644)
        store = SQLiteStore(path)
        await store.open()
        try:
            await new_channel(store)
            modes = _modes(tmp_path)
        finally:
            await store.close()
    assert modes["chime.sqlite3"] == 0o600 and modes == {name: 0o600 for name in modes}
