"""Generations over a real SQLite store with scripted providers: every ending is one terminal event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from channels.generation import Completion, Generations
from channels.presence import Presence
from channels.sqlite import SQLiteStore
from channels.store import Store
from llm.base import Chunk, ModelError, Take
from tests.support.waiting import async_wait_until

USER = "user-1"


# Every generation test runs with each kind of provider: one that yields every chunk (the demo
# model), and one that pushes them (the OpenAI-compatible one on the lean transport), offering
# each to the generation's ``take`` first and yielding only what it refuses.
_pushes = False


@pytest.fixture(autouse=True, params=[False, True], ids=["yielded", "pushed"])
def provider_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    global _pushes
    _pushes = request.param
    yield
    _pushes = False


def taken(chunk: Chunk, take: Take | None) -> bool:
    """Whether a pushing provider's ``take`` took the chunk (then it is not yielded)."""
    return _pushes and take is not None and take(chunk)


class ScriptedProvider:
    """Yields ``chunks``, then waits on ``hold`` (when given), then raises ``error`` (when given)."""

    name = "scripted"

    def __init__(self, chunks: Sequence[Chunk] = (), *, error: BaseException | None = None,
                 hold: asyncio.Event | None = None):
        self.chunks = list(chunks)
        self.error = error
        self.hold = hold
        self.closed = 0
        self.seen: list[list[dict[str, str]]] = []

    async def stream(self, messages: list[dict[str, str]], options: Any = None, *,
                     take: Take | None = None) -> AsyncIterator[Chunk]:
        self.seen.append(messages)
        try:
            for chunk in self.chunks:
                if not taken(chunk, take):
                    yield chunk
            if self.hold is not None:
                await self.hold.wait()
            if self.error is not None:
                raise self.error
        finally:
            self.closed += 1

    async def close(self) -> None:
        return None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "chime.sqlite3")
    await store.open()
    await store.create_user(USER, "token-hash")
    yield store
    await store.close()


class World:
    def __init__(self, store: Store, provider: Any, **limits: Any):
        self.store = store
        self.provider = provider
        self.presence = Presence()
        self.generations = Generations(store, provider, self.presence, **limits)
        self.completions: list[Completion] = []
        self.generations.completion_hooks.append(self.completions.append)
        self.conversation = ""

    async def channel(self, name: str = "ch-1") -> str:
        self.conversation = f"conv-{name}"
        await self.store.create_conversation(self.conversation, USER, "title")
        await self.store.create_channel(name, USER, self.conversation, "scripted")
        await self.store.add_turn(self.conversation, "question", name)
        return name

    async def run(self, name: str = "ch-1") -> str:
        channel = await self.channel(name)
        self.generations.start(channel, USER, [{"role": "user", "content": "question"}])
        return channel

    async def finished(self, channel: str) -> list[tuple[str, dict[str, Any]]]:
        await async_wait_until(lambda: not self.generations.is_running(channel), 5, "the generation to end")
        return [(e.type, e.data) for e in await self.store.read_after(channel, 1)]

    async def answer(self) -> tuple[str, str]:
        last = (await self.store.messages(self.conversation))[-1]
        return last.content, last.status


TOKENS = [Chunk("Hello"), Chunk(", world"), Chunk(finish_reason="length"),
          Chunk(usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})]


