"""What spans both seams of a ``Store`` (channels/store.py), run against every implementation:
a whole submission in one transaction, the health probe, closing and opening again.

Only the protocols are used, so a new backend runs this suite unchanged by joining
``STORE_KINDS``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from channels.events import DELTA, DONE, INTERRUPTED, META, Event
from channels.store import ChannelClosed, NewAnswer, Store, UnknownChannel
from tests.channels.stores import StoreKind, keep_some_of_everything, new_channel, new_id, new_user, record_of

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
    kept = await store.get_conversation(newer.id)
    assert kept is not None and kept.title == "newer"  # not renamed
    first = await store.create_answer(first_answer(user=new_id()))
    assert first.id == 1


async def test_create_answer_with_a_taken_channel_id_leaves_nothing(store: Store) -> None:
    taken = await new_channel(store)
    answer = first_answer(channel=taken)
    with pytest.raises(Exception):  # noqa: B017  # each backend refuses with its own error
        await store.create_answer(answer)
    assert await nothing_of(store, NewAnswer(new_id(), answer.user_id, answer.conversation_id, "demo", "",
                                             answer.new_user, answer.new_title))
    assert [e.id for e in await store.read_after(taken, 0)] == [1]  # the owner's channel is untouched
    assert (await store.append(taken, DELTA, {"content": "x"})).id == 2


async def test_create_answer_with_a_taken_conversation_id_leaves_nothing(store: Store) -> None:
    owner = await new_user(store)
    taken = await store.create_conversation(new_id(), owner, "someone's")
    answer = first_answer(conversation=taken.id)
    with pytest.raises(Exception):  # noqa: B017  # each backend refuses with its own error
        await store.create_answer(answer)
    assert await store.get_channel(answer.channel_id) is None
    assert await store.user_for_token_hash(f"hash-{answer.user_id}") is None
    assert await store.get_conversation(taken.id) == taken and await store.messages(taken.id) == []


async def test_create_answer_in_a_missing_conversation_leaves_nothing(store: Store) -> None:
    user = await new_user(store)
    answer = NewAnswer(new_id(), user, "no-such-conversation", "demo", "hello")
    with pytest.raises(Exception):  # noqa: B017  # each backend refuses with its own error
        await store.create_answer(answer)
    assert await nothing_of(store, answer)
    assert await store.messages("no-such-conversation") == []
    with pytest.raises(UnknownChannel):
        await store.append(answer.channel_id, DELTA, {"content": "x"})


async def test_create_answer_with_a_taken_token_hash_leaves_nothing(store: Store) -> None:
    await store.create_user("someone", "hash-taken")
    user = new_id()
    answer = NewAnswer(new_id(), user, new_id(), "demo", "hello", new_user=(user, "hash-taken"), new_title="t")
    with pytest.raises(Exception):  # noqa: B017  # each backend refuses with its own error
        await store.create_answer(answer)
    assert await store.get_channel(answer.channel_id) is None
    assert await store.get_conversation(answer.conversation_id) is None
    assert await store.user_for_token_hash("hash-taken") == "someone"


# ---- health ------------------------------------------------------------------------------------

async def test_a_store_that_can_write_says_so(store: Store) -> None:
    assert await store.writable() is True
    assert all(await asyncio.gather(*(store.writable() for _ in range(50))))


# ---- closing and opening again -------------------------------------------------------------------

async def test_everything_survives_close_and_the_ids_continue(kind: StoreKind, location: Path) -> None:
    store = kind.make(location)
    await store.open()
    kept = await keep_some_of_everything(store, "kept")
    user, finished, running, before = kept.user, kept.finished, kept.running, kept.events
    await store.close()

    reopened = kind.make(location)
    await reopened.open()
    try:
        for channel, events in before.items():
            assert await reopened.read_after(channel, 0) == events
        assert (await record_of(reopened, finished)).status == DONE
        assert await reopened.channel_content(finished) == "kept"
        assert [c.id for c in await reopened.list_conversations(user)] == [kept.conversation]
        assert len(await reopened.messages(kept.conversation)) == 4
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
