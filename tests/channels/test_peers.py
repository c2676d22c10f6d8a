"""Presence, limits and cancels across processes: two ``RedisPeers`` on one real Redis stand
for two processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channels.limits import LimitExceeded, SharedLimits
from channels.peers import RedisPeers
from channels.presence import SharedPresence
from channels.redis import watch
from channels.store import StoreUnavailable
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.waiting import async_wait_until

CHANNEL = "a-channel"


class Process:
    def __init__(self, url: str, ttl_s: float = 5.0):
        self.cancelled: list[str] = []
        self.peers = RedisPeers(url, self.cancelled.append, prefix="peers-test", ttl_s=ttl_s)
        self.presence = SharedPresence(self.peers)
        self.peers.on_report = self.presence.apply_report


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
async def processes(redis: RedisServer) -> AsyncIterator[tuple[Process, Process]]:
    one, two = Process(redis.url), Process(redis.url)
    await one.peers.open()
    await two.peers.open()
    yield one, two
    await one.peers.close()
    await two.peers.close()


async def test_a_reader_in_view_on_another_process_counts_as_watching(processes: tuple[Process, Process]) -> None:
    one, two = processes
    assert not await one.presence.watched_anywhere(CHANNEL)
    reader = two.presence.attach(CHANNEL)  # in view until told otherwise
    await two.presence.flushed()
    assert await one.presence.watched_anywhere(CHANNEL)
    two.presence.report(CHANNEL, False, reader)  # its own (WebSocket) report
    await two.presence.flushed()
    assert not await one.presence.watched_anywhere(CHANNEL)
    two.presence.report(CHANNEL, True, reader)
    await two.presence.flushed()
    assert await one.presence.watched_anywhere(CHANNEL)
    two.presence.detach(reader)
    await two.presence.flushed()
    assert not await one.presence.watched_anywhere(CHANNEL)


async def test_a_report_for_the_channel_through_one_process_reaches_the_readers_of_the_other(
        processes: tuple[Process, Process]) -> None:
    one, two = processes
    reader = two.presence.attach(CHANNEL)
    one.presence.report(CHANNEL, False)  # POST .../presence reached the process without readers
    await async_wait_until(lambda: not reader.visible, 5, "the report to reach the other process")
    await two.presence.flushed()
    assert not await one.presence.watched_anywhere(CHANNEL)
    later = two.presence.attach(CHANNEL)  # a reader attaching later starts from that report
    assert not later.visible


async def test_the_readers_of_a_dead_process_do_not_count(redis: RedisServer) -> None:
    one, dying = Process(redis.url), Process(redis.url, ttl_s=0.3)
    await one.peers.open()
    await dying.peers.open()
    try:
        dying.presence.attach(CHANNEL)
        await dying.presence.flushed()
        assert await one.presence.watched_anywhere(CHANNEL)
        for task in dying.peers._tasks:  # it stops renewing its lease, as a killed process would
            task.cancel()
        with redis.client() as client:
            await async_wait_until(lambda: client.exists(dying.peers._lease) == 0, 5, "the lease to run out")
        assert not await one.presence.watched_anywhere(CHANNEL)
    finally:
        await one.peers.close()
        await dying.peers.close()


async def test_a_cancel_reaches_the_live_owner_only(processes: tuple[Process, Process]) -> None:
    one, two = processes
    assert not await one.peers.cancel_elsewhere(CHANNEL)  # nobody claims it
    await two.peers.claim(CHANNEL)
    assert await one.peers.owned_elsewhere() == {CHANNEL}
    assert await two.peers.owned_elsewhere() == set()
    assert await one.peers.cancel_elsewhere(CHANNEL)
    await async_wait_until(lambda: two.cancelled == [CHANNEL], 5, "the owner to hear the cancel")
    await two.peers.release(CHANNEL)
    assert await one.peers.owned_elsewhere() == set()
    assert not await one.peers.cancel_elsewhere(CHANNEL)


async def test_a_cancel_is_heard_after_the_owners_subscription_goes_silent(
        redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A middlebox forgets the owner's pub/sub connection without a word: the heartbeat replaces
    it within seconds, and cancels are heard again."""
    monkeypatch.setattr(watch, "HEARTBEAT_S", 0.2)
    with TcpProxy(redis.port) as proxy:
        one, two = Process(redis.url), Process(f"redis://127.0.0.1:{proxy.port}/0", ttl_s=60.0)
        await one.peers.open()
        await two.peers.open()
        try:
            await two.peers.claim(CHANNEL)
            assert proxy.silence_all() >= 1

            async def heard() -> bool:
                await one.peers.cancel_elsewhere(CHANNEL)
                return CHANNEL in two.cancelled

            await async_wait_until(heard, 15, "the owner to hear a cancel again")
        finally:
            await one.peers.close()
            await two.peers.close()


# ---- limits across processes ---------------------------------------------------------------

def shared_limits(process: Process, max_running: int = 2, per_minute: int = 100,
                  max_total: int | None = None) -> SharedLimits:
    return SharedLimits(process.peers, max_running, per_minute, max_running_total=max_total,
                        new_users_per_minute=2)


async def test_running_slots_count_across_processes_until_the_generation_ends(
        processes: tuple[Process, Process], redis: RedisServer) -> None:
    one, two = processes
    first, second = shared_limits(one), shared_limits(two)
    generation = asyncio.get_running_loop().create_future()
    async with first.admitted("alice") as slot:
        slot.keep_until(generation)  # held by the answer it started, as the answers service does
    async with second.admitted("alice"):
        with pytest.raises(LimitExceeded, match="2 answers running"):  # one here, one there
            async with first.admitted("alice"):
                pass
        async with first.admitted("bob"):  # another user has slots of their own
            pass
    async with second.admitted("alice"):  # the block ended without keeping its slot
        pass
    generation.set_result(None)
    with redis.client() as client:
        await async_wait_until(lambda: client.hget(f"peers-test:slots:{one.peers.id}", "alice") is None, 5,
                               "the slot to be given back")
    async with first.admitted("alice"), second.admitted("alice"):
        pass


