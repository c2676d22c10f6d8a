"""The ``EventLog`` contract (channels/store.py), run against every implementation.

Only the protocols are used, so a new backend runs this suite unchanged by joining
``STORE_KINDS``; the channels it reads are made through ``Records`` as the app makes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from channels.events import CANCELLED, DELTA, DONE, ERROR, INTERRUPTED, META, USAGE, Event
from channels.store import ChannelClosed, Store, UnknownChannel
from tests.channels.stores import StoreKind, is_utc_iso, new_channel, new_id, new_user, record_of

TERMINALS = {DONE: {"finish_reason": "stop"}, ERROR: {"code": "model_error", "message": "boom"},
             CANCELLED: {}, INTERRUPTED: {"reason": "server_shutdown"}}


# ---- ids and meta ------------------------------------------------------------

async def test_meta_is_event_1_with_the_channel_facts(store: Store) -> None:
    user = await new_user(store)
    conversation = await store.create_conversation(new_id(), user, "t")
    channel = new_id()
    meta = await store.create_channel(channel, user, conversation.id, "demo")
    assert (meta.id, meta.type) == (1, META)
    assert meta.data == {"channel": channel, "conversation_id": conversation.id, "model": "demo"}
    assert await store.read_after(channel, 0) == [meta]
    record = await store.get_channel(channel)
    assert record is not None
    assert (record.user_id, record.conversation_id, record.model) == (user, conversation.id, "demo")
    assert (record.status, record.finished_at, record.usage, record.last_event_id) == ("running", None, None, 1)
    assert is_utc_iso(record.created_at)


async def test_concurrent_appends_to_many_channels_get_ids_without_gaps(store: Store) -> None:
    channels = [await new_channel(store) for _ in range(8)]
    per_channel = 40
    appends = [store.append(channel, DELTA, {"content": f"{channel}:{n}"})
               for n in range(per_channel) for channel in channels]
    returned = await asyncio.gather(*appends)
    for channel in channels:
        mine = [event for event in returned if event.channel == channel]
        assert sorted(event.id for event in mine) == list(range(2, per_channel + 2))
        stored = await store.read_after(channel, 0)
        assert [event.id for event in stored] == list(range(1, per_channel + 2))
        assert stored[1:] == sorted(mine, key=lambda event: event.id)
        # Appends started in this order, so the log keeps this order.
        assert [event.data["content"] for event in stored[1:]] == [f"{channel}:{n}" for n in range(per_channel)]


async def test_many_concurrent_appends_cost_far_fewer_commits(store: Store) -> None:
    channels = [await new_channel(store) for _ in range(10)]
    commits_before = store.commits
    events = 500
    await asyncio.gather(*(store.append(channels[n % 10], DELTA, {"content": "x"}) for n in range(events)))
    commits = store.commits - commits_before
    print(f"group commit: {events} concurrent appends in {commits} commits")
    assert 1 <= commits <= events // 10


async def test_unknown_channel_cannot_be_appended_to(store: Store) -> None:
    with pytest.raises(UnknownChannel):
        await store.append("no-such-channel", DELTA, {"content": "x"})
    assert await store.get_channel("no-such-channel") is None
    assert await store.read_after("no-such-channel", 0) == []


# ---- durability before readers -------------------------------------------------

async def test_append_returns_only_once_the_event_is_committed(kind: StoreKind, location: Path,
                                                               store: Store) -> None:
    channel = await new_channel(store)
    for n in range(5):
        event = await store.append(channel, DELTA, {"content": str(n)})
        assert event.id in kind.committed_ids(location, channel)


async def test_on_commit_runs_after_the_commit_with_every_event(kind: StoreKind, location: Path,
                                                                store: Store) -> None:
    channel = await new_channel(store)
    batches: list[list[int]] = []
    seen_by_another_connection: list[bool] = []

    def on_commit(events: Sequence[Event]) -> None:
        ids = [event.id for event in events if event.channel == channel]
        batches.append(ids)
        committed = set(kind.committed_ids(location, channel))
        seen_by_another_connection.append(all(id_ in committed for id_ in ids))

    store.on_commit = on_commit
    await asyncio.gather(*(store.append(channel, DELTA, {"content": str(n)}) for n in range(30)))
    await store.append(channel, DONE, {"finish_reason": "stop"})
    assert seen_by_another_connection and all(seen_by_another_connection)
    published = [id_ for batch in batches for id_ in batch]
    assert published == list(range(2, 33))  # each event once, in id order


# ---- the terminal event ------------------------------------------------------------

@pytest.mark.parametrize("terminal", sorted(TERMINALS))
async def test_terminal_event_finishes_the_channel_and_the_answer(store: Store, terminal: str) -> None:
    user = await new_user(store)
    conversation = await store.create_conversation(new_id(), user, "t")
    channel = await new_channel(store, user, conversation.id)
    for piece in ("Hello", ", ", "wörld 🌍"):
        await store.append(channel, DELTA, {"content": piece})
    end = await store.append(channel, terminal, TERMINALS[terminal])
    assert (end.id, end.type, end.data) == (5, terminal, TERMINALS[terminal])
    record = await store.get_channel(channel)
    assert record is not None
    assert (record.status, record.last_event_id) == (terminal, 5)
    assert record.finished_at is not None and is_utc_iso(record.finished_at)
    assert record.finished_at >= record.created_at
    assert await store.channel_content(channel) == "Hello, wörld 🌍"
    user_message, answer = await store.messages(conversation.id)
    assert (user_message.role, user_message.content, user_message.channel) == ("user", "the question", channel)
    assert (answer.role, answer.content, answer.channel, answer.status) == (
        "assistant", "Hello, wörld 🌍", channel, terminal)
    assert channel not in await store.running_channels()


async def test_nothing_can_be_appended_after_the_terminal_event(store: Store) -> None:
    channel = await new_channel(store)
    await store.append(channel, DONE, {"finish_reason": "stop"})
    for type_, data in ((DELTA, {"content": "late"}), (ERROR, {"code": "x", "message": "y"}), (CANCELLED, {})):
        with pytest.raises(ChannelClosed):
            await store.append(channel, type_, data)
    assert [event.type for event in await store.read_after(channel, 0)] == [META, DONE]


async def test_append_nowait_queues_in_order_or_says_it_cannot(store: Store) -> None:
    channel = await new_channel(store)
    first = await store.append(channel, DELTA, {"content": "a"}, wait=False)  # the log knows the channel now
    queued = [store.append_nowait(channel, DELTA, {"content": text}) for text in "bcd"]
    assert [event.id for event in queued if event is not None] == [first.id + 1, first.id + 2, first.id + 3]
    assert store.append_nowait(channel, DONE, {"finish_reason": "stop"}) is None  # a terminal always waits
    assert store.append_nowait(new_id(), DELTA, {"content": "x"}) is None  # a channel the log does not know
    done = await store.append(channel, DONE, {"finish_reason": "stop"})
    assert done.id == first.id + 4
    assert store.append_nowait(channel, DELTA, {"content": "late"}) is None  # ended
    stored = await store.read_after(channel, 0)
    assert [event.type for event in stored] == [META, DELTA, DELTA, DELTA, DELTA, DONE]
    assert "".join(event.data["content"] for event in stored if event.type == DELTA) == "abcd"
    assert (await store.get_channel(channel)).status == DONE  # type: ignore[union-attr]


async def test_racing_terminal_events_leave_exactly_one(store: Store) -> None:
    channel = await new_channel(store)
    results = await asyncio.gather(*(store.append(channel, terminal, data) for terminal, data in TERMINALS.items()),
                                   return_exceptions=True)
    appended = [result for result in results if isinstance(result, Event)]
    assert len(appended) == 1
    assert all(isinstance(result, ChannelClosed) for result in results if not isinstance(result, Event))
    events = await store.read_after(channel, 0)
    assert [event.terminal for event in events] == [False, True]
    assert (await record_of(store, channel)).status == appended[0].type


async def test_usage_is_stored_on_the_channel(store: Store) -> None:
    channel = await new_channel(store)
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    event = await store.append(channel, USAGE, usage)
    assert event.data == usage
    assert (await record_of(store, channel)).usage == usage


async def test_running_channels_lists_only_unfinished_ones(store: Store) -> None:
    running, finished = await new_channel(store), await new_channel(store)
    await store.append(finished, CANCELLED, {})
    listed = await store.running_channels()
    assert running in listed and finished not in listed


# ---- reading ----------------------------------------------------------------------------

async def test_read_after_pages_in_id_order(store: Store) -> None:
    channel = await new_channel(store)
    for n in range(24):
        await store.append(channel, DELTA, {"content": str(n)})
    assert [e.id for e in await store.read_after(channel, 5, limit=10)] == list(range(6, 16))
    assert [e.id for e in await store.read_after(channel, 15, limit=10)] == list(range(16, 26))
    assert await store.read_after(channel, 25) == []
    assert await store.read_after(channel, 1_000) == []
    page = await store.read_after(channel, 1, limit=3)
    assert [(e.type, e.data) for e in page] == [(DELTA, {"content": str(n)}) for n in range(3)]


async def test_content_joins_the_deltas_while_running(store: Store) -> None:
    channel = await new_channel(store)
    assert await store.channel_content(channel) == ""
    await store.append(channel, DELTA, {"content": "a"})
    await store.append(channel, USAGE, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    await store.append(channel, DELTA, {"content": "b"})
    assert await store.channel_content(channel) == "ab"
    assert (await record_of(store, channel)).last_event_id == 4