async def test_a_finished_answer_is_deltas_usage_then_done(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS))
    channel = await world.run()
    assert await world.finished(channel) == [
        ("delta", {"content": "Hello"}), ("delta", {"content": ", world"}),
        ("usage", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        ("done", {"finish_reason": "length"})]
    assert await world.answer() == ("Hello, world", "done")
    assert world.completions == [Completion(channel, USER, "done", {"finish_reason": "length"}, False)]
    assert world.provider.closed == 1


async def test_watched_is_decided_as_the_terminal_event_is_appended(store: SQLiteStore) -> None:
    hold = asyncio.Event()
    world = World(store, ScriptedProvider(TOKENS[:1], hold=hold))
    channel = await world.run()
    reader = world.presence.attach(channel)
    hold.set()
    await world.finished(channel)
    world.presence.detach(reader)
    assert [c.watched for c in world.completions] == [True]


async def test_a_model_error_keeps_the_partial_answer(store: SQLiteStore) -> None:
    error = ModelError("model_stalled", "The model stopped sending the answer.")
    world = World(store, ScriptedProvider(TOKENS[:1], error=error))
    channel = await world.run()
    assert (await world.finished(channel))[-1] == (
        "error", {"code": "model_stalled", "message": "The model stopped sending the answer."})
    assert await world.answer() == ("Hello", "error")
    assert [c.status for c in world.completions] == ["error"]


async def test_an_unexpected_failure_is_an_internal_error_without_internals(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(error=RuntimeError("secret internals at 0xdeadbeef")))
    channel = await world.run()
    kind, data = (await world.finished(channel))[-1]
    assert kind == "error" and data["code"] == "internal_error" and "deadbeef" not in data["message"]


async def test_cancel_appends_cancelled_and_closes_the_model_stream(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS[:2], hold=asyncio.Event()))
    channel = await world.run()
    await async_wait_until(lambda: store.read_after(channel, 2), 5, "the first tokens")
    assert await world.generations.stop(channel) is True
    events = await world.finished(channel)
    assert events[-1] == ("cancelled", {}) and [e[0] for e in events].count("cancelled") == 1
    assert world.provider.closed == 1
    assert await world.answer() == ("Hello, world", "cancelled")
    assert await world.generations.stop(channel) is False


async def test_shutdown_waits_the_grace_period_then_interrupts(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS[:1], hold=asyncio.Event()))
    channel = await world.run()
    await async_wait_until(lambda: store.read_after(channel, 1), 5, "the first token")
    started = time.monotonic()
    await world.generations.shutdown(0.2)
    assert time.monotonic() - started >= 0.2
    assert (await world.finished(channel))[-1] == ("interrupted", {"reason": "server_shutdown"})
    assert world.generations.running == 0 and world.provider.closed == 1


async def test_shutdown_lets_an_answer_that_ends_within_the_grace_period_finish(store: SQLiteStore) -> None:
    hold = asyncio.Event()
    world = World(store, ScriptedProvider(TOKENS, hold=hold))
    channel = await world.run()
    asyncio.get_running_loop().call_later(0.05, hold.set)
    await world.generations.shutdown(5.0)
    assert (await world.finished(channel))[-1] == ("done", {"finish_reason": "length"})


async def test_orphans_of_a_previous_process_are_interrupted_on_start(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(hold=asyncio.Event()))
    orphan = await world.channel("orphan")
    live = await world.run("live")
    assert await world.generations.interrupt_orphans() == 1
    assert [(e.type, e.data) for e in await store.read_after(orphan, 1)] == [
        ("interrupted", {"reason": "server_restart"})]
    assert world.generations.is_running(live)
    assert await world.generations.interrupt_orphans() == 0
    await world.generations.shutdown(0)


async def test_stopping_an_orphan_ends_it_as_cancelled(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider())
    orphan = await world.channel("orphan")
    assert await world.generations.stop(orphan) is True
    assert [(e.type, e.data) for e in await store.read_after(orphan, 1)] == [("cancelled", {})]
    assert await world.generations.stop(orphan) is False


async def test_a_conversation_deleted_under_the_answer_ends_it_quietly(store: SQLiteStore) -> None:
    hold = asyncio.Event()
    world = World(store, ScriptedProvider(TOKENS, hold=hold))
    channel = await world.channel()
    await store.delete_conversation(world.conversation)
    world.generations.start(channel, USER, [{"role": "user", "content": "question"}])
    hold.set()
    await async_wait_until(lambda: not world.generations.is_running(channel), 5, "the generation to end")
    assert world.completions == [] and await store.get_channel(channel) is None


async def test_running_answers_are_counted_per_user(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(hold=asyncio.Event()))
    await world.run("a")
    await world.run("b")
    assert world.generations.running_for(USER) == 2 and world.generations.running_for("someone") == 0
    await world.generations.stop("a", wait=True)
    assert world.generations.running_for(USER) == 1
    await world.generations.shutdown(0)
    assert world.generations.running == 0


