"""``append(..., wait=False)``: tokens queued without awaiting each commit, still never read uncommitted."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from channels.events import DELTA, DONE, USAGE, Event
from channels.sqlite import SQLiteStore
from channels.store import Store
from tests.channels.stores import StoreKind, new_channel, new_id, new_user


async def test_queued_events_are_committed_in_order_before_any_reader_hears_of_them(
        store: Store, kind: StoreKind, location: Path) -> None:
    channel = await new_channel(store)
    heard: list[int] = []
    committed_when_heard: list[bool] = []

    def on_commit(events: Sequence[Event]) -> None:
        ids = [e.id for e in events if e.channel == channel]
        committed = set(kind.committed_ids(location, channel))
        committed_when_heard.append(all(id_ in committed for id_ in ids))
        heard.extend(ids)

    store.on_commit = on_commit
    queued = [await store.append(channel, DELTA, {"content": f"{n} "}, wait=False) for n in range(50)]
    usage = await store.append(channel, USAGE, {"prompt_tokens": 1, "completion_tokens": 50,
                                                "total_tokens": 51}, wait=False)
    end = await store.append(channel, DONE, {"finish_reason": "stop"})

    assert [e.id for e in queued] == list(range(2, 52)) and usage.id == 52 and end.id == 53
    assert kind.committed_ids(location, channel) == list(range(1, 54))  # the terminal waited for all
    assert heard == list(range(2, 54)) and all(committed_when_heard)
    assert await store.channel_content(channel) == "".join(f"{n} " for n in range(50))


async def test_a_terminal_event_is_never_only_queued(store: Store, kind: StoreKind, location: Path) -> None:
    channel = await new_channel(store)
    end = await store.append(channel, DONE, {"finish_reason": "stop"}, wait=False)
    assert kind.committed_ids(location, channel)[-1] == end.id == 2


async def test_deleting_a_conversation_waits_for_its_queued_events(
        store: Store, kind: StoreKind, location: Path) -> None:
    user = await new_user(store)
    conversation = (await store.create_conversation(new_id(), user, "t")).id
    channel = await new_channel(store, user, conversation)
    for n in range(20):
        await store.append(channel, DELTA, {"content": str(n)}, wait=False)
    assert await store.delete_conversation(conversation) == [channel]
    assert kind.committed_ids(location, channel) == []  # no event outlived its channel
    assert await store.get_channel(channel) is None


async def test_a_failed_commit_drops_the_queued_events_and_fails_the_next_append(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    channel = await new_channel(store)
    await store.append(channel, DELTA, {"content": "kept"})
    with sqlite3.connect(store.path) as db:  # a real write failure, raised by SQLite itself
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON recent_events WHEN NEW.data = "
                   "CAST('{\"content\":\"boom\"}' AS BLOB) BEGIN SELECT RAISE(ABORT, 'refused'); END")
    heard: list[int] = []
    store.on_commit = lambda events: heard.extend(e.id for e in events)
    for content in ("lost 1", "boom", "lost 2"):
        await store.append(channel, DELTA, {"content": content}, wait=False)
    with pytest.raises(sqlite3.DatabaseError, match="refused"):
        await store.append(channel, DELTA, {"content": "after the failure"})
    assert heard == []  # nothing of the failed batch reached a reader

    after = await store.append(channel, DELTA, {"content": " again"})
    end = await store.append(channel, DONE, {"finish_reason": "stop"})
    assert (after.id, end.id) == (3, 4)  # ids continue with no gap
    assert [e.id for e in await store.read_after(channel, 0)] == [1, 2, 3, 4]
    assert await store.channel_content(channel) == "kept again"


async def test_the_terminal_commit_stores_the_whole_answer_before_and_after_a_restart(
        kind: StoreKind, location: Path) -> None:
    store = kind.make(location)
    await store.open()
    user = await new_user(store)
    conversation = (await store.create_conversation(new_id(), user, "t")).id
    fresh, resumed = await new_channel(store, user, conversation), await new_channel(store, user, conversation)
    for n in range(30):
        await store.append(fresh, DELTA, {"content": f"a{n} "}, wait=False)
        await store.append(resumed, DELTA, {"content": f"b{n} "}, wait=False)
    await store.append(fresh, DONE, {"finish_reason": "stop"})
    await store.close()

    store = kind.make(location)  # a new process: it did not see the first 30 deltas of `resumed`
    await store.open()
    try:
        await store.append(resumed, DELTA, {"content": "after restart"}, wait=False)
        await store.append(resumed, DONE, {"finish_reason": "stop"})
        answers = {m.channel: m.content for m in await store.messages(conversation) if m.role == "assistant"}
        assert answers == {fresh: "".join(f"a{n} " for n in range(30)),
                           resumed: "".join(f"b{n} " for n in range(30)) + "after restart"}
    finally:
        await store.close()
