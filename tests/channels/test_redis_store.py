"""What only the Redis store has: its scripts' refusals and idempotence, recovery from an unknown
outcome, other processes' commits over pub/sub, deadlines when Redis is gone or hung, and
durability across a Redis restart. The contract suites run it like every other store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.exceptions

from channels.events import DELTA, DONE, INTERRUPTED, META, USAGE, Event
from channels.redis import RedisStore, watch
from channels.redis.database import Refused
from channels.redis.scripts import APPEND, CLOSED, CONFLICT, CREATE, LATE, STORED, UNKNOWN
from channels.store import ChannelClosed, NewAnswer, StoreUnavailable, UnknownChannel
from tests.channels.stores import keep_some_of_everything, new_channel, new_id, new_user, record_of
from tests.support import redis_server
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.waiting import async_wait_until

DEADLINE_S = 10.0
FAR_FUTURE_MS = 10**15  # a script deadline that never passes


def shared_store(location: Path, **options: Any) -> RedisStore:
    return RedisStore(redis_server.shared_server().url, prefix=redis_server.prefix_for(location), **options)


@pytest.fixture
async def store(location: Path) -> AsyncIterator[RedisStore]:
    store = shared_store(location)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def other(location: Path) -> AsyncIterator[RedisStore]:
    """A second store on the same Redis and prefix: another process of the same service."""
    other = shared_store(location)
    await other.open()
    yield other
    await other.close()


@pytest.fixture
def server(tmp_path: Path) -> Any:
    """A Redis of the test's own, for tests that stop, pause or restart it."""
    with RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always") as server:
        yield server


def stored_ids(store: RedisStore, channel: str) -> list[int]:
    with redis.Redis.from_url(store.url) as client:
        return [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(store.keys.log(channel))]


