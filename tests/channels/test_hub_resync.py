"""After a failed or unknown-outcome write, no reader waits for an event that is stored.

A writer that dies after COMMIT but before replying leaves events in the store
that the hub was never told of. ``Hub.resync`` is the hook for that: these
tests commit events with the hub deaf to them (exactly that state), then call it.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from channels.events import DELTA, DONE, Event
from channels.hub import Hub
from channels.reader import replay_then_live
from channels.store import Store
from tests.channels.stores import new_channel
from tests.support.waiting import async_wait_until

DEADLINE_S = 10.0
QUIET_S = 0.05  # long enough that a reader that would be woken has been


async def commit_untold(store: Store, hub: Hub, channel: str, type: str, data: dict[str, Any]) -> None:
    """The commit lands, the hub hears nothing: a writer gone between COMMIT and its reply."""
    store.on_commit = None
    try:
        await store.append(channel, type, data)
    finally:
        store.on_commit = hub.publish


async def read_ids(store: Store, hub: Hub, channel: str, sink: list[int] | None = None) -> list[int]:
    """Ids the reader's own loop yields; with ``sink``, live ones may go there directly instead."""
    def write(events: list[Event]) -> bool:
        assert sink is not None
        sink.extend(event.id for event in events)
        return True

    ids: list[int] = []
    async with aclosing(replay_then_live(store, hub, channel, 0, None, write if sink is not None else None)) as batches:
        async for batch in batches:
            ids += [event.id for event in batch]
    return ids


async def started(hub: Hub, store: Store, channel: str, sink: list[int] | None = None) -> asyncio.Task[list[int]]:
    """A reader caught up with the live channel (id 2 told to it), parked for more."""
    reader = asyncio.create_task(read_ids(store, hub, channel, sink))
    await async_wait_until(lambda: hub.readers == 1, DEADLINE_S, "the reader to attach")
    await store.append(channel, DELTA, {"content": "told"})
    await async_wait_until(lambda: hub._feeds[channel].last_id == 2, DEADLINE_S, "id 2 to be published")
    await asyncio.sleep(QUIET_S)
    return reader


def hub_reading(store: Store) -> Hub:
    hub = Hub(store)
    store.on_commit = hub.publish
    return hub


async def test_a_waiting_reader_gets_what_was_stored_untold_and_the_end(store: Store) -> None:
    hub = hub_reading(store)
    channel = await new_channel(store)
    reader = await started(hub, store, channel)
    await commit_untold(store, hub, channel, DELTA, {"content": "untold"})
    await commit_untold(store, hub, channel, DONE, {"finish_reason": "stop"})
    await asyncio.sleep(QUIET_S)
    assert not reader.done()  # without the hook it would wait for ever
    hub.resync([channel])
    assert await asyncio.wait_for(reader, DEADLINE_S) == [1, 2, 3, 4]


async def test_a_following_reader_is_written_the_stored_events_directly(store: Store) -> None:
    hub = hub_reading(store)
    channel = await new_channel(store)
    sink: list[int] = []
    reader = await started(hub, store, channel, sink)
    await commit_untold(store, hub, channel, DELTA, {"content": "untold"})
    hub.resync([channel])
    await async_wait_until(lambda: sink == [2, 3], DEADLINE_S, "the stored event to be written")
    await store.append(channel, DONE, {"finish_reason": "stop"})  # later commits go on as usual
    assert await asyncio.wait_for(reader, DEADLINE_S) == [1]
    assert sink == [2, 3, 4]


async def test_a_failed_write_that_stored_nothing_wakes_nobody(store: Store) -> None:
    hub = hub_reading(store)
    channel = await new_channel(store)
    sink: list[int] = []
    reader = await started(hub, store, channel, sink)
    hub.resync([channel, "a-channel-nobody-reads"])
    await hub.settle()
    await asyncio.sleep(QUIET_S)
    assert not reader.done() and sink == [2]
    await store.append(channel, DONE, {"finish_reason": "stop"})
    assert await asyncio.wait_for(reader, DEADLINE_S) == [1] and sink == [2, 3]


async def test_without_the_store_the_hub_sends_its_readers_back_to_the_store(store: Store) -> None:
    hub = Hub()
    store.on_commit = hub.publish
    channel = await new_channel(store)
    waiting = await started(hub, store, channel)
    sink: list[int] = []
    following = asyncio.create_task(read_ids(store, hub, channel, sink))
    await async_wait_until(lambda: hub.readers == 2, DEADLINE_S, "the second reader to attach")
    await commit_untold(store, hub, channel, DELTA, {"content": "untold"})
    await commit_untold(store, hub, channel, DONE, {"finish_reason": "stop"})
    hub.resync([channel])
    assert await asyncio.wait_for(waiting, DEADLINE_S) == [1, 2, 3, 4]
    assert await asyncio.wait_for(following, DEADLINE_S) + sink == [1, 2, 3, 4]


class FailingReads:
    """The store, with reads that fail while ``failing`` (a locked database)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failing = False

    async def read_after(self, channel: str, after: int, limit: int = 1000) -> list[Event]:
        if self.failing:
            raise OSError("the database is locked")
        return await self.store.read_after(channel, after, limit)


async def test_when_the_hub_cannot_read_the_store_its_readers_try_themselves(store: Store) -> None:
    reads = FailingReads(store)
    hub = Hub(reads)
    store.on_commit = hub.publish
    channel = await new_channel(store)
    reader = await started(hub, store, channel)
    await commit_untold(store, hub, channel, DONE, {"finish_reason": "stop"})
    reads.failing = True
    hub.resync([channel])
    await hub.settle()
    assert await asyncio.wait_for(reader, DEADLINE_S) == [1, 2, 3]  # its own read of the store


async def test_a_reader_of_a_feed_told_of_nothing_yet_rereads_the_store(store: Store) -> None:
    hub = hub_reading(store)
    channel = await new_channel(store)
    reader = asyncio.create_task(read_ids(store, hub, channel))
    await async_wait_until(lambda: hub.readers == 1 and hub._feeds[channel]._waiters, DEADLINE_S,
                           "the reader to wait after its replay")
    await commit_untold(store, hub, channel, DONE, {"finish_reason": "stop"})
    hub.resync([channel])
    assert await asyncio.wait_for(reader, DEADLINE_S) == [1, 2]
