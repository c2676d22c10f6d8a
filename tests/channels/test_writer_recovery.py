"""A group commit the writer process dies under is recovered: every event stored once, told once, in order.

The writer may die before it reads the batch, inside its transaction, or after its
COMMIT and before its reply; the store cannot tell which, so it reads back what was
stored once another writer runs. Only a commit that fails for a known reason (here a
lock held past the busy timeout) or a writer that keeps dying fails the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any

import pytest

from channels.events import DELTA, DONE, Event
from channels.sqlite import SQLiteStore
from channels.sqlite.writer import WRITER_ENTRY
from channels.store import StoreUnavailable
from tests.channels.dying_writer import AFTER_COMMIT, BEFORE_COMMIT, dying_entry
from tests.channels.stores import new_channel, record_of
from tests.support.waiting import async_wait_until


def _stored_ids(store: SQLiteStore, channel: str) -> list[int]:
    """Every stored row of the channel, doubles included (``recent_events`` has no key on ids)."""
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT id FROM events WHERE channel = ?1 UNION ALL "
                          "SELECT id FROM recent_events WHERE channel = ?1 ORDER BY id", (channel,)).fetchall()
    return [row[0] for row in rows]


@contextlib.contextmanager
def _stopped_writer(store: SQLiteStore) -> Iterator[int]:
    """The writer stopped, so what is sent to it stays in flight, then killed on leaving
    (whatever the test did meanwhile: a stopped writer would hold the store's close)."""
    pid = store._w.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)


async def _writer_from(store: SQLiteStore, entry: Sequence[str], *, once: bool) -> int:
    """Replace the running writer with one started from ``entry``; with ``once`` the writers
    started after it are the usual one. Returns the new writer's pid."""
    pid = store._w.pid
    assert pid is not None
    store._w.entry = tuple(entry)
    os.kill(pid, signal.SIGKILL)
    await async_wait_until(lambda: store._w.exited, what="the writer's exit to be noticed")
    await store._w.ensure_running()
    if once:
        store._w.entry = WRITER_ENTRY
    new = store._w.pid
    assert new is not None and new != pid
    return new


async def _channels_with_a_delta(store: SQLiteStore, count: int) -> list[str]:
    channels = [await new_channel(store) for _ in range(count)]
    for channel in channels:
        await store.append(channel, DELTA, {"content": "a"})
    return channels


def _a_batch(store: SQLiteStore, channels: list[str]) -> asyncio.Future[list[Any]]:
    """Deltas to every channel (one only queued), then the first channel's terminal event:
    appended together, so the write loop takes them as one batch."""
    ending, *running = channels
    return asyncio.gather(*(store.append(channel, DELTA, {"content": "b"}) for channel in channels),
                          store.append(running[0], DELTA, {"content": "c"}, wait=False),
                          store.append(ending, DONE, {"finish_reason": "stop"}))


async def _assert_stored_and_told_once(store: SQLiteStore, heard: list[Event], contents: dict[str, str]) -> None:
    ending = next(iter(contents))
    for channel, content in contents.items():
        last = (await record_of(store, channel)).last_event_id
        assert _stored_ids(store, channel) == list(range(1, last + 1)), channel  # no gap, no double
        assert [e.id for e in heard if e.channel == channel] == list(range(1, last + 1)), channel
        assert await store.channel_content(channel) == content
    record = await record_of(store, ending)
    assert record.status == DONE and ending not in await store.running_channels()
    assert [(m.role, m.content, m.status) for m in await store.messages(record.conversation_id)][-1] == (
        "assistant", contents[ending], DONE)
    assert store._logs.keys() == set(contents) - {ending}


