"""The hub and the replay-then-live reader, on a real SQLite store."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest

import channels.hub as hub_module
from channels.events import DELTA, DONE, Event
from channels.hub import TAIL_EVENTS, Feed, Hub
from channels.reader import replay_then_live
from channels.store import Store
from tests.channels.stores import new_channel

DEADLINE_S = 10.0


async def append_deltas(store: Store, channel: str, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await store.append(channel, DELTA, {"content": f"{n} "})


async def read_all(store: Any, hub: Hub, channel: str, after: int = 0,
                   keepalive_s: float | None = None) -> list[Event]:
    events: list[Event] = []
    async for batch in replay_then_live(store, hub, channel, after, keepalive_s):
        events.extend(batch)
    return events


def waiting_readers(hub: Hub, channel: str) -> int:
    """Readers parked on the channel's feed (a peek inside the hub, for tests only)."""
    feed = hub._feeds.get(channel)
    return len(feed._waiters) if feed is not None else 0


def ids(events: list[Event]) -> list[int]:
    return [event.id for event in events]


async def test_replay_then_live_has_no_gap_and_no_duplicate(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    await append_deltas(store, channel, 5)
    readers = [asyncio.create_task(read_all(store, hub, channel, after)) for after in (0, 3, 6)]
    await asyncio.sleep(0)  # let the readers replay first; correctness does not depend on it
    await append_deltas(store, channel, 40, start=5)
    await store.append(channel, DONE, {"finish_reason": "stop"})
    results = await asyncio.wait_for(asyncio.gather(*readers), DEADLINE_S)
    for after, events in zip((0, 3, 6), results, strict=True):
        assert ids(events) == list(range(after + 1, 48))
    assert results[0] == await store.read_after(channel, 0)


async def test_a_reader_behind_the_tail_reads_the_store(store: Store, hub: Hub,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "TAIL_EVENTS", 4)
    channel = await new_channel(store)
    feed = hub.acquire(channel)  # a live reader keeps the feed, and its short tail, in the hub
    try:
        await append_deltas(store, channel, 30)
        assert feed.first_id > 2 and feed.since(0, 100) is None
        await store.append(channel, DONE, {"finish_reason": "stop"})
        events = await asyncio.wait_for(read_all(store, hub, channel, 1), DEADLINE_S)
    finally:
        hub.release(feed)
    assert ids(events) == list(range(2, 33))
    assert events == await store.read_after(channel, 1)


def test_a_feed_keeps_exactly_its_latest_events_as_each_new_one_comes() -> None:
    feed = Feed("channel")
    for number in range(1, 3 * TAIL_EVENTS + 1):
        feed.add([Event.make("channel", number, DELTA, {"content": f"{number} "})])
        assert ids(feed.tail) == list(range(max(1, number - TAIL_EVENTS + 1), number + 1))
    last = 3 * TAIL_EVENTS
    assert feed.first_id == last - TAIL_EVENTS + 1
    assert ids(feed.since(last - 3, 100) or []) == [last - 2, last - 1, last]
    assert feed.since(last - TAIL_EVENTS - 1, 100) is None  # older than the tail: the store's to read


async def test_a_slow_reader_blocks_neither_a_fast_one_nor_the_writer(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    slow_may_go_on = asyncio.Event()
    slow_got: list[Event] = []

    async def slow() -> None:
        async for batch in replay_then_live(store, hub, channel, 0, None):
            slow_got.extend(batch)
            await slow_may_go_on.wait()  # a client that stopped reading

    slow_task = asyncio.create_task(slow())
    fast_task = asyncio.create_task(read_all(store, hub, channel))
    while not slow_got:
        await asyncio.sleep(0)
    await asyncio.wait_for(append_deltas(store, channel, 1_200), DEADLINE_S)  # over two tails' worth
    await asyncio.wait_for(store.append(channel, DONE, {"finish_reason": "stop"}), DEADLINE_S)
    fast = await asyncio.wait_for(fast_task, DEADLINE_S)
    assert ids(fast) == list(range(1, 1_203))
    assert not slow_task.done() and ids(slow_got) == [1]
    slow_may_go_on.set()
    await asyncio.wait_for(slow_task, DEADLINE_S)
    assert slow_got == fast


async def test_a_quiet_stream_yields_a_keepalive(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    stream = replay_then_live(store, hub, channel, 0, keepalive_s=0.02)
    try:
        assert ids(await anext(stream)) == [1]
        assert await asyncio.wait_for(anext(stream), DEADLINE_S) == []
        assert await asyncio.wait_for(anext(stream), DEADLINE_S) == []
        await store.append(channel, DELTA, {"content": "live"})
        assert ids(await asyncio.wait_for(anext(stream), DEADLINE_S)) == [2]
    finally:
        await stream.aclose()
    assert hub.feeds == 0 and hub.readers == 0


async def test_shutdown_ends_waiting_readers(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    readers = [asyncio.create_task(read_all(store, hub, channel)) for _ in range(3)]
    while waiting_readers(hub, channel) < 3:
        await asyncio.sleep(0)
    hub.shutdown()
    for events in await asyncio.wait_for(asyncio.gather(*readers), DEADLINE_S):
        assert ids(events) == [1]


class _StoreThatInterleaves:
    """A store whose reads let something happen between the read and the reader's next step."""

    def __init__(self, store: Store, during_read):
        self.store = store
        self.during_read = during_read
        self.reads = 0

    async def read_after(self, channel: str, after: int, limit: int = 1000) -> list[Event]:
        events = await self.store.read_after(channel, after, limit)
        self.reads += 1
        await self.during_read(self.reads)
        return events


async def test_a_commit_during_the_store_read_is_not_missed(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)

    async def commit_while_reading(reads: int) -> None:
        if reads == 1:  # the read saw only meta; id 2 commits before the reader waits
            await store.append(channel, DELTA, {"content": "raced"})

    racing = _StoreThatInterleaves(store, commit_while_reading)
    stream = replay_then_live(racing, hub, channel, 0, None)
    try:
        assert ids(await asyncio.wait_for(anext(stream), DEADLINE_S)) == [1]
        assert ids(await asyncio.wait_for(anext(stream), DEADLINE_S)) == [2]
    finally:
        await stream.aclose()


async def test_a_shutdown_during_the_store_read_is_not_missed(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)

    async def shut_down_while_reading(reads: int) -> None:
        if reads == 2:  # the reader is about to wait for live events
            hub.shutdown()

    racing = _StoreThatInterleaves(store, shut_down_while_reading)
    events = await asyncio.wait_for(read_all(racing, hub, channel), DEADLINE_S)
    assert ids(events) == [1]


async def test_deleting_the_channel_ends_its_readers(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    record = await store.get_channel(channel)
    assert record is not None
    conversation = record.conversation_id
    reader = asyncio.create_task(read_all(store, hub, channel))
    while hub.readers < 1:
        await asyncio.sleep(0)
    for deleted in await store.delete_conversation(conversation):
        hub.forget(deleted)
    assert ids(await asyncio.wait_for(reader, DEADLINE_S)) == [1]


async def test_every_wake_up_reaches_a_live_reader(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    stream = replay_then_live(store, hub, channel, 0, None)
    try:
        assert ids(await anext(stream)) == [1]
        for n in range(2, 60):
            await store.append(channel, DELTA, {"content": "x"})
            assert ids(await asyncio.wait_for(anext(stream), DEADLINE_S)) == [n]
    finally:
        await stream.aclose()


# ---- polling: the same reader, its first batch ------------------------------------------------

async def poll(store: Any, hub: Hub, channel: str, after: int, wait_s: float) -> list[Event]:
    """What ``events.json`` answers: the reader's first batch, the wait as its keepalive interval."""
    async with aclosing(replay_then_live(store, hub, channel, after, wait_s)) as batches:
        return await anext(batches, [])


async def test_a_poll_answers_at_once_when_events_exist(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    await append_deltas(store, channel, 3)
    assert ids(await poll(store, hub, channel, 0, wait_s=30)) == [1, 2, 3, 4]
    assert ids(await poll(store, hub, channel, 2, wait_s=30)) == [3, 4]
    assert await poll(store, hub, channel, 4, wait_s=0) == []
    assert hub.readers == 0


async def test_a_poll_holds_for_the_next_event(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    held = asyncio.create_task(poll(store, hub, channel, 1, wait_s=30))
    while hub.readers < 1:
        await asyncio.sleep(0)
    assert not held.done()
    await store.append(channel, DELTA, {"content": "next"})
    assert ids(await asyncio.wait_for(held, DEADLINE_S)) == [2]
    assert hub.readers == 0


async def test_a_poll_gives_up_after_the_wait(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    assert await asyncio.wait_for(poll(store, hub, channel, 1, wait_s=0.02), DEADLINE_S) == []


async def test_a_poll_returns_on_shutdown(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    held = asyncio.create_task(poll(store, hub, channel, 1, wait_s=30))
    while hub.readers < 1:
        await asyncio.sleep(0)
    hub.shutdown()
    assert await asyncio.wait_for(held, DEADLINE_S) == []
    assert await asyncio.wait_for(poll(store, hub, channel, 1, wait_s=30), DEADLINE_S) == []
