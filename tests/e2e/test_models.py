"""Real models: the server process streams from a loopback OpenAI-compatible upstream.

Every failure mode of the model ends the channel with the right terminal event
while other channels keep streaming; multi-turn history reaches the model; a
cancel closes the upstream connection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.openai_upstream import OpenAIUpstream, RecordedRequest, Reply
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

API_KEY = "sk-chime-test-0123456789abcdef"
MODEL = "chime-test-model"
SYSTEM_PROMPT = "You answer in short sentences."
STALL_S = 0.6
RETRIES = 2
READ_TIMEOUT_S = 20.0
TERMINAL = {"done", "error", "cancelled", "interrupted"}

Event = tuple[int, str, dict[str, Any]]


def model_env(upstream: OpenAIUpstream, **extra: str) -> dict[str, str]:
    """The environment that points a Chime server at ``upstream``."""
    env = {
        "OPENAI_BASE_URL": upstream.url,
        "OPENAI_API_KEY": API_KEY,
        "CHIME_MODEL": MODEL,
        "CHIME_SYSTEM_PROMPT": SYSTEM_PROMPT,
        "CHIME_TEMPERATURE": "0.25",
        "CHIME_MAX_TOKENS": "321",
        "CHIME_MODEL_STALL_S": str(STALL_S),
        "CHIME_MODEL_RETRIES": str(RETRIES),
        "CHIME_MODEL_RETRY_BASE_S": "0.01",
        "CHIME_MODEL_CONNECT_TIMEOUT_S": "2",
    }
    env.update(extra)
    return env


# ---- a small client of the API ---------------------------------------------


class Chime:
    """One user of a Chime server, speaking the public API."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url, timeout=READ_TIMEOUT_S)
        token = self.http.post("/api/users").json()["token"]
        self.token = token
        self.http.headers["Authorization"] = f"Bearer {token}"

    def submit(self, message: str, conversation_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"message": message}
        if conversation_id:
            body["conversation_id"] = conversation_id
        response = self.http.post("/api/chat", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def sse(self, channel: str, after: int = 0) -> Iterator[Event]:
        """The channel's events after ``after``, as the SSE endpoint streams them, until it ends."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        with self.http.stream("GET", f"/api/channels/{channel}/events", headers=headers) as response:
            assert response.status_code == 200
            yield from parse_sse(response.iter_lines())

    def events(self, channel: str, after: int = 0) -> list[Event]:
        return list(self.sse(channel, after))

    def channel(self, channel: str) -> dict[str, Any]:
        return self.http.get(f"/api/channels/{channel}").json()

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return self.http.get(f"/api/conversations/{conversation_id}").json()

    def close(self) -> None:
        self.http.close()


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield int(fields["id"]), fields.get("event", "message"), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


def content_of(events: list[Event]) -> str:
    return "".join(data["content"] for _, kind, data in events if kind == "delta")


def only_terminal(events: list[Event]) -> Event:
    """The single terminal event, checked to be the last one."""
    terminals = [e for e in events if e[1] in TERMINAL]
    assert len(terminals) == 1 and events[-1] is terminals[0], events
    assert [e[0] for e in events] == list(range(events[0][0], events[0][0] + len(events)))
    return terminals[0]


# ---- fixtures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(api_key=API_KEY, models=[MODEL]) as server:
        yield server


@pytest.fixture(scope="module")
def chime(upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Every test signs up its own users (one per failure mode): more than the default sign-ups a minute.
    env = model_env(upstream, CHIME_MAX_RUNNING_PER_USER="2", CHIME_SUBMISSIONS_PER_MINUTE="4",
                    CHIME_NEW_USERS_PER_MINUTE="200")
    with ServerProcess(Path(tmp_path_factory.mktemp("chime")), env) as process:
        yield process


@pytest.fixture
def user(chime: ServerProcess) -> Iterator[Chime]:
    client = Chime(chime.url)
    yield client
    client.close()


# ---- the happy path ---------------------------------------------------------


def test_multi_turn_history_reaches_the_model(user: Chime, upstream: OpenAIUpstream) -> None:
    first = user.submit("history-1 what is a channel?")
    assert only_terminal(user.events(first["channel"]))[1] == "done"
    second = user.submit("history-2 and an event?", first["conversation_id"])
    assert only_terminal(user.events(second["channel"]))[1] == "done"

    [request] = upstream.requests_for("history-2")
    assert request.messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "history-1 what is a channel?"},
        {"role": "assistant", "content": "Echo: history-1 what is a channel?"},
        {"role": "user", "content": "history-2 and an event?"},
    ]
    body = request.body
    assert (body["model"], body["stream"], body["stream_options"]) == (MODEL, True, {"include_usage": True})
    assert (body["temperature"], body["max_tokens"]) == (0.25, 321)
    assert request.headers["authorization"] == f"Bearer {API_KEY}"

    messages = user.conversation(first["conversation_id"])["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "history-1 what is a channel?"), ("assistant", "Echo: history-1 what is a channel?"),
        ("user", "history-2 and an event?"), ("assistant", "Echo: history-2 and an event?")]


def test_deltas_usage_and_finish_reason_arrive_as_sent(user: Chime, upstream: OpenAIUpstream) -> None:
    tokens = ["Chunks ", "arrive ", "one ", "by ", "one", "."]
    upstream.when("wire-format", Reply(tokens=tokens, finish_reason="length"))
    channel = user.submit("wire-format please")["channel"]
    events = user.events(channel)

    assert events[0][1] == "meta" and events[0][2]["model"] == MODEL
    # One delta per upstream chunk: nothing is merged or re-cut on the way.
    assert [data["content"] for _, kind, data in events if kind == "delta"] == tokens
    usage = [data for _, kind, data in events if kind == "usage"]
    # The loopback upstream counts prompt words: the system prompt's five and the question's two.
    assert usage == [{"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}]
    assert only_terminal(events)[1:] == ("done", {"finish_reason": "length"})
    record = user.channel(channel)
    assert (record["status"], record["content"], record["usage"]) == ("done", "".join(tokens), usage[0])


def test_rate_limited_then_success_is_retried(user: Chime, upstream: OpenAIUpstream) -> None:
    upstream.when("retry-429", Reply.error(429, retry_after="0.05"), Reply.text("Second time lucky."))
    channel = user.submit("retry-429 now")["channel"]
    events = user.events(channel)
    assert only_terminal(events)[1] == "done"
    assert content_of(events) == "Second time lucky."
    requests = upstream.requests_for("retry-429")
    assert len(requests) == 2
    # Retry-After was honoured: the second attempt came no sooner than asked.
    assert requests[1].received_at - requests[0].received_at >= 0.05


# ---- failures ---------------------------------------------------------------

FAILURES: dict[str, tuple[Reply, str, int]] = {
    # marker: (reply, error code, attempts the upstream sees)
    "fail-500": (Reply.error(500), "model_error", 1 + RETRIES),
    "fail-503-overloaded": (Reply.error(503), "model_error", 1 + RETRIES),
    "fail-401": (Reply.error(401, f"Incorrect API key provided: {API_KEY}."), "bad_api_key", 1),
    "fail-403": (Reply.error(403, "Project not allowed"), "bad_api_key", 1),
    "fail-404": (Reply.error(404, "The model does not exist"), "model_not_found", 1),
    "fail-429-long": (Reply.error(429, retry_after="3600"), "rate_limited", 1),
    "fail-429-always": (Reply.error(429, retry_after="0"), "rate_limited", 1 + RETRIES),
    "fail-drop": (Reply.text("one two three four five six", drop_after=3), "model_unreachable", 1),
    "fail-stall": (Reply.text("one two three four five six", stall_after=2), "model_stalled", 1),
    "fail-keepalive-stall": (Reply.text("one two three four", stall_after=2, keepalive_s=0.05),
                             "model_stalled", 1),
    "fail-in-stream": (Reply.text("one two three four", error_after=2), "model_error", 1),
    # Slow or silent models: the stall limit bounds the wait for a complete event, retries included.
    "fail-trickle": (Reply.text("one two three four", stall_after=2, trickle_s=0.05), "model_stalled", 1),
    "fail-silent": (Reply(silent=True), "model_stalled", 1),
    "fail-giant-line": (Reply.giant_line(40 * 1024 * 1024, after=2), "model_error", 1),
}
PARTIAL = {"fail-drop": "one two three ", "fail-stall": "one two ", "fail-keepalive-stall": "one two ",
           "fail-in-stream": "one two ", "fail-trickle": "one two ", "fail-giant-line": "one two "}
STALLS = ["fail-stall", "fail-keepalive-stall", "fail-trickle", "fail-silent"]
# How much later than CHIME_MODEL_STALL_S a stalled upstream request may be closed on a busy machine.
STALL_SLACK_S = 1.5


def test_every_failure_ends_right_while_another_channel_keeps_streaming(
        chime: ServerProcess, upstream: OpenAIUpstream) -> None:
    healthy_tokens = [f"t{i} " for i in range(60)]
    upstream.when("healthy-long", Reply(tokens=healthy_tokens, token_delay_s=0.02))
    for marker, (reply, _, _) in FAILURES.items():
        upstream.when(marker, reply)
    users = {marker: Chime(chime.url) for marker in ["healthy-long", *FAILURES]}
    try:
        submitted = {marker: client.submit(f"{marker} go") for marker, client in users.items()}
        with ThreadPoolExecutor(len(users)) as pool:
            results = dict(zip(users, pool.map(
                lambda m: users[m].events(submitted[m]["channel"]), users), strict=True))

        healthy = results.pop("healthy-long")
        assert only_terminal(healthy)[1:] == ("done", {"finish_reason": "stop"})
        assert content_of(healthy) == "".join(healthy_tokens)
        for marker, events in results.items():
            reply, code, attempts = FAILURES[marker]
            _, kind, data = only_terminal(events)
            assert (kind, data["code"]) == ("error", code), (marker, data)
            assert API_KEY not in data["message"] and "Traceback" not in data["message"]
            assert data["message"].strip()
            assert len(upstream.requests_for(marker)) == attempts, marker
            assert content_of(events) == PARTIAL.get(marker, ""), marker
            check_conversation_keeps(users[marker], submitted[marker], PARTIAL.get(marker, ""), "error")
        for marker in STALLS:  # measured from the last complete event, or the request when there was none
            [request] = upstream.requests_for(marker)
            closed_at = wait_until(lambda: request.disconnected_at,  # noqa: B023  # called within this iteration
                                   5, f"{marker}: the upstream to see the close")
            waited_s = closed_at - (request.last_token_at or request.received_at)
            # (the answer's clock starts a moment before its request reaches the upstream)
            assert STALL_S - 0.1 <= waited_s < STALL_S + STALL_SLACK_S, (marker, waited_s)
        # The long answer was still streaming while the failures ended.
        [long_request] = upstream.requests_for("healthy-long")
        assert long_request.last_token_at is not None
        assert max(r.received_at for r in upstream.requests if r.reply.status != 200) < long_request.last_token_at
    finally:
        for client in users.values():
            client.close()


def check_conversation_keeps(user: Chime, submitted: dict[str, Any], content: str, status: str) -> None:
    """The conversation holds what the answer produced, marked with how it ended."""
    messages = user.conversation(submitted["conversation_id"])["messages"]
    answer = messages[-1]
    assert (answer["role"], answer["content"], answer["channel"]) == ("assistant", content, submitted["channel"])
    assert answer.get("status", status) == status


def test_unreachable_model_is_retried_then_reported(tmp_path: Path) -> None:
    from tests.support.server import free_port

    dead = OpenAIUpstream()  # never started: nothing listens on this port
    dead.port = free_port()
    with ServerProcess(tmp_path / "chime", model_env(dead)) as process:
        user = Chime(process.url)
        events = user.events(user.submit("anyone there?")["channel"])
        _, kind, data = only_terminal(events)
        assert (kind, data["code"]) == ("error", "model_unreachable")
        assert API_KEY not in data["message"]
        user.close()


# ---- cancel -----------------------------------------------------------------

SLOW_TOKENS = [f"w{i} " for i in range(400)]
SLOW = Reply(tokens=SLOW_TOKENS, token_delay_s=0.02)


def wait_for_tokens(request_of: Any, count: int) -> RecordedRequest:
    def started() -> RecordedRequest | None:
        requests = request_of()
        return requests[0] if requests and requests[0].tokens_sent >= count else None
    return wait_until(started, 10, f"the upstream to send {count} tokens")


def test_cancel_over_http_closes_the_upstream_stream(user: Chime, upstream: OpenAIUpstream) -> None:
    upstream.when("cancel-http", SLOW)
    submitted = user.submit("cancel-http please")
    request = wait_for_tokens(lambda: upstream.requests_for("cancel-http"), 5)

    asked_at = time.monotonic()
    assert user.http.post(f"/api/channels/{submitted['channel']}/cancel").status_code == 202
    disconnected_at = wait_until(lambda: request.disconnected_at, 5, "the upstream to see the connection close")
    print(f"\ncancel → upstream disconnect (HTTP cancel): {(disconnected_at - asked_at) * 1000:.1f} ms")

    assert not request.completed and request.tokens_sent < len(SLOW_TOKENS)
    events = user.events(submitted["channel"])
    assert only_terminal(events)[1:] == ("cancelled", {})
    kept = content_of(events)
    assert kept and kept.startswith("w0 w1 w2 w3 w4 ")
    check_conversation_keeps(user, submitted, kept, "cancelled")
    assert user.http.post(f"/api/channels/{submitted['channel']}/cancel").status_code == 409


def test_cancel_over_websocket_closes_the_upstream_stream(
        chime: ServerProcess, user: Chime, upstream: OpenAIUpstream) -> None:
    upstream.when("cancel-ws", SLOW)
    submitted = user.submit("cancel-ws please")
    url = f"{chime.ws_url}/api/channels/{submitted['channel']}/ws?access_token={user.token}"
    frames: list[dict[str, Any]] = []
    with connect(url, open_timeout=10, close_timeout=5) as ws:
        while sum(1 for f in frames if f["event"] == "delta") < 3:
            frames.append(json.loads(ws.recv(timeout=10)))
        request = upstream.requests_for("cancel-ws")[0]
        asked_at = time.monotonic()
        ws.send(json.dumps({"type": "cancel"}))
        while frames[-1]["event"] not in TERMINAL:
            frames.append(json.loads(ws.recv(timeout=10)))
        disconnected_at = wait_until(lambda: request.disconnected_at, 5, "the upstream to see the connection close")
        print(f"\ncancel → upstream disconnect (WebSocket cancel): "
              f"{(disconnected_at - asked_at) * 1000:.1f} ms")
    assert (frames[-1]["event"], frames[-1]["data"]) == ("cancelled", {})
    assert ws.close_code == 1000
    assert not request.completed


# ---- per-user limits ----------------------------------------------------------


def test_running_answers_per_user_are_limited(user: Chime, upstream: OpenAIUpstream) -> None:
    upstream.when("limit-running", SLOW)
    channels = [user.submit(f"limit-running {i}")["channel"] for i in range(2)]
    conversations_before = user.http.get("/api/conversations").json()["conversations"]

    refused = user.http.post("/api/chat", json={"message": "limit-running one too many"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert user.http.get("/api/conversations").json()["conversations"] == conversations_before
    assert len(upstream.requests_for("one too many")) == 0

    user.http.post(f"/api/channels/{channels[0]}/cancel")
    assert only_terminal(user.events(channels[0]))[1] == "cancelled"
    # A slot is free again.
    third = user.submit("limit-running after a cancel")["channel"]
    for channel in (channels[1], third):
        user.http.post(f"/api/channels/{channel}/cancel")


def test_submissions_per_minute_are_limited(user: Chime) -> None:
    for i in range(4):
        assert only_terminal(user.events(user.submit(f"per-minute {i}")["channel"]))[1] == "done"
    refused = user.http.post("/api/chat", json={"message": "per-minute one too many"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert len(user.http.get("/api/conversations").json()["conversations"]) == 4
    # The limit is per user: someone else may still ask.
    other = Chime(str(user.http.base_url))
    assert only_terminal(other.events(other.submit("per-minute from someone else")["channel"]))[1] == "done"
    other.close()


def test_concurrent_submissions_cannot_slip_past_the_running_limit(user: Chime, upstream: OpenAIUpstream) -> None:
    upstream.when("burst", SLOW)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: user.http.post("/api/chat", json={"message": f"burst {i}"}), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 201, 429, 429, 429, 429]  # CHIME_MAX_RUNNING_PER_USER=2
    for response in responses:
        if response.status_code == 201:
            user.http.post(f"/api/channels/{response.json()['channel']}/cancel")
