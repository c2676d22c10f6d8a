"""The answers service: every front door's submission, over each store and the demo model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from channels.answers import Answers, ReadPoint, UnknownAnswer, UnknownConversation, hash_token, title_for
from channels.generation import Generations
from channels.hub import Hub
from channels.limits import LimitExceeded, Limits
from channels.presence import Presence
from channels.store import Store
from llm.base import NO_OPTIONS, Chunk, ModelOptions, Take
from llm.demo import DemoProvider
from settings import Settings
from tests.support.waiting import async_wait_until

ADDRESS = "198.51.100.4"


class RecordingProvider(DemoProvider):
    """The demo model, remembering what each answer was asked with."""

    def __init__(self) -> None:
        super().__init__(0)
        self.asked: list[tuple[list[dict[str, str]], ModelOptions]] = []

    async def stream(self, messages: list[dict[str, str]], options: ModelOptions = NO_OPTIONS, *,
                     take: Take | None = None) -> AsyncIterator[Chunk]:
        self.asked.append((messages, options))
        async for chunk in super().stream(messages, options):
            yield chunk


class World:
    def __init__(self, store: Store, **settings: Any):
        self.store = store
        self.settings = Settings(system_prompt="Be brief.", **settings)
        self.provider = RecordingProvider()
        self.generations = Generations(store, self.provider, Presence())
        self.limits = Limits(4, 30, self.generations.running_for, new_users_per_minute=5,
                             max_running_total=100, running_total=lambda: self.generations.running)
        self.answers = Answers(store, self.generations, self.limits, self.settings)

    async def finished(self, channel: str) -> str:
        await async_wait_until(lambda: not self.generations.is_running(channel), 5, "the answer to end")
        return "".join(e.data["content"] for e in await self.store.read_after(channel, 0) if e.type == "delta")


@pytest.fixture
def world(store: Store) -> World:
    return World(store)


async def test_an_anonymous_submission_makes_its_user_conversation_and_answer(world: World) -> None:
    submitted = await world.answers.submit(None, "  hello   there ", None, ADDRESS)
    assert submitted.token is not None
    record = await world.store.get_channel(submitted.channel)
    assert record is not None and record.conversation_id == submitted.conversation_id
    conversation = await world.store.get_conversation(submitted.conversation_id)
    assert conversation is not None and conversation.title == title_for("  hello   there ")
    await world.finished(submitted.channel)
    messages, _ = world.provider.asked[0]
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  hello   there "}]


async def test_a_follow_up_sends_the_stored_turns_and_a_foreign_conversation_is_unknown(world: World) -> None:
    first = await world.answers.submit(None, "first question", None, ADDRESS)
    await world.finished(first.channel)
    record = await world.store.get_channel(first.channel)
    assert record is not None
    user = record.user_id
    second = await world.answers.submit(user, "second question", first.conversation_id, ADDRESS)
    await world.finished(second.channel)
    roles = [m["role"] for m in world.provider.asked[-1][0]]
    assert roles == ["system", "user", "assistant", "user"]
    with pytest.raises(UnknownConversation):
        await world.answers.submit("someone-else", "sneaky", first.conversation_id, ADDRESS)
    with pytest.raises(UnknownConversation):
        await world.answers.submit(user, "nowhere", "no-such-conversation", ADDRESS)


async def test_create_as_starts_a_conversation_under_that_id_then_continues_it(world: World) -> None:
    first = await world.answers.submit(None, "chat opening", None, ADDRESS, create_as="chat-a")
    assert first.conversation_id == "chat-a"
    await world.finished(first.channel)
    record = await world.store.get_channel(first.channel)
    assert record is not None
    again = await world.answers.submit(record.user_id, "chat follow-up", None, ADDRESS, create_as="chat-a")
    assert again.conversation_id == "chat-a"
    await world.finished(again.channel)
    assert [m.role for m in await world.store.messages("chat-a")] == ["user", "assistant"] * 2
    with pytest.raises(UnknownConversation):
        await world.answers.submit("someone-else", "mine now?", None, ADDRESS, create_as="chat-a")


async def test_a_given_context_is_the_whole_input_and_options_reach_the_model(world: World) -> None:
    context = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
               {"role": "user", "content": "three"}]
    submitted = await world.answers.submit(None, "three", None, ADDRESS, context=context,
                                           options=ModelOptions(temperature=0.5, max_tokens=3))
    answer = await world.finished(submitted.channel)
    assert world.provider.asked[0] == (context, ModelOptions(temperature=0.5, max_tokens=3))
    events = await world.store.read_after(submitted.channel, 0)
    assert events[-1].data == {"finish_reason": "length"} and len(answer.split()) == 3


async def test_a_refused_submission_leaves_nothing(store: Store) -> None:
    world = World(store)
    for _ in range(5):
        await world.answers.submit(None, "quick", None, ADDRESS)
    with pytest.raises(LimitExceeded):
        await world.answers.submit(None, "one identity too many", None, ADDRESS)
    assert len(world.provider.asked) <= 5


async def test_a_cancelled_request_still_gets_a_whole_answer(world: World) -> None:
    request = asyncio.get_running_loop().create_task(world.answers.submit(None, "hang up", None, ADDRESS))
    await asyncio.sleep(0)  # the request starts its work, then its client hangs up
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await world.answers.settle()
    assert len(world.provider.asked) == 1  # the answer was started all the same
    await async_wait_until(lambda: world.generations.running == 0, 5, "the answer to end")
    assert await world.store.running_channels() == []


async def test_ownership_cancel_and_delete_go_through_the_service(world: World) -> None:
    hub = Hub()
    world.answers.hub = hub
    world.generations.provider = DemoProvider(200)  # slow enough to be running when cancelled
    submitted = await world.answers.submit(None, "cancel me", None, ADDRESS)
    stored = await world.store.get_channel(submitted.channel)
    assert stored is not None
    record = await world.answers.answer_of(stored.user_id, submitted.channel)
    with pytest.raises(UnknownAnswer):
        await world.answers.answer_of("someone-else", submitted.channel)
    with pytest.raises(UnknownConversation):
        await world.answers.conversation_of("someone-else", submitted.conversation_id)
    assert await world.answers.cancel(record.id, wait=True) is True
    assert await world.answers.cancel(record.id) is False  # ended: the route says 409
    assert (await world.store.read_after(record.id, 0))[-1].type == "cancelled"
    again = await world.answers.submit(record.user_id, "and delete me while I run", submitted.conversation_id,
                                       ADDRESS)
    feed = hub.acquire(again.channel)
    await world.answers.delete_conversation(submitted.conversation_id)
    assert feed.closed  # its readers were woken to see it gone (this hub hears no commits)
    assert await world.store.get_channel(again.channel) is None
    assert await world.store.get_conversation(submitted.conversation_id) is None
    assert not world.generations.is_running(again.channel)
    hub.release(feed)


async def test_a_reader_of_an_answer_running_here_is_placed_without_reading_the_store(
        store: Store, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(store)
    world.answers.hub = hub
    made: list[tuple[str, str]] = []
    world.answers.on_new_user = lambda user, token_hash: made.append((user, token_hash))
    world.generations.provider = DemoProvider(50)
    submitted = await world.answers.submit(None, "hello there", None, ADDRESS)
    [(user_id, token_hash)] = made  # the new user's token is known without a read
    assert submitted.token is not None and token_hash == hash_token(submitted.token)
    reads: list[str] = []

    def counting(name: str) -> Any:
        read = getattr(store, name)

        def counted(*args: Any) -> Any:
            reads.append(name)
            return read(*args)
        return counted

    for name in ("get_channel", "read_after"):
        monkeypatch.setattr(store, name, counting(name))
    point = await world.answers.read_point(user_id, submitted.channel)
    assert point.running and point.last_event_id >= 1
    feed = hub.feed(submitted.channel)
    assert feed is not None
    tail = feed.since(0, 100)
    assert tail is not None and tail[0].type == "meta"  # a first reader reads the tail, not the store
    with pytest.raises(UnknownAnswer):
        await world.answers.read_point("someone-else", submitted.channel)
    assert reads == []
    monkeypatch.undo()
    await world.finished(submitted.channel)
    await async_wait_until(lambda: hub.feed(submitted.channel) is None, 5, "the ended answer's feed to go")
    stored = await world.store.read_after(submitted.channel, 0)
    assert await world.answers.read_point(user_id, submitted.channel) == ReadPoint(False, stored[-1].id)