async def test_the_total_the_minute_window_and_new_users_count_across_processes(
        processes: tuple[Process, Process]) -> None:
    one, two = processes
    first, second = shared_limits(one, max_total=1), shared_limits(two, max_total=1)
    async with first.admitted("alice"):
        with pytest.raises(LimitExceeded, match="as many questions as it can"):
            async with second.admitted("bob"):
                pass
    first, second = shared_limits(one, per_minute=2), shared_limits(two, per_minute=2)
    async with first.admitted("carol"):
        pass
    async with second.admitted("carol"):
        pass
    with pytest.raises(LimitExceeded, match="2 questions a minute") as refused:
        async with first.admitted("carol"):
            pass
    assert 1 <= refused.value.retry_after_s <= 60
    await first.new_user("203.0.113.7")
    await second.new_user("203.0.113.7")
    with pytest.raises(LimitExceeded, match="2 new users a minute"):
        await first.new_user("203.0.113.7")
    await second.new_user("203.0.113.8")


async def test_the_slots_of_a_dead_process_stop_counting(redis: RedisServer) -> None:
    one, dying = Process(redis.url), Process(redis.url, ttl_s=0.3)
    await one.peers.open()
    await dying.peers.open()
    try:
        async with shared_limits(dying, max_running=1).admitted("alice") as slot:
            slot.keep_until(asyncio.get_running_loop().create_future())  # an answer that never ends
        with pytest.raises(LimitExceeded):
            async with shared_limits(one, max_running=1).admitted("alice"):
                pass
        for task in dying.peers._tasks:  # it stops renewing its lease, as a killed process would
            task.cancel()
        with redis.client() as client:
            await async_wait_until(lambda: client.exists(dying.peers._lease) == 0, 5, "the lease to run out")
        async with shared_limits(one, max_running=1).admitted("alice"):
            pass
    finally:
        await one.peers.close()
        await dying.peers.close()


async def test_a_thousand_answers_ending_together_give_back_every_slot_and_claim(
        processes: tuple[Process, Process], redis: RedisServer) -> None:
    one, _ = processes
    limits = shared_limits(one, max_running=2000, per_minute=2000, max_total=5000)
    users = [f"user-{n}" for n in range(1000)]
    generations = [asyncio.get_running_loop().create_future() for _ in users]

    async def start(user: str, generation: asyncio.Future[None]) -> None:
        async with limits.admitted(user) as slot:
            await one.peers.claim(f"channel-{user}")
            slot.keep_until(generation)

    await asyncio.gather(*(start(user, generation) for user, generation in zip(users, generations, strict=True)))
    for generation in generations:  # every answer ends at once
        generation.set_result(None)
    ended = await asyncio.gather(*(one.peers.release(f"channel-{user}") for user in users),
                                 *(one.presence.watched_anywhere(f"channel-{user}") for user in users))
    assert not any(ended[len(users):])
    with redis.client() as client:
        await async_wait_until(lambda: client.hlen(f"peers-test:slots:{one.peers.id}") == 0, 10,
                               "every slot to be given back")
        assert client.hlen("peers-test:owners") == 0


def script_calls(client: Any) -> dict[str, int]:
    """How many times Redis ran each SCRIPT subcommand and EVALSHA (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            for name in ("evalsha", "script|exists", "script|load")}


async def test_a_batch_of_scripts_is_one_round_trip_and_survives_a_flushed_script_cache(
        processes: tuple[Process, Process], redis: RedisServer) -> None:
    one, two = processes
    limits = shared_limits(one)
    with redis.client() as client:
        async with limits.admitted("alice"):  # loads the scripts, as the first batch after a start does
            pass
        before = script_calls(client)
        async with limits.admitted("alice"):
            pass
        assert not await one.presence.watched_anywhere(CHANNEL)
        after = script_calls(client)
        assert after["script|exists"] == before["script|exists"]  # no question before each batch
        assert after["evalsha"] > before["evalsha"]
        client.script_flush()  # as a restarted Redis without its script cache
        reader = two.presence.attach(CHANNEL)
        await two.presence.flushed()
        async with limits.admitted("alice"):
            assert await one.presence.watched_anywhere(CHANNEL)
        assert script_calls(client)["script|load"] > after["script|load"]
        two.presence.detach(reader)
    async with limits.admitted("alice"), shared_limits(two).admitted("alice"):  # every slot was given back
        pass


async def test_a_failing_command_in_a_batch_fails_its_own_caller_alone(
        processes: tuple[Process, Process], redis: RedisServer) -> None:
    one, _ = processes
    limits = shared_limits(one)

    async def admitted() -> str:
        async with limits.admitted("alice"):
            return "admitted"

    with redis.client() as client:
        client.set("peers-test:owners", "not a hash")  # the claim's HSET fails: WRONGTYPE
        claim, admission = await asyncio.gather(one.peers.claim(CHANNEL), admitted(), return_exceptions=True)
        assert isinstance(claim, StoreUnavailable) and admission == "admitted"
        assert client.get("peers-test:owners") == b"not a hash"
        client.delete("peers-test:owners")
    await one.peers.claim(CHANNEL)  # the batch's connection still answers in step
    with redis.client() as client:
        assert client.hget("peers-test:owners", CHANNEL) == one.peers.id.encode()
