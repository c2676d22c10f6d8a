"""The completion hook and its background pushes, with a recording sender and the real SQLiteStore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from channels.generation import Completion
from channels.sqlite import SQLiteStore
from channels.store import PushSubscription
from metrics import Metrics
from notify.notifier import RETRY_METRIC, SENT_METRIC, SKIPPED_METRIC, Notifier, RetryPolicy, origin_of
from notify.payload import topic_for
from notify.sender import SendResult
from tests.support.waiting import async_wait_until

USER = "user-1"
CHANNEL = "channel-1"
ANSWER = "The answer, which is long enough to be cut. " * 5
TTL_S = 7_200
FAST_RETRY = RetryPolicy(attempts=3, base_s=0.01, max_delay_s=0.2)


class RecordingSender:
    """Answers each endpoint from a script (then 201), records every send; ``gate`` holds sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict, str, int]] = []
        self.scripts: dict[str, list[SendResult]] = {}
        self.gate: asyncio.Event | None = None
        self.cancelled = 0
        self.closed = False

    async def send(self, subscription: PushSubscription, payload: bytes, *, topic: str, ttl_s: int) -> SendResult:
        self.sent.append((subscription.endpoint, orjson.loads(payload), topic, ttl_s))
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        script = self.scripts.get(subscription.endpoint)
        return script.pop(0) if script else SendResult(status=201)

    def sends_to(self, endpoint: str) -> int:
        return sum(1 for sent in self.sent if sent[0] == endpoint)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "chime.sqlite3")
    await store.open()
    await store.create_user(USER, "hash")
    await store.create_conversation("conv-1", USER, "What is Chime?")
    await store.create_channel(CHANNEL, USER, "conv-1", "demo")
    await store.append(CHANNEL, "delta", {"content": ANSWER[:100]})
    await store.append(CHANNEL, "delta", {"content": ANSWER[100:]})
    await store.append(CHANNEL, "done", {"finish_reason": "stop"})
    yield store
    await store.close()


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
async def notifier(store: SQLiteStore, sender: RecordingSender) -> AsyncIterator[Notifier]:
    notifier = Notifier(store, sender, Metrics(), ttl_s=TTL_S, retry=FAST_RETRY)
    yield notifier
    await notifier.stop(0)


def ended(watched: bool = False, status: str = "done") -> Completion:
    return Completion(CHANNEL, USER, status, {"finish_reason": "stop"}, watched)


async def subscribe(store: SQLiteStore, endpoint: str) -> None:
    await store.save_subscription(USER, endpoint, "p256dh", "auth")


async def settled(notifier: Notifier) -> None:
    await async_wait_until(lambda: notifier.pending == 0, 10, "the pushes to settle")


def sent(notifier: Notifier, outcome: str) -> float:
    return notifier.metrics.value(SENT_METRIC, outcome=outcome)


async def test_a_watched_ending_sends_nothing(store, sender, notifier) -> None:
    await subscribe(store, "https://push.example/a")
    notifier.on_completion(ended(watched=True))
    assert notifier.pending == 0
    assert sender.sent == []
    assert notifier.metrics.value(SKIPPED_METRIC, reason="watched") == 1


async def test_an_unwatched_ending_pushes_once_to_every_subscription(store, sender, notifier) -> None:
    await subscribe(store, "https://push.example/a")
    await subscribe(store, "https://push.other/b")
    notifier.on_completion(ended())
    await settled(notifier)
    assert sorted(s[0] for s in sender.sent) == ["https://push.example/a", "https://push.other/b"]
    for _, payload, topic, ttl_s in sender.sent:
        assert payload == {"title": "Your answer is ready: What is Chime?", "body": ANSWER[:120],
                           "url": f"/c/{CHANNEL}", "channel": CHANNEL, "status": "done"}
        assert topic == topic_for(CHANNEL) and ttl_s == TTL_S
    assert sent(notifier, "delivered") == 2


async def test_the_hook_returns_before_anything_is_sent(store, sender, notifier) -> None:
    await subscribe(store, "https://push.example/a")
    sender.gate = asyncio.Event()
    assert notifier.on_completion(ended()) is None  # not a coroutine: nothing for finish() to await
    assert notifier.pending == 1
    await async_wait_until(lambda: sender.sent, 10, "the send to start")
    sender.gate.set()
    await settled(notifier)
    assert sent(notifier, "delivered") == 1