async def test_a_batch_in_flight_when_the_writer_is_killed_is_sent_again_first(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    heard: list[Event] = []
    store.on_commit = heard.extend
    channels = await _channels_with_a_delta(store, 3)

    with _stopped_writer(store) as first:  # it never reads the batch: the kill lands with it in flight
        batch = _a_batch(store, channels)
        await async_wait_until(lambda: store._w.in_flight > 0, what="the batch to reach the writer")
        assert len(store._in_flight) == len(channels) + 2
        behind = asyncio.gather(*(store.append(channel, DELTA, {"content": "d"}) for channel in channels[1:]))
    appended = await asyncio.wait_for(asyncio.gather(batch, behind), 10)  # none raised

    assert store._w.pid not in (None, first)
    assert [e.id for e in appended[0]] == [3, 3, 3, 4, 4]
    assert [e.id for e in appended[1]] == [5, 4]  # queued behind the batch, stored after it
    await _assert_stored_and_told_once(store, heard, dict(zip(channels, ("ab", "abcd", "abd"), strict=True)))


@pytest.mark.parametrize("when", [BEFORE_COMMIT, AFTER_COMMIT])
async def test_a_writer_dying_inside_a_group_commit_stores_and_tells_each_event_once(
        sqlite_store: SQLiteStore, when: str) -> None:
    store = sqlite_store
    heard: list[Event] = []
    store.on_commit = heard.extend
    channels = await _channels_with_a_delta(store, 3)
    dying = await _writer_from(store, dying_entry(when), once=True)
    commits = store.commits

    appended = await asyncio.wait_for(_a_batch(store, channels), 10)  # none raised

    assert store._w.pid not in (None, dying)
    assert [e.id for e in appended] == [3, 3, 3, 4, 4]
    assert store.commits == commits + 1  # after its COMMIT: told as committed; before: sent once more
    await _assert_stored_and_told_once(store, heard, dict(zip(channels, ("ab", "abc", "ab"), strict=True)))


async def test_a_writer_that_dies_on_every_commit_fails_the_batch_after_a_few_tries(
        sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    heard: list[Event] = []
    channel = (await _channels_with_a_delta(store, 1))[0]
    await _writer_from(store, dying_entry(BEFORE_COMMIT), once=False)
    store.on_commit = heard.extend

    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.append(channel, DELTA, {"content": "never stored"}), 10)
    assert time.monotonic() - started < 10
    assert heard == [] and _stored_ids(store, channel) == [1, 2]

    store._w.entry = WRITER_ENTRY  # as after any failed commit, the ids go on without a gap
    assert (await store.append(channel, DELTA, {"content": "b"})).id == 3
    assert await store.channel_content(channel) == "ab"


async def test_a_locked_database_fails_a_batch_the_writer_died_under_like_any_commit(
        sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    channel = (await _channels_with_a_delta(store, 1))[0]
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with _stopped_writer(store):
            pending: Awaitable[Event] = asyncio.ensure_future(store.append(channel, DELTA, {"content": "x"}))
            await async_wait_until(lambda: store._w.in_flight > 0, what="the append to reach the writer")
            started = time.monotonic()
        with pytest.raises(StoreUnavailable):  # sent again, it met the lock: a known outcome
            await asyncio.wait_for(pending, 10)
        assert time.monotonic() - started < 10
        holder.execute("ROLLBACK")
        assert (await store.append(channel, DELTA, {"content": "b"})).id == 3
        assert await store.channel_content(channel) == "ab"
    finally:
        holder.close()


async def test_deleting_a_conversation_waits_for_a_batch_the_writer_died_under(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    channel = (await _channels_with_a_delta(store, 1))[0]
    conversation = (await record_of(store, channel)).conversation_id

    with _stopped_writer(store):
        await store.append(channel, DELTA, {"content": "b"}, wait=False)
        await async_wait_until(lambda: store._w.in_flight > 0, what="the batch to reach the writer")
        deleting = asyncio.ensure_future(store.delete_conversation(conversation))
        await async_wait_until(lambda: store._in_flight[-1].future is not None, what="the deletion to wait")

    assert await asyncio.wait_for(deleting, 10) == [channel]
    assert _stored_ids(store, channel) == []  # the batch sent again did not outlive its channel
    assert await store.get_channel(channel) is None
