"""The SQLite writer runs in a child process: its death loses nothing committed and stops nothing for long."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from channels.events import DELTA, DONE
from channels.sqlite import SQLiteStore
from channels.store import NewAnswer, StoreUnavailable
from tests.channels.stores import new_channel, new_id, new_user
from tests.support.waiting import async_wait_until

T = TypeVar("T")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_killed_writer_loses_no_append_it_held_and_the_next_write_starts_another(
        sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    channel = await new_channel(store)
    await store.append(channel, DELTA, {"content": "kept"})
    first = store._w.pid
    assert first is not None and _alive(first)

    os.kill(first, signal.SIGSTOP)  # so the next append is surely in flight when it dies
    pending = asyncio.ensure_future(store.append(channel, DELTA, {"content": " and held"}))
    await async_wait_until(lambda: store._w.in_flight > 0, what="the append to reach the writer")
    os.kill(first, signal.SIGKILL)
    held = await asyncio.wait_for(pending, 10)  # sent again to a new writer (test_writer_recovery.py)

    end = await store.append(channel, DONE, {"finish_reason": "stop"})
    second = store._w.pid
    assert second not in (None, first) and _alive(second)
    assert (held.id, end.id) == (3, 4)
    assert await store.channel_content(channel) == "kept and held"


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


async def _in_flight_when_the_writer_dies(store: SQLiteStore, write: Awaitable[T]) -> asyncio.Future[T]:
    """Start ``write`` while the writer is stopped, then kill the writer under it."""
    pid = store._w.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    pending = asyncio.ensure_future(write)
    await async_wait_until(lambda: store._w.in_flight > 0, what="the write to reach the writer")
    os.kill(pid, signal.SIGKILL)
    return pending


async def test_an_idempotent_write_is_sent_again_when_the_writer_dies_under_it(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    user = await new_user(store)
    first = store._w.pid
    await asyncio.wait_for(await _in_flight_when_the_writer_dies(
        store, store.save_subscription(user, "https://push.example/a", "key", "auth")), 10)
    assert store._w.pid != first
    assert [s.endpoint for s in await store.subscriptions_for(user)] == ["https://push.example/a"]


async def test_a_write_that_cannot_be_repeated_is_unavailable_when_the_writer_dies_under_it(
        sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    pending = await _in_flight_when_the_writer_dies(store, store.create_user("u1", "hash-1"))
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(pending, 10)
    assert await store.user_for_token_hash("hash-1") is None  # it had not run: nothing half-made
    await store.create_user("u1", "hash-1")  # the next write goes through a new writer
    assert await store.user_for_token_hash("hash-1") == "u1"


async def test_a_submission_the_writer_died_under_is_unavailable_and_left_no_trace(
        sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    user = new_id()
    answer = NewAnswer(new_id(), user, new_id(), "demo", "hello", new_user=(user, "hash"), new_title="t")
    pending = await _in_flight_when_the_writer_dies(store, store.create_answer(answer))
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(pending, 10)
    assert await store.get_channel(answer.channel_id) is None
    assert await store.user_for_token_hash("hash") is None
    assert store._logs == {}
    assert (await store.create_answer(answer)).id == 1  # sent again by the client, it works


async def test_a_write_a_stuck_writer_cannot_start_in_time_is_refused_and_never_lands(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chime.sqlite3", write_deadline_s=0.2)
    await store.open()
    pid = store._w.pid
    assert pid is not None
    try:
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await store.create_user("u1", "hash-1")
            assert await store.writable() is False
        finally:
            os.kill(pid, signal.SIGCONT)
        assert time.monotonic() - started < 10
        await store.create_user("u2", "hash-2")  # after the refused one, in the writer's order
        assert await store.user_for_token_hash("hash-1") is None
        assert await store.user_for_token_hash("hash-2") == "u2"
        assert store._w.pid == pid
    finally:
        await store.close()


async def test_a_lock_held_by_another_process_is_unavailable_within_the_deadline(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    channel = await new_channel(store)
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.create_user("u1", "hash-1")
        with pytest.raises(StoreUnavailable):  # the group commit too: its appender hears it
            await store.append(channel, DELTA, {"content": "x"})
        assert time.monotonic() - started < 10
        assert await store.read_after(channel, 0)  # reads go on
        holder.execute("ROLLBACK")
        await store.create_user("u1", "hash-1")
        assert (await store.append(channel, DELTA, {"content": "y"})).id == 2
    finally:
        holder.close()