class EndlessProvider:
    """A model that never stops: ``piece`` after ``piece``, yielding to the loop between them."""

    name = "endless"

    def __init__(self, piece: str):
        self.piece = piece
        self.closed = 0

    async def stream(self, messages: list[dict[str, str]], options: Any = None, *,
                     take: Take | None = None) -> AsyncIterator[Chunk]:
        try:
            while True:
                chunk = Chunk(self.piece)
                if not taken(chunk, take):
                    yield chunk
                await asyncio.sleep(0)
        finally:
            self.closed += 1

    async def close(self) -> None:
        return None


async def test_an_endless_answer_ends_at_the_character_limit_keeping_exactly_that_much(
        store: SQLiteStore) -> None:
    world = World(store, EndlessProvider("abcdefg"), max_answer_chars=1000)
    channel = await world.run()
    kind, data = (await world.finished(channel))[-1]
    assert kind == "error" and data["code"] == "answer_too_long" and "CHIME_MAX_ANSWER_CHARS" in data["message"]
    content, status = await world.answer()
    assert content == ("abcdefg" * 143)[:1000] and status == "error"
    assert world.provider.closed == 1
    assert [c.data["code"] for c in world.completions] == ["answer_too_long"]


async def test_an_answer_past_its_time_limit_ends_with_answer_timeout_keeping_what_arrived(
        store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS[:1], hold=asyncio.Event()), max_answer_s=0.3)
    channel = await world.run()
    started = time.monotonic()
    kind, data = (await world.finished(channel))[-1]
    assert kind == "error" and data["code"] == "answer_timeout" and "CHIME_MAX_ANSWER_S" in data["message"]
    assert 0.3 <= time.monotonic() - started < 3
    assert await world.answer() == ("Hello", "error")
    assert world.provider.closed == 1


