"""The SQLite writer runs in a child process: its death loses nothing committed and stops nothing for long."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from channels.events import DELTA, DONE
from channels.sqlite_store import SQLiteStore
from channels.sqlite_writer import WriterGone
from tests.channels.stores import new_channel
from tests.support.waiting import async_wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_killed_writer_fails_what_it_held_and_the_next_write_starts_another(
        sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    channel = await new_channel(store)
    await store.append(channel, DELTA, {"content": "kept"})
    first = store._w.pid
    assert first is not None and _alive(first)

    os.kill(first, signal.SIGSTOP)  # so the next append is surely in flight when it dies
    pending = asyncio.ensure_future(store.append(channel, DELTA, {"content": "lost with the writer"}))
    await async_wait_until(lambda: store._w.in_flight > 0, what="the append to reach the writer")
    os.kill(first, signal.SIGKILL)
    with pytest.raises(WriterGone):
        await asyncio.wait_for(pending, 10)

    # The next append reloads the channel's true next id and goes through a new writer.
    after = await store.append(channel, DELTA, {"content": " again"})
    end = await store.append(channel, DONE, {"finish_reason": "stop"})
    second = store._w.pid
    assert second not in (None, first) and _alive(second)
    assert (after.id, end.id) == (3, 4)
    assert await store.channel_content(channel) == "kept again"


async def test_the_writer_ignores_the_signals_meant_for_the_server_and_exits_with_the_store(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chime.sqlite3")
    await store.open()
    pid = store._w.pid
    assert pid is not None
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or a service manager's stop
            os.kill(pid, signum)
        channel = await new_channel(store)  # still the same writer, still writing
        await store.append(channel, DONE, {"finish_reason": "stop"})
        assert store._w.pid == pid
    finally:
        await store.close()
    await async_wait_until(lambda: not _alive(pid), timeout_s=10, what="the writer to exit")


async def test_a_write_error_crosses_the_process_boundary_with_its_type(sqlite_store: SQLiteStore) -> None:
    await sqlite_store.create_user("u1", "hash")
    with pytest.raises(sqlite3.IntegrityError):
        await sqlite_store.create_user("u2", "hash")  # token_hash is unique
    assert await sqlite_store.user_for_token_hash("hash") == "u1"
