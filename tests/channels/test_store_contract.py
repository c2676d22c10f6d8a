"""The ``Store`` contract (channels/store.py), run against every implementation.

Only the protocol is used, so a new store runs this suite unchanged by joining
``STORE_KINDS``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from channels.events import CANCELLED, DELTA, DONE, ERROR, INTERRUPTED, META, USAGE, Event
from channels.store import ChannelClosed, NewAnswer, Store, UnknownChannel
from tests.channels.stores import StoreKind, new_channel, new_id, new_user

TERMINALS = {DONE: {"finish_reason": "stop"}, ERROR: {"code": "model_error", "message": "boom"},
             CANCELLED: {}, INTERRUPTED: {"reason": "server_shutdown"}}


def is_utc_iso(value: str | None) -> bool:
    return value is not None and datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset().total_seconds() == 0


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

    def on_commit(events) -> None:
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
    assert is_utc_iso(record.finished_at) and record.finished_at >= record.created_at
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


async def test_racing_terminal_events_leave_exactly_one(store: Store) -> None:
    channel = await new_channel(store)
    results = await asyncio.gather(*(store.append(channel, terminal, data) for terminal, data in TERMINALS.items()),
                                   return_exceptions=True)
    appended = [result for result in results if isinstance(result, Event)]
    assert len(appended) == 1
    assert all(isinstance(result, ChannelClosed) for result in results if not isinstance(result, Event))
    events = await store.read_after(channel, 0)
    assert [event.terminal for event in events] == [False, True]
    assert (await store.get_channel(channel)).status == appended[0].type


async def test_usage_is_stored_on_the_channel(store: Store) -> None:
    channel = await new_channel(store)
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    event = await store.append(channel, USAGE, usage)
    assert event.data == usage
    assert (await store.get_channel(channel)).usage == usage


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
    assert (await store.get_channel(channel)).last_event_id == 4


# ---- a whole submission: create_answer ----------------------------------------------------

def first_answer(channel: str | None = None, conversation: str | None = None, user: str | None = None,
                 message: str = "the question") -> NewAnswer:
    """A submission without identity or conversation: it makes both."""
    user = user or new_id()
    return NewAnswer(channel or new_id(), user, conversation or new_id(), "demo", message,
                     new_user=(user, f"hash-{user}"), new_title="a new title")


async def nothing_of(store: Store, answer: NewAnswer) -> bool:
    """No trace of ``answer`` (its channel, its new user and its new conversation) in ``store``."""
    return (await store.get_channel(answer.channel_id) is None
            and await store.read_after(answer.channel_id, 0) == []
            and (answer.new_user is None or await store.user_for_token_hash(answer.new_user[1]) is None)
            and (answer.new_title is None or await store.get_conversation(answer.conversation_id) is None)
            and (answer.new_title is None or await store.messages(answer.conversation_id) == []))


async def test_create_answer_makes_the_user_the_conversation_the_channel_and_the_turn(store: Store) -> None:
    told: list[Event] = []
    store.on_commit = told.extend
    answer = first_answer(message="what is durable?")
    meta = await store.create_answer(answer)
    assert (meta.channel, meta.id, meta.type) == (answer.channel_id, 1, META)
    assert meta.data == {"channel": answer.channel_id, "conversation_id": answer.conversation_id, "model": "demo"}
    assert told == [meta]  # readers hear of it like any commit
    assert await store.read_after(answer.channel_id, 0) == [meta]
    assert await store.user_for_token_hash(f"hash-{answer.user_id}") == answer.user_id
    conversation = await store.get_conversation(answer.conversation_id)
    assert conversation is not None and (conversation.user_id, conversation.title) == (answer.user_id, "a new title")
    record = await store.get_channel(answer.channel_id)
    assert record is not None
    assert (record.user_id, record.conversation_id, record.model, record.status, record.last_event_id) == (
        answer.user_id, answer.conversation_id, "demo", "running", 1)
    assert answer.channel_id in await store.running_channels()
    assert [(m.role, m.content, m.channel, m.status) for m in await store.messages(answer.conversation_id)] == [
        ("user", "what is durable?", answer.channel_id, "done"), ("assistant", "", answer.channel_id, "running")]

    # The channel goes on from id 2, and its terminal event stores the answer.
    assert (await store.append(answer.channel_id, DELTA, {"content": "a log"})).id == 2
    assert (await store.append(answer.channel_id, DONE, {"finish_reason": "stop"})).id == 3
    assert [e.id for e in told] == [1, 2, 3]
    assert (await store.messages(answer.conversation_id))[1].content == "a log"


async def test_create_answer_in_an_existing_conversation_moves_it_to_the_top(store: Store) -> None:
    user = await new_user(store)
    older = await store.create_conversation(new_id(), user, "older")
    newer = await store.create_conversation(new_id(), user, "newer")
    await new_channel(store, user, older.id)
    answer = NewAnswer(new_id(), user, newer.id, "demo", "again")
    await store.create_answer(answer)
    assert [c.id for c in await store.list_conversations(user)] == [newer.id, older.id]
    assert [m.role for m in await store.messages(newer.id)] == ["user", "assistant"]
    assert (await store.get_conversation(newer.id)).title == "newer"  # not renamed
    first = await store.create_answer(first_answer(user=new_id()))
    assert first.id == 1


async def test_create_answer_with_a_taken_channel_id_leaves_nothing(store: Store) -> None:
    taken = await new_channel(store)
    answer = first_answer(channel=taken)
    with pytest.raises(Exception):
        await store.create_answer(answer)
    assert await nothing_of(store, NewAnswer(new_id(), answer.user_id, answer.conversation_id, "demo", "",
                                             answer.new_user, answer.new_title))
    assert [e.id for e in await store.read_after(taken, 0)] == [1]  # the owner's channel is untouched
    assert (await store.append(taken, DELTA, {"content": "x"})).id == 2


async def test_create_answer_with_a_taken_conversation_id_leaves_nothing(store: Store) -> None:
    owner = await new_user(store)
    taken = await store.create_conversation(new_id(), owner, "someone's")
    answer = first_answer(conversation=taken.id)
    with pytest.raises(Exception):
        await store.create_answer(answer)
    assert await store.get_channel(answer.channel_id) is None
    assert await store.user_for_token_hash(f"hash-{answer.user_id}") is None
    assert await store.get_conversation(taken.id) == taken and await store.messages(taken.id) == []


async def test_create_answer_in_a_missing_conversation_leaves_nothing(store: Store) -> None:
    user = await new_user(store)
    answer = NewAnswer(new_id(), user, "no-such-conversation", "demo", "hello")
    with pytest.raises(Exception):
        await store.create_answer(answer)
    assert await nothing_of(store, answer)
    assert await store.messages("no-such-conversation") == []
    with pytest.raises(UnknownChannel):
        await store.append(answer.channel_id, DELTA, {"content": "x"})


async def test_create_answer_with_a_taken_token_hash_leaves_nothing(store: Store) -> None:
    await store.create_user("someone", "hash-taken")
    user = new_id()
    answer = NewAnswer(new_id(), user, new_id(), "demo", "hello", new_user=(user, "hash-taken"), new_title="t")
    with pytest.raises(Exception):
        await store.create_answer(answer)
    assert await store.get_channel(answer.channel_id) is None
    assert await store.get_conversation(answer.conversation_id) is None
    assert await store.user_for_token_hash("hash-taken") == "someone"


async def test_a_store_that_can_write_says_so(store: Store) -> None:
    assert await store.writable() is True
    assert all(await asyncio.gather(*(store.writable() for _ in range(50))))


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


# ---- closing and opening again -------------------------------------------------------------------

async def test_everything_survives_close_and_the_ids_continue(kind: StoreKind, location: Path) -> None:
    store = kind.make(location)
    await store.open()
    user = await new_user(store)
    conversation = await store.create_conversation(new_id(), user, "t")
    finished = await new_channel(store, user, conversation.id)
    await store.append(finished, DELTA, {"content": "kept"})
    await store.append(finished, DONE, {"finish_reason": "stop"})
    running = await new_channel(store, user, conversation.id)
    await asyncio.gather(*(store.append(running, DELTA, {"content": str(n)}) for n in range(10)))
    await store.save_subscription(user, "https://push.example/a", "k", "a")
    before = {channel: await store.read_after(channel, 0) for channel in (finished, running)}
    await store.close()

    reopened = kind.make(location)
    await reopened.open()
    try:
        for channel, events in before.items():
            assert await reopened.read_after(channel, 0) == events
        assert (await reopened.get_channel(finished)).status == DONE
        assert await reopened.channel_content(finished) == "kept"
        assert [c.id for c in await reopened.list_conversations(user)] == [conversation.id]
        assert len(await reopened.messages(conversation.id)) == 4
        assert len(await reopened.subscriptions_for(user)) == 1
        assert await reopened.user_for_token_hash(f"hash-{user}") == user
        assert running in await reopened.running_channels()
        assert (await reopened.append(running, DELTA, {"content": "next"})).id == 12
        assert (await reopened.append(running, INTERRUPTED, {"reason": "server_restart"})).id == 13
        with pytest.raises(ChannelClosed):
            await reopened.append(finished, DELTA, {"content": "late"})
    finally:
        await reopened.close()


async def test_the_same_store_can_be_opened_again(kind: StoreKind, location: Path) -> None:
    store = kind.make(location)
    await store.open()
    channel = await new_channel(store)
    await store.close()
    await store.open()
    try:
        events = await asyncio.wait_for(asyncio.gather(
            *(store.append(channel, DELTA, {"content": str(n)}) for n in range(3))), timeout=10)
        assert sorted(e.id for e in events) == [2, 3, 4]
        assert (await asyncio.wait_for(store.append(channel, DONE, {"finish_reason": "stop"}), timeout=10)).id == 5
    finally:
        await store.close()
