"""Crash recovery and graceful shutdown of the real server process mid-answer.

kill -9 mid-answer, then a restart: the answer ends ``interrupted`` and every
event a client had already seen is still served, unchanged. SIGTERM mid-answer:
the answer gets the grace period, then ends ``interrupted`` — or ``done`` when
it finishes within it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_models import Chime, Event, model_env, only_terminal
from tests.support.openai_upstream import OpenAIUpstream, Reply
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

GRACE_S = 0.5
ENDLESS = Reply(tokens=[f"w{i} " for i in range(3000)], token_delay_s=0.02)


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as server:
        server.when("endless", ENDLESS)
        yield server


@pytest.fixture
def chime(upstream: OpenAIUpstream, tmp_path: Path) -> Iterator[ServerProcess]:
    env = model_env(upstream, CHIME_SHUTDOWN_GRACE_S=str(GRACE_S))
    with ServerProcess(tmp_path / "chime", env) as process:
        yield process


def read_until(user: Chime, channel: str, deltas: int) -> list[Event]:
    """Read the live SSE stream until ``deltas`` delta events have arrived, then leave."""
    seen: list[Event] = []
    for event in user.sse(channel):
        seen.append(event)
        if sum(1 for e in seen if e[1] == "delta") >= deltas:
            return seen
    raise AssertionError(f"the stream ended early: {seen}")


def test_kill_9_mid_answer_then_restart_gives_interrupted_and_keeps_every_seen_event(
        chime: ServerProcess, upstream: OpenAIUpstream) -> None:
    user = Chime(chime.url)
    submitted = user.submit("endless story, please")
    seen = read_until(user, submitted["channel"], 10)

    chime.kill()
    [request] = upstream.requests_for("endless")
    wait_until(lambda: request.disconnected_at, 5, "the upstream to see the dead process go")
    chime.start()

    # Same client, same token: users are durable too.
    replayed = user.events(submitted["channel"])
    assert replayed[:len(seen)] == seen  # everything a client saw survived the crash, unchanged
    _, kind, data = only_terminal(replayed)
    assert (kind, data) == ("interrupted", {"reason": "server_restart"})
    assert replayed[-1][0] == replayed[-2][0] + 1

    # Resuming from the last event seen gives exactly the rest.
    rest = user.events(submitted["channel"], after=seen[-1][0])
    assert rest == replayed[len(seen):]
    record = user.channel(submitted["channel"])
    assert record["status"] == "interrupted" and record["finished_at"]
    answer = user.conversation(submitted["conversation_id"])["messages"][-1]
    assert answer["content"] == record["content"] and answer["content"].startswith("w0 w1 ")
    # The restart did not ask the model again.
    assert len(upstream.requests_for("endless")) == 1
    user.close()


def test_sigterm_mid_answer_gives_interrupted_after_the_grace_period(
        chime: ServerProcess, upstream: OpenAIUpstream) -> None:
    user = Chime(chime.url)
    submitted = user.submit("endless story, please")
    events: list[Event] = []
    arrivals: list[float] = []

    def follow() -> None:
        for event in user.sse(submitted["channel"]):
            events.append(event)
            arrivals.append(time.monotonic())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_until(lambda: sum(1 for e in events if e[1] == "delta") >= 3, 10, "the answer to start")

    signalled_at = time.monotonic()
    assert chime.stop() == 0
    reader.join(10)
    assert not reader.is_alive(), "the SSE stream did not end on shutdown"

    _, kind, data = only_terminal(events)
    assert (kind, data) == ("interrupted", {"reason": "server_shutdown"})
    # The answer kept streaming through the grace period before it was cut.
    interrupted_at = arrivals[-1]
    assert interrupted_at - signalled_at >= GRACE_S
    assert any(at > signalled_at for at, e in zip(arrivals, events, strict=True) if e[1] == "delta")
    [request] = upstream.requests_for("endless")
    assert request.disconnected_at is not None and request.disconnected_at - signalled_at >= GRACE_S
    print(f"\nSIGTERM → interrupted: {(interrupted_at - signalled_at) * 1000:.0f} ms "
          f"(grace {GRACE_S * 1000:.0f} ms)")

    chime.start()  # the restart finds nothing left running: the terminal event stays the only one
    assert user.events(submitted["channel"]) == events
    assert user.channel(submitted["channel"])["status"] == "interrupted"
    user.close()


def test_sigterm_lets_an_answer_that_ends_within_the_grace_period_finish(
        upstream: OpenAIUpstream, tmp_path: Path) -> None:
    upstream.when("short", Reply(tokens=[f"s{i} " for i in range(40)], token_delay_s=0.02))
    env = model_env(upstream, CHIME_SHUTDOWN_GRACE_S="10")
    with ServerProcess(tmp_path / "chime", env) as process:
        user = Chime(process.url)
        submitted = user.submit("short answer, please")
        wait_until(lambda: upstream.requests_for("short"), 10, "the model request")
        assert process.stop() == 0
        process.start()
        events = user.events(submitted["channel"])
        assert only_terminal(events)[1:] == ("done", {"finish_reason": "stop"})
        assert sum(1 for e in events if e[1] == "delta") == 40
        user.close()