class Heard:
    """An ``on_commit`` that keeps the ids it is told, per channel."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = {}
        self.events: list[Event] = []

    def __call__(self, events: Sequence[Event]) -> None:
        self.events += events
        for event in events:
            self.ids.setdefault(event.channel, []).append(event.id)

    def of(self, channel: str) -> list[int]:
        return self.ids.get(channel, [])


async def run_append(store: RedisStore, batches: list[tuple[str, int, list[tuple[str, dict[str, Any]]]]],
                     deadline_ms: int = FAR_FUTURE_MS) -> list[Any]:
    """Run the append script once over ``batches`` of (channel, first id, events) directly."""
    keys: list[str] = [store.keys.running]
    args: list[Any] = [deadline_ms, "test-origin", "2026-01-01T00:00:00.000Z"]
    for channel, first, events in batches:
        keys += store.keys.appending(channel)
        args += [channel, first, len(events), "".join(data["content"] for type_, data in events if type_ == DELTA)]
        for type_, data in events:
            args += [type_, orjson.dumps(data)]
    reply: list[Any] = await store._r.evalsha(APPEND.sha, len(keys), *keys, *args)
    return reply


def deltas(*contents: str) -> list[tuple[str, dict[str, Any]]]:
    return [(DELTA, {"content": content}) for content in contents]


# ---- the append script -----------------------------------------------------------------------------

async def test_each_channel_of_a_round_is_refused_or_stored_on_its_own(store: RedisStore) -> None:
    closed, running = await new_channel(store), await new_channel(store)
    await store.append(closed, DONE, {"finish_reason": "stop"})
    reply = await run_append(store, [("no-such-channel", 2, deltas("x")), (closed, 3, deltas("late")),
                                     (running, 2, deltas("a", "b"))])
    assert reply == [UNKNOWN, 0, CLOSED, 2, STORED, 3]
    assert stored_ids(store, closed) == [1, 2] and stored_ids(store, running) == [1, 2, 3]
    assert await store.channel_content(running) == "ab"
    assert await store.get_channel("no-such-channel") is None


async def test_a_batch_sent_again_is_stored_once_and_only_its_rest_is_written(store: RedisStore) -> None:
    channel = await new_channel(store)
    assert await run_append(store, [(channel, 2, deltas("a", "b", "c"))]) == [STORED, 4]
    assert await run_append(store, [(channel, 2, deltas("a", "b", "c"))]) == [STORED, 4]  # all there already
    assert await run_append(store, [(channel, 3, deltas("b", "c", "d", "e"))]) == [STORED, 6]  # 3, 4 there
    assert stored_ids(store, channel) == [1, 2, 3, 4, 5, 6]
    assert await store.channel_content(channel) == "abcde"
    assert (await record_of(store, channel)).last_event_id == 6


async def test_a_batch_that_does_not_continue_the_stored_ids_is_refused(store: RedisStore) -> None:
    channel = await new_channel(store)
    await run_append(store, [(channel, 2, deltas("a", "b"))])
    assert await run_append(store, [(channel, 5, deltas("gap"))]) == [CONFLICT, 3]
    assert await run_append(store, [(channel, 3, deltas("not b", "c"))]) == [CONFLICT, 3]  # 3 is not this one
    await run_append(store, [(channel, 4, [(INTERRUPTED, {"reason": "server_lost"})])])
    assert await run_append(store, [(channel, 4, [(DONE, {"finish_reason": "stop"})])]) == [CLOSED, 4]
    assert await run_append(store, [(channel, 4, [(INTERRUPTED, {"reason": "server_lost"})])]) == [STORED, 4]
    assert stored_ids(store, channel) == [1, 2, 3, 4]
    assert (await record_of(store, channel)).status == INTERRUPTED


async def test_a_round_of_deltas_writes_the_stream_and_text_only_and_its_length_is_the_last_id(
        store: RedisStore) -> None:
    channel = await new_channel(store)
    with redis.Redis.from_url(store.url) as client:
        created = client.hgetall(store.keys.channel(channel))
        await store.append(channel, DELTA, {"content": "a"})
        await store.append(channel, DELTA, {"content": "b"})
        assert client.hgetall(store.keys.channel(channel)) == created  # nothing per token in the hash
        assert (await record_of(store, channel)).last_event_id == 3
        # A channel stored by an earlier version kept its last id in the hash: it is not read.
        client.hset(store.keys.channel(channel), "last", 1)
    await store.append(channel, USAGE, {"total_tokens": 2})
    await store.append(channel, DONE, {"finish_reason": "stop"})
    assert stored_ids(store, channel) == [1, 2, 3, 4, 5]
    record = await store.get_channel(channel)
    assert record is not None and (record.last_event_id, record.status, record.usage) == (5, DONE, {"total_tokens": 2})


async def test_a_script_past_its_deadline_writes_nothing(store: RedisStore) -> None:
    channel = await new_channel(store)
    assert await run_append(store, [(channel, 2, deltas("late"))], deadline_ms=1) == [LATE]
    assert stored_ids(store, channel) == [1]
    user = new_id()
    with pytest.raises(redis.exceptions.ResponseError, match="^LATE"):
        await store._r.evalsha(CREATE.sha, 0, 1, orjson.dumps({"p": store.keys.prefix, "user": user}))
    assert await store.user_for_token_hash(f"hash-{user}") is None


async def test_a_record_script_run_twice_changes_nothing_more(store: RedisStore) -> None:
    answer = NewAnswer(new_id(), new_id(), new_id(), "demo", "hello", new_user=None, new_title="t")
    user = answer.user_id
    payload = {"origin": "test", "now": "2026-01-01T00:00:00.000Z", "channel": answer.channel_id, "user": user,
               "conversation": answer.conversation_id, "model": "demo", "meta": "{}", "token_hash": f"hash-{user}",
               "title": "t", "question": '{"role":"user","content":"hello","channel":"c","created_at":"x"}',
               "answer": '{"role":"assistant","channel":"c","created_at":"x"}'}
    assert await store._script(CREATE, payload) == b"ok"
    assert await store._script(CREATE, payload) == b"again"  # its reply was lost: the same call again
    assert len(await store.messages(answer.conversation_id)) == 2
    assert stored_ids(store, answer.channel_id) == [1]
    with pytest.raises(Refused, match="channel id is taken"):
        await store._script(CREATE, {**payload, "now": "2026-01-01T00:00:01.000Z"})  # another call, same id


# ---- an unknown outcome ------------------------------------------------------------------------------

class LosingRounds(RedisStore):
    """Loses its next ``lose`` append rounds: after Redis ran them (``reached``), or on the way there."""

    def __init__(self, url: str, *, lose: int, reached: bool, **options: Any) -> None:
        super().__init__(url, **options)
        self.lose = lose
        self.reached = reached

    async def _run_packed(self, command: tuple[Any, ...]) -> Any:
        if self.lose > 0:
            self.lose -= 1
            if self.reached:
                await super()._run_packed(command)
            raise redis.exceptions.ConnectionError("the connection dropped")
        return await super()._run_packed(command)


@pytest.mark.parametrize("reached", [True, False], ids=["reply-lost", "request-lost"])
async def test_a_round_with_an_unknown_outcome_is_stored_once_and_told_once(location: Path, reached: bool) -> None:
    store = LosingRounds(redis_server.shared_server().url, prefix=redis_server.prefix_for(location), lose=0,
                         reached=reached)
    await store.open()
    try:
        channels = [await new_channel(store) for _ in range(3)]
        heard = Heard()
        store.on_commit = heard
        store.lose = 2  # two rounds in a row
        queued = [await store.append(channel, DELTA, {"content": f"{n} "}, wait=False)
                  for n in range(10) for channel in channels]
        awaited = await asyncio.gather(*(store.append(channel, DELTA, {"content": "!"}) for channel in channels))
        ends = await asyncio.gather(*(store.append(channel, DONE, {"finish_reason": "stop"}) for channel in channels))
        for channel in channels:
            assert stored_ids(store, channel) == list(range(1, 14))
            assert heard.of(channel) == list(range(2, 14))  # each once, in id order
            assert await store.channel_content(channel) == "".join(f"{n} " for n in range(10)) + "!"
            assert (await record_of(store, channel)).status == DONE
        assert {e.id for e in queued} == set(range(2, 12)) and {e.id for e in awaited} == {12}
        assert {e.id for e in ends} == {13} and store.lose == 0
    finally:
        await store.close()


async def test_a_killed_connection_under_a_round_in_flight_loses_nothing(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="killed")
    await store.open()
    try:
        channel = await new_channel(store)
        heard = Heard()
        store.on_commit = heard
        with server.client() as admin:
            admin.client_pause(5_000, all=False)  # write commands wait: the round is held in Redis
            appends = asyncio.gather(*(store.append(channel, DELTA, {"content": str(n)}) for n in range(20)))
            await async_wait_until(lambda: admin.info("clients")["blocked_clients"] >= 1, DEADLINE_S,
                                   "the round to reach Redis")
            admin.client_kill_filter(_type="normal", skipme=True)
            admin.client_unpause()
        events = await asyncio.wait_for(appends, DEADLINE_S)
        assert sorted(e.id for e in events) == list(range(2, 22))
        assert stored_ids(store, channel) == list(range(1, 22))
        assert heard.of(channel) == list(range(2, 22))
    finally:
        await store.close()


# ---- other processes' commits ----------------------------------------------------------------------

async def test_a_watcher_hears_another_stores_commits_each_once_in_id_order(store: RedisStore,
                                                                           other: RedisStore) -> None:
    channel = await new_channel(other)
    heard, told_there = Heard(), Heard()
    store.on_commit, other.on_commit = heard, told_there
    await store.watch(channel)
    for n in range(40):
        await other.append(channel, DELTA, {"content": str(n)}, wait=n % 7 == 0)
    await other.append(channel, USAGE, {"prompt_tokens": 1, "completion_tokens": 40, "total_tokens": 41})
    await other.append(channel, DONE, {"finish_reason": "stop"})
    await async_wait_until(lambda: heard.of(channel)[-1:] == [43], DEADLINE_S, "the terminal event")
    assert heard.of(channel) == list(range(2, 44)) == told_there.of(channel)
    assert [e.data_json for e in heard.events] == [e.data_json for e in told_there.events]
    assert heard.events[-1].terminal and heard.events[-1].type == DONE


async def test_a_store_is_not_told_its_own_commits_twice(store: RedisStore) -> None:
    channel = await new_channel(store)
    heard = Heard()
    store.on_commit = heard
    await store.watch(channel)
    await store.watch(channel)
    for n in range(30):
        await store.append(channel, DELTA, {"content": str(n)}, wait=False)
    await store.append(channel, DONE, {"finish_reason": "stop"})
    marker = await new_channel(store)  # published after the channel's last event: heard after it
    await store.watch(marker)
    await store.append(marker, DONE, {"finish_reason": "stop"})
    assert heard.of(channel) == list(range(2, 33))


async def test_watching_then_reading_loses_nothing(store: RedisStore, other: RedisStore) -> None:
    """A reader of another process's channel: watch, read the stream, merge by id."""
    channel = await new_channel(other)
    heard = Heard()
    store.on_commit = heard
    total = 300

    async def produce() -> None:
        for n in range(total):
            await other.append(channel, DELTA, {"content": str(n)}, wait=n % 20 == 0)
        await other.append(channel, DONE, {"finish_reason": "stop"})

    producer = asyncio.create_task(produce())
    readers: list[tuple[int, list[int]]] = []  # where the reader's watch left the told ids, and what it read
    while not producer.done() or not readers:
        await store.watch(channel)
        start = len(heard.of(channel))
        readers.append((start, [e.id for e in await store.read_after(channel, 0, limit=10_000)]))
        await asyncio.sleep(0)
    await producer
    end = total + 2
    await async_wait_until(lambda: heard.of(channel)[-1:] == [end], DEADLINE_S, "the terminal event")
    assert len(readers) >= 3
    for start, read in readers:
        assert sorted(set(read) | set(heard.of(channel)[start:])) == list(range(1, end + 1)), (start, read[-1])
    assert heard.of(channel) == sorted(set(heard.of(channel)))  # told once each, in order


