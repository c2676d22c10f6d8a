"""The ``Records`` contract (channels/store.py), run against every implementation.

Only the protocols are used, so a new backend runs this suite unchanged by joining
``STORE_KINDS``.
"""

from __future__ import annotations

import pytest

from channels.events import DELTA, DONE
from channels.store import ChannelClosed, Store, UnknownChannel
from tests.channels.stores import is_utc_iso, new_channel, new_id, new_user

# ---- users and conversations ---------------------------------------------------------------

async def test_users_are_found_by_token_hash(store: Store) -> None:
    await store.create_user("user-1", "hash-1")
    assert await store.user_for_token_hash("hash-1") == "user-1"
    assert await store.user_for_token_hash("hash-2") is None


async def test_a_new_turn_moves_a_conversation_to_the_top(store: Store) -> None:
    user, other = await new_user(store), await new_user(store)
    first = await store.create_conversation(new_id(), user, "first")
    second = await store.create_conversation(new_id(), user, "second")
    third = await store.create_conversation(new_id(), user, "third")
    await store.create_conversation(new_id(), other, "not mine")
    assert [c.id for c in await store.list_conversations(user)] == [third.id, second.id, first.id]
    await new_channel(store, user, first.id)
    listed = await store.list_conversations(user)
    assert [c.id for c in listed] == [first.id, third.id, second.id]
    assert listed[0].updated_at >= first.updated_at and is_utc_iso(listed[0].updated_at)
    assert await store.get_conversation(second.id) == second
    assert await store.get_conversation("no-such-conversation") is None


async def test_messages_keep_their_order_across_turns(store: Store) -> None:
    user = await new_user(store)
    conversation = await store.create_conversation(new_id(), user, "t")
    first = await new_channel(store, user, conversation.id)
    await store.append(first, DELTA, {"content": "one"})
    await store.append(first, DONE, {"finish_reason": "stop"})
    second = await new_channel(store, user, conversation.id)
    messages = await store.messages(conversation.id)
    assert [(m.role, m.content, m.channel, m.status) for m in messages] == [
        ("user", "the question", first, "done"), ("assistant", "one", first, "done"),
        ("user", "the question", second, "done"), ("assistant", "", second, "running")]
    assert all(is_utc_iso(m.created_at) for m in messages)


async def test_deleting_a_conversation_takes_its_channels_and_events(store: Store) -> None:
    user = await new_user(store)
    doomed = await store.create_conversation(new_id(), user, "doomed")
    kept = await store.create_conversation(new_id(), user, "kept")
    finished = await new_channel(store, user, doomed.id)
    await store.append(finished, DONE, {"finish_reason": "stop"})
    running = await new_channel(store, user, doomed.id)
    await store.append(running, DELTA, {"content": "x"})
    survivor = await new_channel(store, user, kept.id)

    assert sorted(await store.delete_conversation(doomed.id)) == sorted([finished, running])
    assert await store.get_conversation(doomed.id) is None
    assert await store.messages(doomed.id) == []
    assert [c.id for c in await store.list_conversations(user)] == [kept.id]
    for channel in (finished, running):
        assert await store.get_channel(channel) is None
        assert await store.read_after(channel, 0) == []
        assert channel not in await store.running_channels()
        with pytest.raises((ChannelClosed, UnknownChannel)):
            await store.append(channel, DELTA, {"content": "after delete"})
    assert [e.id for e in await store.read_after(survivor, 0)] == [1]
    assert len(await store.messages(kept.id)) == 2


# ---- push subscriptions ------------------------------------------------------------------------

async def test_subscriptions_are_replaced_by_endpoint_and_deleted(store: Store) -> None:
    user, other = await new_user(store), await new_user(store)
    await store.save_subscription(user, "https://push.example/a", "key-1", "auth-1")
    await store.save_subscription(user, "https://push.example/b", "key-2", "auth-2")
    await store.save_subscription(user, "https://push.example/a", "key-3", "auth-3")
    subscriptions = {s.endpoint: s for s in await store.subscriptions_for(user)}
    assert set(subscriptions) == {"https://push.example/a", "https://push.example/b"}
    assert (subscriptions["https://push.example/a"].p256dh, subscriptions["https://push.example/a"].auth) == (
        "key-3", "auth-3")
    assert is_utc_iso(subscriptions["https://push.example/a"].created_at)

    await store.save_subscription(other, "https://push.example/b", "key-4", "auth-4")  # the browser changed hands
    assert [s.endpoint for s in await store.subscriptions_for(user)] == ["https://push.example/a"]
    assert [s.endpoint for s in await store.subscriptions_for(other)] == ["https://push.example/b"]

    assert await store.delete_subscription("https://push.example/a", other) is False
    assert await store.delete_subscription("https://push.example/a", user) is True
    assert await store.delete_subscription("https://push.example/a") is False
    assert await store.delete_subscription("https://push.example/b") is True
    assert await store.subscriptions_for(user) == [] and await store.subscriptions_for(other) == []
