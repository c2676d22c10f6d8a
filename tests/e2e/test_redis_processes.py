"""Three real ``python app.py`` processes on one real Redis serve as one service (API.md, Redis).

Every request may reach any process: an answer submitted through one is read,
resumed with the same ids, cancelled and deleted through the others; a process
killed with -9 has its running answers ended ``server_lost`` by a live one
within CHIME_LEASE_S; a Redis restart with AOF on loses nothing a client saw.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.e2e.channel_clients import Reader, content_of
from tests.e2e.test_push import PUSH_ENV, User, sse_events, wait_metric, ws_until_terminal
from tests.support.push_service import PushService
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

LEASE_S = 2.0
# A kill -9's answers end within the lease; this much more covers a loaded machine's delays.
SLACK_S = 3.0


class Service:
    """One Redis and the processes started on it."""

    def __init__(self, redis: RedisServer):
        self.redis = redis
        self.servers: list[ServerProcess] = []

    def reader(self, index: int, token: str | None = None) -> Reader:
        return Reader(self.servers[index], token)

    def stop(self) -> None:
        for server in self.servers:
            server.__exit__()
        self.redis.stop()


MakeService = Callable[..., Service]


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[MakeService]:
    """``make_service(count, appendfsync=None, **env)``: a Redis (AOF on with ``appendfsync``) and
    ``count`` processes on it, every one stopped at the end of the test."""
    made: list[Service] = []

    def make(count: int, *, appendfsync: str | None = None, **env: str) -> Service:
        service = Service(RedisServer(tmp_path / f"redis-{len(made)}", appendonly=appendfsync is not None,
                                      appendfsync=appendfsync or "everysec").start())
        made.append(service)
        for index in range(count):
            service.servers.append(ServerProcess(tmp_path / f"data-{len(made)}-{index}", {
                "CHIME_REDIS_URL": service.redis.url, "CHIME_LEASE_S": str(LEASE_S), "CHIME_DEMO_DELAY_MS": "2",
                **env}).start())
        return service

    yield make
    for service in made:
        service.stop()


@pytest.fixture
def service(make_service: MakeService) -> Service:
    # appendfsync always: every event is on disk before any client is sent it.
    return make_service(3, appendfsync="always")


def test_an_answer_submitted_on_one_process_is_read_resumed_and_listed_on_the_others(service: Service) -> None:
    a = service.reader(0)
    b, c = service.reader(1, a.token), service.reader(2, a.token)  # the same user everywhere
    try:
        channel = a.submit("one service, three processes")
        events = b.sse(channel).events  # live, on a process that is not generating it
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["event"] == "meta" and events[-1]["event"] == "done"
        assert c.poll(channel)["events"] == events
        frames, code = c.ws(channel)
        assert (frames, code) == (events, 1000)
        assert b.sse(channel, headers={"Last-Event-ID": "3"}).events == events[3:]
        record = c.record(channel)
        assert record["status"] == "done" and record["content"] == content_of(events)
        listed = b.http.get("/api/conversations", headers=b.auth).json()
        assert [conversation["id"] for conversation in listed["conversations"]] == [record["conversation_id"]]
        # Every process signs pushes with the same key.
        keys = {reader.http.get("/api/push/vapid-public-key").json()["public_key"] for reader in (a, b, c)}
        assert len(keys) == 1
    finally:
        for reader in (a, b, c):
            reader.close()


def test_a_reader_on_another_process_gets_every_event_live_as_it_is_generated(make_service: MakeService) -> None:
    servers = make_service(2, CHIME_DEMO_DELAY_MS="40").servers
    a, b = Reader(servers[0]), None
    try:
        b = Reader(servers[1], a.token)
        channel = a.submit("stream me across processes")
        first = b.sse(channel, stop_after=3).events  # attached while it runs, then left
        rest = b.sse(channel, headers={"Last-Event-ID": str(first[-1]["id"])}).events
        events = first + rest
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["event"] == "done"
        assert a.sse(channel).events == events
    finally:
        a.close()
        if b is not None:
            b.close()


def test_cancel_and_delete_through_another_process(make_service: MakeService) -> None:
    servers = make_service(3, CHIME_DEMO_DELAY_MS="200").servers
    a = Reader(servers[0])
    b, c = Reader(servers[1], a.token), Reader(servers[2], a.token)
    try:
        channel = a.submit("cancel me from elsewhere")
        assert len(b.sse(channel, stop_after=2).events) == 2  # it is running
        response = c.http.post(f"/api/channels/{channel}/cancel", headers=c.auth)
        assert response.status_code == 202, response.text
        events = b.sse(channel).events
        assert events[-1]["event"] == "cancelled"
        assert [e for e in events if e["event"] in ("done", "cancelled", "error", "interrupted")] == events[-1:]
        assert c.http.post(f"/api/channels/{channel}/cancel", headers=c.auth).status_code == 409
        conversation = a.record(channel)["conversation_id"]
        running = a.submit("delete me while I run", conversation_id=conversation)
        assert b.http.delete(f"/api/conversations/{conversation}", headers=b.auth).status_code == 204
        for reader in (a, b, c):
            assert reader.http.get(f"/api/channels/{running}", headers=reader.auth).status_code == 404
            assert reader.http.get(f"/api/conversations/{conversation}", headers=reader.auth).status_code == 404
    finally:
        for reader in (a, b, c):
            reader.close()


def test_a_process_killed_mid_answer_has_it_ended_server_lost_by_a_live_one(make_service: MakeService) -> None:
    servers = make_service(3, CHIME_DEMO_DELAY_MS="200").servers
    a = Reader(servers[0])
    b = Reader(servers[1], a.token)
    try:
        channel = a.submit("the process generating me dies")
        seen = b.sse(channel, stop_after=3).events
        killed_at = time.monotonic()
        servers[0].kill()
        events = b.sse(channel, headers={"Last-Event-ID": str(seen[-1]["id"])}).events
        ended_s = time.monotonic() - killed_at
        assert events[-1]["event"] == "interrupted" and events[-1]["data"] == {"reason": "server_lost"}
        assert ended_s <= LEASE_S + SLACK_S, ended_s
        everything = seen + events
        assert [e["id"] for e in everything] == list(range(1, len(everything) + 1))
        c = Reader(servers[2], a.token)
        try:
            assert c.sse(channel).events == everything
            assert c.record(channel)["status"] == "interrupted"
        finally:
            c.close()
    finally:
        a.close()
        b.close()


def test_a_redis_crash_and_restart_with_aof_loses_nothing_a_client_saw(service: Service) -> None:
    a = service.reader(0)
    b = service.reader(1, a.token)
    try:
        channels = [a.submit("before the crash"), b.submit("this one too")]
        before = {channel: b.wait_finished(channel) for channel in channels}
        service.redis.kill()  # kill -9: nothing is written out on the way down
        service.redis.start()
        # Every process serves again once Redis is back: the same events, the same user.
        for index in range(3):
            reader = service.reader(index, a.token)
            try:
                wait_until(partial(_healthy, reader.http), 20, "the process to serve again")
                for channel, events in before.items():
                    assert reader.sse(channel).events == events
            finally:
                reader.close()
        fresh = a.submit("after the restart")
        events = b.wait_finished(fresh)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1)) and events[-1]["event"] == "done"
    finally:
        a.close()
        b.close()


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_the_push_decision_counts_readers_on_every_process(make_service: MakeService) -> None:
    servers = make_service(3, **{**PUSH_ENV, "CHIME_DEMO_DELAY_MS": "30"}).servers
    a, b, c = (User(server) for server in servers)
    b.http.headers["Authorization"] = c.http.headers["Authorization"] = a.http.headers["Authorization"]
    b.token = c.token = a.token
    try:
        with PushService() as push_service:
            subscription = a.subscribe(push_service)
            # Generated on A, read in view on B: nobody is pushed.
            channel = a.ask("watched from another process")
            frames = ws_until_terminal(b, channel, lambda ws: ws.send(json.dumps({"type": "presence",
                                                                                  "visible": True})))
            assert frames[-1]["event"] == "done"
            wait_metric(servers[0], "chime_push_skipped_total", 1, reason="watched")
            assert push_service.attempts == []
            # Read on B, reported hidden through C: the push goes.
            channel = a.ask("hidden through a third process")
            with b.http.stream("GET", f"/api/channels/{channel}/events") as response:
                events = sse_events(response)
                assert next(events)[0] == "meta"
                assert c.http.post(f"/api/channels/{channel}/presence", json={"visible": False}).status_code == 204
                assert [kind for kind, _ in events][-1] == "done"
            wait_until(lambda: push_service.deliveries_for(subscription), 20, "the push")
            assert push_service.deliveries_for(subscription)[0].payload["channel"] == channel
    finally:
        for user in (a, b, c):
            user.close()


def test_limits_count_across_processes(make_service: MakeService) -> None:
    servers = make_service(2, CHIME_DEMO_DELAY_MS="200", CHIME_MAX_RUNNING_PER_USER="1",
                              CHIME_NEW_USERS_PER_MINUTE="3").servers
    a = Reader(servers[0])  # the first new user from this address
    b = Reader(servers[1], a.token)
    try:
        channel = a.submit("I take the only slot")
        refused = b.http.post("/api/chat", headers=b.auth, json={"message": "me too"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited" and refused.headers["retry-after"] == "1"
        assert a.http.post(f"/api/channels/{channel}/cancel", headers=a.auth).status_code == 202
        wait_until(lambda: b.http.post("/api/chat", headers=b.auth, json={"message": "now me"}).status_code == 201,
                   10, "the slot to come free on the other process")
        made = [reader.http.post("/api/users").status_code for reader in (a, b, a)]
        assert made == [201, 201, 429]  # 3 a minute from one address, counted on both processes
    finally:
        a.close()
        b.close()


def test_a_hung_redis_is_a_clean_503_within_seconds_and_service_comes_back(make_service: MakeService) -> None:
    service = make_service(1)
    redis, [server] = service.redis, service.servers
    reader = Reader(server)
    try:
        redis.pause()  # holds every connection and answers nothing
        wait_until(lambda: reader.http.get("/healthz").status_code == 503, 10, "/healthz to say 503")
        started = time.monotonic()
        refused = reader.http.post("/api/chat", headers=reader.auth, json={"message": "while Redis hangs"})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable" and int(refused.headers["retry-after"]) >= 1
        assert time.monotonic() - started < 10
        redis.resume()
        wait_until(lambda: reader.http.get("/healthz").status_code == 200, 10, "/healthz to say 200 again")
        channel = reader.submit("after Redis came back")
        events = reader.wait_finished(channel)
        assert [e["id"] for e in events] == list(range(1, len(events) + 1)) and events[-1]["event"] == "done"
    finally:
        reader.close()
