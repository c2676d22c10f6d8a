"""Direct writes: a caught-up reader is written to as events commit, and handed back when it must be."""

from __future__ import annotations

import asyncio

from channels.events import DELTA, DONE, Event
from channels.hub import Hub
from channels.reader import replay_then_live
from channels.store import Store
from tests.channels.stores import new_channel
from tests.support.waiting import async_wait_until

DEADLINE_S = 10.0


class Sink:
    """A connection: records what was written directly; refuses while ``full``."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.full = False

    def __call__(self, events: list[Event]) -> bool:
        if self.full:
            return False
        self.written += [event.id for event in events]
        return True


async def read_all(store: Store, hub: Hub, channel: str, sink: Sink, keepalive_s: float | None = None,
                   ) -> list[list[int]]:
    """What the reader's own loop yields (ids per batch); the rest went through ``sink``."""
    yielded = []
    async for batch in replay_then_live(store, hub, channel, 0, keepalive_s, sink):
        yielded.append([event.id for event in batch])
    return yielded


async def until(condition, what: str) -> None:
    await async_wait_until(condition, DEADLINE_S, what)


async def reader_past_a_direct_write(store: Store, hub: Hub) -> tuple[str, Sink, asyncio.Task]:
    """A reader attached to a running channel whose first delta (id 2) went straight to its sink."""
    channel = await new_channel(store)
    sink = Sink()
    reader = asyncio.create_task(read_all(store, hub, channel, sink))
    await until(lambda: hub.readers == 1, "the reader to attach")
    await store.append(channel, DELTA, {"content": "a"})
    await until(lambda: sink.written == [2], "a direct write")  # meta (1) was replayed by the loop
    return channel, sink, reader


async def test_live_events_go_straight_to_the_connection_after_their_commit(store: Store, hub: Hub) -> None:
    channel, sink, reader = await reader_past_a_direct_write(store, hub)
    await store.append(channel, DELTA, {"content": "b"})
    await store.append(channel, DONE, {"finish_reason": "stop"})
    yielded = await asyncio.wait_for(reader, DEADLINE_S)
    assert yielded == [[1]] and sink.written == [2, 3, 4]


async def test_a_refused_write_hands_the_events_back_to_the_reader_in_order(store: Store, hub: Hub) -> None:
    channel, sink, reader = await reader_past_a_direct_write(store, hub)
    sink.full = True  # the send buffer is full: the task must send the next events itself
    await store.append(channel, DELTA, {"content": "b"})
    await store.append(channel, DELTA, {"content": "c"})
    await store.append(channel, DONE, {"finish_reason": "stop"})
    yielded = await asyncio.wait_for(reader, DEADLINE_S)
    ids = [id_ for batch in yielded for id_ in batch]
    assert sink.written == [2] and ids[0] == 1 and ids[1:] == [3, 4, 5]


async def test_quiet_for_the_keepalive_interval_yields_a_keepalive(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    sink = Sink()
    yielded: list[list[int]] = []

    async def read() -> None:
        async for batch in replay_then_live(store, hub, channel, 0, 0.05, sink):
            yielded.append([event.id for event in batch])

    reader = asyncio.create_task(read())
    await until(lambda: hub.readers == 1, "the reader to attach")
    await store.append(channel, DELTA, {"content": "a"})
    await until(lambda: sink.written == [2], "a direct write")
    await until(lambda: [] in yielded, "a keepalive after the quiet interval")
    await store.append(channel, DONE, {"finish_reason": "stop"})
    await asyncio.wait_for(reader, DEADLINE_S)
    assert yielded[0] == [1] and set(map(tuple, yielded[1:])) == {()} and sink.written == [2, 3]


async def test_shutdown_hands_every_follower_back_and_ends_its_stream(store: Store, hub: Hub) -> None:
    _, _, reader = await reader_past_a_direct_write(store, hub)
    hub.shutdown()
    assert await asyncio.wait_for(reader, DEADLINE_S) == [[1]]


async def test_a_deleted_channel_ends_a_following_reader(store: Store, hub: Hub) -> None:
    channel = await new_channel(store)
    sink = Sink()
    reader = asyncio.create_task(read_all(store, hub, channel, sink))
    await until(lambda: hub.readers == 1, "the reader to attach")
    await until(lambda: any(feed._followers for feed in hub._feeds.values()), "the reader to follow")
    hub.forget(channel)
    assert await asyncio.wait_for(reader, DEADLINE_S) == [[1]]
