"""Web Push end to end: the real server process, real clients, a loopback push service.

The push service verifies every push like a real one (VAPID JWT signed with
the key ``GET /api/push/vapid-public-key`` served, ``aud`` its origin) and
decrypts it with the key pair the test made the way a browser does.
Absence of a push is asserted only after ``/metrics`` shows the decision was
taken, so a test never passes merely because it looked too early.
"""

from __future__ import annotations

import json
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from notify.vapid import KEY_FILE_NAME
from tests.notify.test_subscriptions import MALFORMED_KEYS
from tests.support.push_service import Answer, BrowserSubscription, PushService
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

# Slow enough (~90 tokens at 20 ms) that a reader's presence report lands long before the end.
PUSH_ENV = {"CHIME_PUSH_ALLOW_PRIVATE": "1", "CHIME_DEMO_DELAY_MS": "20", "CHIME_PUSH_RETRY_BASE_S": "0.05",
            "CHIME_PUSH_RETRIES": "2", "CHIME_PUSH_TIMEOUT_S": "30"}
WAIT_S = 20.0
TERMINAL = {"done", "error", "cancelled", "interrupted"}


class User:
    """One user of the server: an httpx client with a bearer token."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=WAIT_S)
        self.token = self.http.post("/api/users").json()["token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def subscribe(self, push_service: PushService) -> BrowserSubscription:
        key = self.http.get("/api/push/vapid-public-key").json()["public_key"]
        subscription = push_service.subscribe(key)
        response = self.http.post("/api/push/subscriptions", json=subscription.to_json())
        assert response.status_code == 201, response.text
        return subscription

    def ask(self, message: str = "Tell me about push") -> str:
        response = self.http.post("/api/chat", json={"message": message})
        assert response.status_code == 201, response.text
        return response.json()["channel"]

    def channel(self, channel: str) -> dict[str, Any]:
        return self.http.get(f"/api/channels/{channel}").json()

    def wait_finished(self, channel: str) -> dict[str, Any]:
        return wait_until(lambda: (record := self.channel(channel))["status"] != "running" and record,
                          WAIT_S, f"channel {channel} to finish")

    def close(self) -> None:
        self.http.close()


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """One series of ``/metrics`` (0 when absent)."""
    text = httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    series = f"{name}{{{label_text}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_metric(server: ServerProcess, name: str, value: float, **labels: str) -> None:
    wait_until(lambda: metric(server, name, **labels) >= value, WAIT_S, f"{name}{labels} to reach {value}")


def stored_endpoints(server: ServerProcess) -> list[str]:
    with sqlite3.connect(server.data_dir / "chime.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT endpoint FROM push_subscriptions")]


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield fields["event"], json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def ws_until_terminal(user: User, channel: str, first: Callable[[Any], None] | None = None) -> list[dict]:
    """Read a channel over WebSocket to its terminal event; ``first(ws)`` runs right after connecting."""
    url = f"{user.server.ws_url}/api/channels/{channel}/ws?access_token={user.token}"
    frames = []
    with connect(url, open_timeout=WAIT_S) as ws:
        if first is not None:
            first(ws)
        while True:
            frame = json.loads(ws.recv(timeout=WAIT_S))
            frames.append(frame)
            if frame["event"] in TERMINAL:
                return frames


@pytest.fixture
def push_service() -> Iterator[PushService]:
    with PushService() as service:
        yield service


@pytest.fixture
def server(make_server) -> ServerProcess:
    return make_server(PUSH_ENV)


@pytest.fixture
def user(server: ServerProcess) -> Iterator[User]:
    user = User(server)
    yield user
    user.close()


# ---- who gets a push ---------------------------------------------------------------

def test_nobody_watching_gets_exactly_one_push_per_subscription(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    phone, laptop = user.subscribe(push_service), user.subscribe(push_service)
    channel = user.ask("What happens when I walk away?")
    record = user.wait_finished(channel)
    wait_metric(server, "chime_push_sends_total", 2, outcome="delivered")
    wait_until(lambda: metric(server, "chime_push_pending") == 0, WAIT_S, "no push pending")

    assert push_service.errors == []
    for subscription in (phone, laptop):
        [delivery] = push_service.deliveries_for(subscription)
        assert delivery.payload == {
            "title": "Your answer is ready: What happens when I walk away?",
            "body": record["content"][:120], "url": f"/c/{channel}", "channel": channel, "status": "done"}
        assert len(record["content"]) > 120 and len(delivery.payload["body"]) == 120
        assert delivery.ttl >= 3600 and delivery.urgency == "normal"
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,32}", delivery.topic or "")
        assert delivery.content_encoding == "aes128gcm" and delivery.body_bytes <= 4096
    assert push_service.deliveries_for(phone)[0].topic == push_service.deliveries_for(laptop)[0].topic


def test_a_reader_in_view_for_the_whole_answer_means_no_push(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    user.subscribe(push_service)
    with user.http.stream("POST", "/api/chat", json={"message": "I am watching"},
                          headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        kinds = [kind for kind, _ in sse_events(response)]
    assert kinds[0] == "meta" and kinds[-1] == "done"
    wait_metric(server, "chime_push_skipped_total", 1, reason="watched")
    assert push_service.attempts == [] and push_service.errors == []


def test_a_websocket_reader_in_view_means_no_push(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    user.subscribe(push_service)
    channel = user.ask()
    frames = ws_until_terminal(user, channel, lambda ws: ws.send(json.dumps({"type": "presence", "visible": True})))
    assert frames[-1]["event"] == "done"
    wait_metric(server, "chime_push_skipped_total", 1, reason="watched")
    assert push_service.attempts == []


def test_a_websocket_reader_that_reported_hidden_gets_a_push(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    subscription = user.subscribe(push_service)
    channel = user.ask()
    frames = ws_until_terminal(user, channel, lambda ws: ws.send(json.dumps({"type": "presence", "visible": False})))
    assert frames[-1]["event"] == "done"  # still attached at the end, but not in view
    wait_until(lambda: push_service.deliveries_for(subscription), WAIT_S, "the push")
    assert push_service.deliveries_for(subscription)[0].payload["channel"] == channel
    assert metric(server, "chime_push_skipped_total", reason="watched") == 0


def test_an_sse_reader_hidden_by_post_presence_gets_a_push(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    subscription = user.subscribe(push_service)
    with user.http.stream("POST", "/api/chat", json={"message": "I switch tabs"},
                          headers={"Accept": "text/event-stream"}) as response:
        events = sse_events(response)
        kind, meta = next(events)
        assert kind == "meta"
        hidden = user.http.post(f"/api/channels/{meta['channel']}/presence", json={"visible": False})
        assert hidden.status_code == 204
        kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    wait_until(lambda: push_service.deliveries_for(subscription), WAIT_S, "the push")
    assert push_service.deliveries_for(subscription)[0].payload["channel"] == meta["channel"]


def test_a_user_following_only_by_polling_in_view_gets_no_push(
        make_server, push_service: PushService) -> None:
    # Tokens far apart compared with a poll's round trip: the end is decided while a poll is held.
    server = make_server({**PUSH_ENV, "CHIME_DEMO_DELAY_MS": "50"})
    user = User(server)
    user.subscribe(push_service)
    channel = user.ask("I follow by polling")
    after, finished = 0, False
    while not finished:
        page = user.http.get(f"/api/channels/{channel}/events.json", params={"after": after, "wait": 10}).json()
        after, finished = page["last_event_id"], page["finished"]
    wait_metric(server, "chime_push_skipped_total", 1, reason="watched")
    assert push_service.attempts == []
    user.close()


def test_a_polling_user_who_reported_hidden_gets_a_push(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    subscription = user.subscribe(push_service)
    channel = user.ask()
    assert user.http.post(f"/api/channels/{channel}/presence", json={"visible": False}).status_code == 204
    after, finished = 0, False
    while not finished:
        page = user.http.get(f"/api/channels/{channel}/events.json", params={"after": after, "wait": 10}).json()
        after, finished = page["last_event_id"], page["finished"]
    wait_until(lambda: push_service.deliveries_for(subscription), WAIT_S, "the push")
    assert metric(server, "chime_push_skipped_total", reason="watched") == 0


# ---- what push services answer ------------------------------------------------------------

def test_410_deletes_the_subscription_and_it_is_never_tried_again(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    gone = user.subscribe(push_service)
    push_service.answer(gone, Answer(410))
    user.wait_finished(user.ask())
    wait_metric(server, "chime_push_sends_total", 1, outcome="gone")
    assert stored_endpoints(server) == []

    user.wait_finished(user.ask("and again"))
    wait_metric(server, "chime_push_skipped_total", 1, reason="no_subscriptions")
    assert [attempt.status for attempt in push_service.attempts_for(gone)] == [410]


def test_429_is_retried_after_retry_after_and_delivered_once(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    subscription = user.subscribe(push_service)
    push_service.answer(subscription, Answer(429, {"Retry-After": "1"}))
    user.wait_finished(user.ask())
    wait_metric(server, "chime_push_sends_total", 1, outcome="delivered")
    first, second = push_service.attempts_for(subscription)
    assert (first.status, second.status) == (429, 201)
    assert second.at - first.at >= 1.0  # Retry-After honoured (a lower bound, not a speed)
    assert len(push_service.deliveries_for(subscription)) == 1
    assert metric(server, "chime_push_retries_total", cause="rate_limited") == 1
    assert push_service.errors == []


def test_a_push_service_that_never_answers_does_not_hold_up_anything(
        make_server, push_service: PushService) -> None:
    server = make_server({**PUSH_ENV, "CHIME_MAX_RUNNING_PER_USER": "1"})
    user = User(server)
    subscription = user.subscribe(push_service)
    push_service.hang(subscription)
    hidden = lambda ws: ws.send(json.dumps({"type": "presence", "visible": False}))  # noqa: E731
    assert ws_until_terminal(user, user.ask(), hidden)[-1]["event"] == "done"
    wait_until(lambda: push_service.hanging == 1, WAIT_S, "the push service to hold the push")

    # The answer's task ended although its push is still hanging: with one running
    # answer allowed per user, the next question is accepted and answered.
    assert metric(server, "chime_running_answers") == 0
    assert ws_until_terminal(user, user.ask("next question"), hidden)[-1]["event"] == "done"
    assert push_service.deliveries == []
    user.close()
    # Nor does it hold up shutdown: pending pushes get the grace period, then are cancelled
    # (ServerProcess.stop fails after 20 s; the push timeout is 30 s).
    assert server.stop() == 0


def test_a_push_service_that_refuses_connections_does_not_hold_up_the_answer(
        server: ServerProcess, user: User) -> None:
    with PushService() as service:
        user.subscribe(service)
    # The service is closed now: its port refuses every connection.
    with user.http.stream("POST", "/api/chat", json={"message": "hello"},
                          headers={"Accept": "text/event-stream"}) as response:
        events = sse_events(response)
        kind, meta = next(events)
        user.http.post(f"/api/channels/{meta['channel']}/presence", json={"visible": False})
        assert [kind for kind, _ in events][-1] == "done"
    wait_metric(server, "chime_push_sends_total", 1, outcome="failed")
    assert metric(server, "chime_push_retries_total", cause="network") == 2


# ---- where pushes may go ---------------------------------------------------------------------

def test_private_endpoints_are_refused_without_the_flag(make_server, push_service: PushService) -> None:
    server = make_server({"CHIME_DEMO_DELAY_MS": "1"})
    user = User(server)
    key = user.http.get("/api/push/vapid-public-key").json()["public_key"]
    subscription = push_service.subscribe(key)
    port = push_service.origin.rsplit(":", 1)[1]
    for endpoint in (subscription.endpoint,
                     subscription.endpoint.replace("http://127.0.0.1", "https://127.0.0.1"),
                     subscription.endpoint.replace("http://127.0.0.1", "https://localhost"),
                     subscription.endpoint.replace(f"http://127.0.0.1:{port}", f"https://[::ffff:127.0.0.1]:{port}")):
        response = user.http.post("/api/push/subscriptions", json={**subscription.to_json(), "endpoint": endpoint})
        assert response.status_code == 400, endpoint
        assert response.json()["error"]["code"] == "invalid_subscription"
    assert stored_endpoints(server) == []
    user.wait_finished(user.ask())
    wait_metric(server, "chime_push_skipped_total", 1, reason="no_subscriptions")
    assert push_service.attempts == [] and push_service.errors == []
    user.close()


def test_every_malformed_key_is_400_and_stores_nothing(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    key = user.http.get("/api/push/vapid-public-key").json()["public_key"]
    endpoint = push_service.subscribe(key).endpoint
    for kind, keys in MALFORMED_KEYS.items():
        response = user.http.post("/api/push/subscriptions", json={"endpoint": endpoint, "keys": keys})
        assert response.status_code == 400, kind
        assert response.json()["error"]["code"] == "invalid_subscription", kind
    assert stored_endpoints(server) == []


# ---- the key pair ----------------------------------------------------------------------------

def test_the_key_file_is_private_and_the_key_survives_a_restart(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    key_file = Path(server.data_dir) / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    subscription = user.subscribe(push_service)
    before = user.http.get("/api/push/vapid-public-key").json()["public_key"]

    server.restart()
    assert user.http.get("/api/push/vapid-public-key").json()["public_key"] == before
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    user.wait_finished(user.ask())
    # The push service checks k against the key the subscription was made with.
    wait_until(lambda: push_service.deliveries_for(subscription), WAIT_S, "the push after the restart")
    assert push_service.errors == []


def test_an_answer_interrupted_by_shutdown_is_pushed_before_the_process_exits(
        server: ServerProcess, user: User, push_service: PushService) -> None:
    subscription = user.subscribe(push_service)
    channel = user.ask("a long one " * 20)
    wait_until(lambda: user.channel(channel)["content"], WAIT_S, "the answer to start")
    assert server.stop() == 0
    [delivery] = push_service.deliveries_for(subscription)
    assert delivery.payload["status"] == "interrupted" and delivery.payload["channel"] == channel


@pytest.mark.parametrize("front_door", ["v1-responses", "ai-sdk"])
def test_an_answer_made_through_another_front_door_gets_its_push_when_nobody_watches(
        server: ServerProcess, user: User, push_service: PushService, front_door: str) -> None:
    subscription = user.subscribe(push_service)
    if front_door == "v1-responses":
        response = user.http.post("/v1/responses", json={"input": "Push me from /v1", "background": True})
        assert response.status_code == 200, response.text
        channel = response.headers["x-chime-channel"]
    else:
        body = {"id": "push-chat", "trigger": "submit-message", "messages": [
            {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Push me from useChat"}]}]}
        with user.http.stream("POST", "/api/ai/chat", json=body) as streamed:  # the tab closes after `start`
            assert streamed.status_code == 200
            first = next(line for line in streamed.iter_lines() if line.startswith("data: {"))
        channel = json.loads(first[6:])["messageId"]
    record = user.wait_finished(channel)
    [delivery] = wait_until(lambda: push_service.deliveries_for(subscription), WAIT_S, "the push")
    assert delivery.payload["channel"] == channel and delivery.payload["url"] == f"/c/{channel}"
    assert delivery.payload["body"] == record["content"][:120] and delivery.payload["status"] == "done"