async def test_without_subscriptions_nothing_is_sent(sender, notifier) -> None:
    notifier.on_completion(ended())
    await settled(notifier)
    assert sender.sent == []
    assert notifier.metrics.value(SKIPPED_METRIC, reason="no_subscriptions") == 1


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_deletes_that_subscription_only_and_is_not_retried(store, sender, notifier, status) -> None:
    await subscribe(store, "https://push.example/gone")
    await subscribe(store, "https://push.example/kept")
    sender.scripts["https://push.example/gone"] = [SendResult(status=status)]
    notifier.on_completion(ended())
    await settled(notifier)
    assert sender.sends_to("https://push.example/gone") == 1
    assert [s.endpoint for s in await store.subscriptions_for(USER)] == ["https://push.example/kept"]
    assert sent(notifier, "gone") == 1 and sent(notifier, "delivered") == 1


async def test_429_is_retried_after_retry_after(store, sender, notifier) -> None:
    await subscribe(store, "https://push.example/a")
    sender.scripts["https://push.example/a"] = [SendResult(status=429, retry_after_s=0.05)]
    notifier.on_completion(ended())
    await settled(notifier)
    assert sender.sends_to("https://push.example/a") == 2
    assert sent(notifier, "delivered") == 1
    assert notifier.metrics.value(RETRY_METRIC, cause="rate_limited") == 1


@pytest.mark.parametrize("failure, cause", [(SendResult(status=503), "server_error"),
                                            (SendResult(status=500), "server_error"),
                                            (SendResult(error="ClientConnectorError"), "network")])
async def test_retries_are_bounded(store, sender, notifier, failure, cause) -> None:
    await subscribe(store, "https://push.example/a")
    sender.scripts["https://push.example/a"] = [failure] * 10
    notifier.on_completion(ended())
    await settled(notifier)
    assert sender.sends_to("https://push.example/a") == FAST_RETRY.attempts
    assert sent(notifier, "failed") == 1
    assert notifier.metrics.value(RETRY_METRIC, cause=cause) == FAST_RETRY.attempts - 1
    assert len(await store.subscriptions_for(USER)) == 1  # kept: it may work next time


@pytest.mark.parametrize("result, outcome", [(SendResult(status=400), "rejected"),
                                             (SendResult(status=413), "rejected"),
                                             (SendResult(status=307), "rejected"),
                                             (SendResult(blocked=True, error="private"), "blocked")])
async def test_other_answers_are_given_up_at_once(store, sender, notifier, result, outcome) -> None:
    await subscribe(store, "https://push.example/a")
    sender.scripts["https://push.example/a"] = [result]
    notifier.on_completion(ended())
    await settled(notifier)
    assert sender.sends_to("https://push.example/a") == 1
    assert sent(notifier, outcome) == 1


async def test_stop_cancels_pushes_still_waiting_and_closes_the_sender(store, sender, notifier) -> None:
    await subscribe(store, "https://push.example/a")
    sender.gate = asyncio.Event()  # never set: a push service that never answers
    notifier.on_completion(ended())
    await async_wait_until(lambda: sender.sent, 10, "the send to start")
    await asyncio.wait_for(notifier.stop(grace_s=0.05), 10)
    assert sender.cancelled == 1 and notifier.pending == 0 and sender.closed


async def test_a_failing_store_is_logged_not_raised(store, sender, notifier, caplog) -> None:
    await store.close()
    notifier.on_completion(ended())
    await settled(notifier)
    assert sender.sent == []
    assert "pushing the end of" in caplog.text
    await store.open()


def test_the_delay_honours_retry_after_and_is_capped() -> None:
    policy = RetryPolicy(attempts=5, base_s=1.0, max_delay_s=60.0)
    assert policy.delay_s(0, 7.0) == 7.0
    assert policy.delay_s(0, 3600.0) == 60.0
    assert 1.0 <= policy.delay_s(0, None) <= 1.5
    assert 4.0 <= policy.delay_s(2, None) <= 6.0
    assert policy.delay_s(20, None) == 60.0


def test_logs_name_the_origin_only() -> None:
    assert origin_of("https://fcm.googleapis.com/fcm/send/SECRET-TOKEN") == "https://fcm.googleapis.com"
    assert origin_of("http://127.0.0.1:8080/push/abc") == "http://127.0.0.1:8080"
    assert "SECRET" not in origin_of("not a url SECRET")


async def test_outcomes_are_logged_without_the_endpoints_secret(store, sender, notifier, caplog) -> None:
    caplog.set_level("INFO", logger="chime.push")
    await subscribe(store, "https://push.example/SECRET-PATH?token=SECRET")
    sender.scripts["https://push.example/SECRET-PATH?token=SECRET"] = [SendResult(status=503), SendResult(status=410)]
    notifier.on_completion(ended())
    await settled(notifier)
    assert "https://push.example" in caplog.text and "gone" in caplog.text
    assert "SECRET" not in caplog.text