async def test_unwatching_stops_the_telling(store: RedisStore, other: RedisStore) -> None:
    channel, marker = await new_channel(other), await new_channel(other)
    heard = Heard()
    store.on_commit = heard
    await store.watch(channel)
    await store.watch(channel)
    store.unwatch(channel)  # one of two watchers left: still told
    await other.append(channel, DELTA, {"content": "told"})
    await async_wait_until(lambda: heard.of(channel) == [2], DEADLINE_S, "the event")
    store.unwatch(channel)
    await store.watch(marker)
    await other.append(channel, DELTA, {"content": "not told"})
    await other.append(marker, DELTA, {"content": "published after it"})
    await async_wait_until(lambda: heard.of(marker) == [2], DEADLINE_S, "the marker")
    assert heard.of(channel) == [2]


async def test_a_dropped_pubsub_connection_is_caught_up(store: RedisStore, other: RedisStore) -> None:
    channel = await new_channel(other)
    heard = Heard()
    store.on_commit = heard
    await store.watch(channel)
    for n in range(5):
        await other.append(channel, DELTA, {"content": str(n)})
    await async_wait_until(lambda: heard.of(channel)[-1:] == [6], DEADLINE_S, "the first events")
    with redis.Redis.from_url(store.url) as admin:
        assert admin.client_kill_filter(_type="pubsub") >= 1
    for n in range(5, 20):  # published while the watcher reconnects: caught up from the stream
        await other.append(channel, DELTA, {"content": str(n)})
    await other.append(channel, DONE, {"finish_reason": "stop"})
    await async_wait_until(lambda: heard.of(channel)[-1:] == [22], DEADLINE_S, "the terminal event")
    assert heard.of(channel) == list(range(2, 23))