class HeldHook:
    """A completion hook that holds each ending until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: list[str] = []

    async def __call__(self, completion: Completion) -> None:
        self.entered.append(completion.channel)
        await self.release.wait()


async def ending_held(world: World) -> tuple[HeldHook, str]:
    """A first answer whose ending holds the only turn, and a second answer waiting for it."""
    held = HeldHook()
    world.generations.completion_hooks.append(held)
    first = await world.run("ch-1")
    await async_wait_until(lambda: held.entered == [first], 5, "the first answer's ending")
    second = await world.run("ch-2")
    await async_wait_until(lambda: world.generations.waiting_to_end == 1, 5, "the second answer to wait its turn")
    return held, second


async def test_answers_finishing_together_take_turns_to_end_and_lose_nothing(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS), endings_at_once=1)
    held, second = await ending_held(world)

    async def committed() -> list[str]:
        return [event.type for event in await store.read_after(second, 1)]

    async def text_committed() -> bool:
        return await committed() == deltas

    deltas = ["delta", "delta"]
    await async_wait_until(text_committed, 5, "its text")
    assert await committed() == deltas  # the model's finish reason came; its usage and end wait
    held.release.set()
    assert [kind for kind, _ in await world.finished(second)] == [*deltas, "usage", "done"]
    assert [c.channel for c in world.completions] == ["ch-1", second] and world.generations.waiting_to_end == 0


async def test_an_answer_waiting_for_its_turn_to_end_can_be_cancelled_and_gives_no_turn_away(
        store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS), endings_at_once=1)
    held, second = await ending_held(world)
    assert world.generations.cancel(second)
    held.release.set()
    assert [kind for kind, _ in await world.finished(second)] == ["delta", "delta", "cancelled"]
    third = await world.run("ch-3")  # the one turn is free again
    assert (await world.finished(third))[-1] == ("done", {"finish_reason": "length"})


async def test_a_wait_for_a_turn_to_end_does_not_count_against_the_answers_time_limit(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS), endings_at_once=1, max_answer_s=0.2)
    held, second = await ending_held(world)
    waiting_since = time.monotonic()
    await async_wait_until(lambda: time.monotonic() - waiting_since > 0.4, 5, "the time limit to pass")
    held.release.set()
    assert (await world.finished(second))[-1] == ("done", {"finish_reason": "length"})
    assert await world.answer() == ("Hello, world", "done")


class FlakyTerminalStore:
    """The store, but the first ``failures`` terminal appends fail (a locked database)."""

    def __init__(self, store: SQLiteStore, failures: int, *, commit_first: bool = False):
        self._store = store
        self.failures = failures
        self.commit_first = commit_first  # the failed try committed anyway (the writer died after COMMIT)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(self, channel: str, type: str, data: dict[str, Any], *, wait: bool = True) -> Any:
        if type in ("done", "error", "cancelled", "interrupted") and self.failures:
            self.failures -= 1
            if self.commit_first:
                await self._store.append(channel, type, data, wait=wait)
            raise OSError("database is locked")
        return await self._store.append(channel, type, data, wait=wait)


async def test_a_failed_terminal_append_is_retried_until_the_answer_ends(store: SQLiteStore) -> None:
    world = World(FlakyTerminalStore(store, failures=3), ScriptedProvider(TOKENS))
    channel = await world.run()
    await async_wait_until(lambda: world.completions, 10, "the answer to end")
    events = [(e.type, e.data) for e in await store.read_after(channel, 1)]
    assert events[-1] == ("done", {"finish_reason": "length"})
    assert [kind for kind, _ in events].count("done") == 1
    assert [c.status for c in world.completions] == ["done"]


async def test_a_terminal_append_that_committed_despite_failing_still_completes_once(
        store: SQLiteStore) -> None:
    world = World(FlakyTerminalStore(store, failures=1, commit_first=True), ScriptedProvider(TOKENS))
    channel = await world.run()
    await async_wait_until(lambda: world.completions, 10, "the answer to end")
    events = [e.type for e in await store.read_after(channel, 1)]
    assert events.count("done") == 1 and events[-1] == "done"
    assert [c.status for c in world.completions] == ["done"]


async def test_a_channel_running_with_no_generation_is_ended_at_its_second_sighting(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(hold=asyncio.Event()))
    abandoned = await world.channel("abandoned")
    live = await world.run("live")
    assert await world.generations.end_abandoned() == 0  # maybe a submission about to start
    fresh = await world.channel("fresh")
    assert await world.generations.end_abandoned() == 1
    assert [(e.type, e.data) for e in await store.read_after(abandoned, 1)] == [
        ("interrupted", {"reason": "server_lost"})]
    assert [c.channel for c in world.completions] == [abandoned]
    fresh_record = await store.get_channel(fresh)
    assert fresh_record is not None and fresh_record.running and world.generations.is_running(live)
    assert await world.generations.end_abandoned() == 1  # the fresh one, seen twice now
    await world.generations.shutdown(0)


async def test_the_sweeper_ends_abandoned_channels_on_its_own(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider())
    abandoned = await world.channel("abandoned")
    sweeper = asyncio.get_running_loop().create_task(world.generations.sweep(0.05))
    try:
        await async_wait_until(lambda: world.completions, 5, "the sweeper to end the channel")
    finally:
        sweeper.cancel()
    abandoned_record = await store.get_channel(abandoned)
    assert abandoned_record is not None and abandoned_record.status == "interrupted"


async def test_cancel_while_the_terminal_event_is_appended_loses_and_the_push_decision_follows(
        store: SQLiteStore) -> None:
    appending = asyncio.Event()
    release = asyncio.Event()

    class SlowTerminalStore(FlakyTerminalStore):
        async def append(self, channel: str, type: str, data: dict[str, Any], *, wait: bool = True) -> Any:
            if type == "done":
                appending.set()
                await release.wait()
            return await self._store.append(channel, type, data, wait=wait)

    world = World(SlowTerminalStore(store, failures=0), ScriptedProvider(TOKENS))
    channel = await world.run()
    await asyncio.wait_for(appending.wait(), 5)
    assert world.generations.cancel(channel) is False
    assert await world.generations.stop(channel) is False  # the route answers 409 already_finished
    release.set()
    events = await world.finished(channel)
    assert [kind for kind, _ in events if kind in ("done", "cancelled")] == ["done"]
    assert [c.status for c in world.completions] == ["done"]


async def test_cancelling_twice_cancels_once(store: SQLiteStore) -> None:
    world = World(store, ScriptedProvider(TOKENS[:1], hold=asyncio.Event()))
    channel = await world.run()
    await async_wait_until(lambda: store.read_after(channel, 1), 5, "the first token")
    assert world.generations.cancel(channel) and world.generations.cancel(channel, "interrupted")
    events = await world.finished(channel)
    assert [kind for kind, _ in events][-1] == "cancelled"
    assert [c.status for c in world.completions] == ["cancelled"]
