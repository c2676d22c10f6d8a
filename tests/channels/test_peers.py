"""Presence across processes: two ``RedisPeers`` on one real Redis stand for two processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channels.peers import RedisPeers
from channels.presence import SharedPresence
from tests.support.redis_server import RedisServer
from tests.support.waiting import async_wait_until

CHANNEL = "a-channel"


class Process:
    def __init__(self, url: str, ttl_s: float = 5.0):
        self.cancelled: list[str] = []
        self.peers = RedisPeers(url, self.cancelled.append, prefix="presence-test", ttl_s=ttl_s)
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
        await async_wait_until(lambda: redis.client().exists(dying.peers._lease) == 0, 5, "the lease to run out")
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