async def test_a_pubsub_connection_that_goes_silent_is_replaced_and_caught_up(
        location: Path, other: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A middlebox forgets the connection: no reset, no data. The heartbeat notices within
    seconds (TCP keepalive would take hours) and the watch catches up from the stream."""
    monkeypatch.setattr(watch, "HEARTBEAT_S", 0.2)
    shared = redis_server.shared_server()
    with TcpProxy(shared.port) as proxy:
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_server.prefix_for(location),
                           timeout_s=1.0)
        await store.open()
        try:
            channel = await new_channel(other)
            heard = Heard()
            store.on_commit = heard
            await store.watch(channel)
            await other.append(channel, DELTA, {"content": "before"})
            await async_wait_until(lambda: heard.of(channel) == [2], DEADLINE_S, "the first event")
            connections = proxy.connections_total
            assert proxy.silence_all() >= 1
            for n in range(5):  # lost on the silent connection: caught up from the stream
                await other.append(channel, DELTA, {"content": str(n)})
            await async_wait_until(lambda: proxy.connections_total > connections, DEADLINE_S,
                                   "a new pub/sub connection")
            await other.append(channel, DONE, {"finish_reason": "stop"})
            await async_wait_until(lambda: heard.of(channel)[-1:] == [8], DEADLINE_S, "the terminal event")
            assert heard.of(channel) == list(range(2, 9))
        finally:
            await store.close()


async def test_another_stores_terminal_event_ends_a_channel_this_store_appends_to(store: RedisStore,
                                                                                  other: RedisStore) -> None:
    """A sweeper (another process) ends a channel whose generation it thinks is lost."""
    channel = await new_channel(store)
    heard = Heard()
    store.on_commit = heard
    await store.watch(channel)
    for n in range(5):
        await store.append(channel, DELTA, {"content": str(n)})
    queued = [await store.append(channel, DELTA, {"content": "queued"}, wait=False) for _ in range(5)]
    end = await other.append(channel, INTERRUPTED, {"reason": "server_lost"})
    await async_wait_until(lambda: heard.of(channel)[-1:] == [end.id], DEADLINE_S, "the other's terminal event")
    assert heard.of(channel) == stored_ids(store, channel)[1:] == list(range(2, end.id + 1))
    assert end.id in (7, 12)  # before the queued events were committed, or after them
    with pytest.raises(ChannelClosed):
        await store.append(channel, DELTA, {"content": "after the end"})
    assert len(queued) == 5 and (await record_of(store, channel)).status == INTERRUPTED


# ---- Redis gone, hung, restarted ---------------------------------------------------------------------

async def test_every_call_is_refused_within_seconds_when_redis_is_stopped(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="stopped", timeout_s=1.0, recovery_s=1.0)
    await store.open()
    try:
        channel = await new_channel(store)
        user = await new_user(store)
        server.stop()
        calls = {
            "append": lambda: store.append(channel, DELTA, {"content": "x"}),
            "read_after": lambda: store.read_after(channel, 0),
            "get_channel": lambda: store.get_channel(channel),
            "create_user": lambda: store.create_user(new_id(), new_id()),
            "list_conversations": lambda: store.list_conversations(user),
            "watch": lambda: store.watch(channel),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await call()
            assert time.monotonic() - started < 4.0, name
        async def unwritable() -> bool:
            return not await store.writable()

        await async_wait_until(unwritable, 4.0, "the store to say it cannot write")  # its last answer expires
        server.start()
        await async_wait_until(store.writable, DEADLINE_S, "the store to be writable again")
    finally:
        await store.close()


async def test_a_write_given_up_on_never_lands_later(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="hung", timeout_s=1.0, recovery_s=0.5)
    await store.open()
    try:
        channel = await new_channel(store)
        with server.client() as admin:
            runs_before = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
        server.pause()
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await store.append(channel, DONE, {"finish_reason": "stop"})
            assert time.monotonic() - started < 6.0
        finally:
            server.resume()
        with server.client() as admin:  # the round sent before the pause runs now, past its deadline
            await async_wait_until(lambda: admin.info("commandstats")["cmdstat_evalsha"]["calls"] > runs_before,
                                   DEADLINE_S, "Redis to run what it was sent while it hung")
        assert stored_ids(store, channel) == [1]
        assert (await record_of(store, channel)).running
        assert (await store.append(channel, DONE, {"finish_reason": "stop"})).id == 2
    finally:
        await store.close()


async def test_events_queued_while_redis_is_gone_fail_and_the_channel_goes_on(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="gone", timeout_s=1.0, recovery_s=0.5)
    await store.open()
    try:
        channel = await new_channel(store)
        await store.append(channel, DELTA, {"content": "kept"})
        failed: list[set[str]] = []
        store.on_failure = lambda channels: failed.append(set(channels))
        server.stop()
        queued = [await store.append(channel, DELTA, {"content": "lost"}, wait=False) for _ in range(3)]
        assert [e.id for e in queued] == [3, 4, 5]
        with pytest.raises(StoreUnavailable):
            await store.append(channel, DELTA, {"content": "lost too"})
        assert failed == [{channel}]
        server.start()
        assert (await store.append(channel, DELTA, {"content": "again"})).id == 3  # the ids stay gapless
        assert stored_ids(store, channel) == [1, 2, 3]
        assert await store.channel_content(channel) == "keptagain"
    finally:
        await store.close()


async def test_a_lost_script_cache_and_a_wrong_clock_are_mended_on_the_way(store: RedisStore) -> None:
    channel = await new_channel(store)
    await store._r.script_flush()
    store._clock_offset_ms -= 3_600_000  # every deadline an hour ago, as Redis sees it
    assert (await store.append(channel, DELTA, {"content": "a"})).id == 2
    store._clock_offset_ms -= 3_600_000
    await store._r.script_flush()
    user = await new_user(store)
    assert await store.user_for_token_hash(f"hash-{user}") == user
    assert stored_ids(store, channel) == [1, 2]


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_everything_survives_a_redis_restart_with_appendonly(server: RedisServer, how: str) -> None:
    store = RedisStore(server.url, prefix="durable")
    await store.open()
    try:
        kept = await keep_some_of_everything(store, "an answer")
        user, finished, running, before = kept.user, kept.finished, kept.running, kept.events
        getattr(server, how)()  # kill: with appendfsync always, every reply came after its fsync
        server.start()

        reopened = RedisStore(server.url, prefix="durable")
        await reopened.open()
        try:
            for check in (store, reopened):  # the open store reconnects, and loads its scripts again
                assert {channel: await check.read_after(channel, 0) for channel in before} == before
                assert (await record_of(check, finished)).status == DONE
                assert [m.content for m in await check.messages(kept.conversation)][1] == "an answer"
                assert running in await check.running_channels()
                assert [s.endpoint for s in await check.subscriptions_for(user)] == ["https://push.example/a"]
            assert (await store.append(running, DELTA, {"content": "next"})).id == 12
            assert (await reopened.append(running, INTERRUPTED, {"reason": "server_restart"})).id == 13
            assert await store.create_conversation(new_id(), user, "after") is not None
        finally:
            await reopened.close()
    finally:
        await store.close()


# ---- keys and persistence --------------------------------------------------------------------------

async def test_deleting_a_conversation_leaves_no_key_of_it(store: RedisStore) -> None:
    user = await new_user(store)
    keep = await store.create_conversation(new_id(), user, "kept")
    conversation = new_id()
    meta = await store.create_answer(NewAnswer(new_id(), user, conversation, "demo", "q", new_title="doomed"))
    await store.append(meta.channel, DELTA, {"content": "x"})
    await store.append(meta.channel, USAGE, {"total_tokens": 1})
    await store.append(meta.channel, DONE, {"finish_reason": "stop"})
    running = await new_channel(store, user, conversation)
    assert sorted(await store.delete_conversation(conversation)) == sorted([meta.channel, running])
    with redis.Redis.from_url(store.url) as client:
        left = {key.decode() for key in client.scan_iter(f"{store.keys.prefix}:*")}
    assert not [key for key in left if conversation in key or meta.channel in key or running in key]
    assert store.keys.conversation(keep.id) in left and store.keys.user(user) in left
    with pytest.raises(UnknownChannel):
        await store.append(running, DELTA, {"content": "after"})


async def test_opening_warns_when_redis_keeps_nothing_on_disk(location: Path, server: RedisServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    for url, warned in ((redis_server.shared_server().url, True), (server.url, False)):  # appendonly no, yes
        caplog.clear()
        store = RedisStore(url, prefix=redis_server.prefix_for(location))
        with caplog.at_level(logging.WARNING, logger="chime.store"):
            await store.open()
        await store.close()
        assert any("Redis" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records) is warned, url


async def test_meta_is_published_with_the_channel(store: RedisStore, other: RedisStore) -> None:
    """A reader elsewhere that watches a channel as it is made hears its ``meta`` too."""
    user = await new_user(other)
    conversation = await other.create_conversation(new_id(), user, "t")
    channel = new_id()
    heard = Heard()
    store.on_commit = heard
    await store.watch(channel)
    meta = await other.create_channel(channel, user, conversation.id, "demo")
    await async_wait_until(lambda: heard.of(channel) == [1], DEADLINE_S, "the meta event")
    assert heard.events == [meta] and heard.events[0].type == META


async def test_a_burst_of_a_thousand_reads_and_appends_waits_for_connections_instead_of_failing(
        store: RedisStore) -> None:
    # A restart's readers all come back at once: more callers than the pool has connections.
    channel = await new_channel(store)
    await store.append(channel, DELTA, {"content": "hi"})
    records, reads = await asyncio.gather(asyncio.gather(*(store.get_channel(channel) for _ in range(500))),
                                          asyncio.gather(*(store.read_after(channel, 0) for _ in range(500))))
    assert all(record is not None and record.last_event_id == 2 for record in records)
    assert all([event.id for event in events] == [1, 2] for events in reads)
    others = [await new_channel(store) for _ in range(200)]
    appended = await asyncio.gather(*(store.append(other, DELTA, {"content": "x"}) for other in others))
    assert [event.id for event in appended] == [2] * 200
