"""The server's memory of a channel does not grow with its answer, and goes when the channel ends."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from channels.events import DELTA, DONE
from channels.sqlite import SQLiteStore
from channels.store import ChannelClosed, UnknownChannel
from tests.channels.stores import new_channel, new_id, new_user

PIECE = "token " * 40  # 240 characters a delta, each delta a string of its own
DELTAS = 4_000         # ~1 MB of answer
COMMIT_EVERY = 100     # one awaited append per this many queued, as a paced model commits
# What may stay allocated after a long answer, whatever its length: caches and free lists.
# Keeping the deltas (as the removed per-channel list of pieces did) held over 1 MB here.
MAX_HELD_BYTES = 64 * 1024


async def _append_answer(store: SQLiteStore, channel: str, deltas: int) -> None:
    for n in range(1, deltas + 1):
        await store.append(channel, DELTA, {"content": f"{n % 10}{PIECE}"}, wait=n % COMMIT_EVERY != 0)


async def test_a_long_answer_keeps_none_of_its_content_in_server_memory(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    user = await new_user(store)
    conversation = (await store.create_conversation(new_id(), user, "t")).id
    channel = await new_channel(store, user, conversation)
    await _append_answer(store, channel, COMMIT_EVERY * 2)  # caches and free lists warmed up
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await _append_answer(store, channel, DELTAS)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"server memory held after a {DELTAS * (len(PIECE) + 1):,}-character answer: {held:,} bytes")
    assert held < MAX_HELD_BYTES, f"{held:,} bytes stayed after {DELTAS * (len(PIECE) + 1):,} characters"

    await store.append(channel, DONE, {"finish_reason": "stop"})
    answer = (await store.messages(conversation))[1]
    warm_up = "".join(f"{n % 10}{PIECE}" for n in range(1, COMMIT_EVERY * 2 + 1))
    long_run = "".join(f"{n % 10}{PIECE}" for n in range(1, DELTAS + 1))
    assert (answer.status, answer.content) == (DONE, warm_up + long_run)
    assert store._logs == {}


async def test_no_channel_entry_outlives_its_channel(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    user = await new_user(store)
    conversation = (await store.create_conversation(new_id(), user, "t")).id
    finished, running = await new_channel(store, user, conversation), await new_channel(store, user, conversation)
    await store.append(finished, DONE, {"finish_reason": "stop"})
    await store.append(running, DELTA, {"content": "queued"}, wait=False)
    assert set(store._logs) == {running}

    with pytest.raises(ChannelClosed):  # an ended channel is looked up, not remembered
        await store.append(finished, DELTA, {"content": "late"})
    assert set(store._logs) == {running}

    await store.delete_conversation(conversation)
    assert store._logs == {} and store._failures == {}
    with pytest.raises(UnknownChannel):
        await store.append(running, DELTA, {"content": "after the deletion"})
    assert store._logs == {}
