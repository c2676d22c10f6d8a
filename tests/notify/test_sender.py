"""WebPushSender (pywebpush) against the loopback push service that verifies VAPID and decrypts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from channels.store import PushSubscription
from notify.payload import build_payload, topic_for
from notify.sender import SendResult, WebPushSender
from notify.vapid import VapidKeys
from tests.support.push_service import Answer, BrowserSubscription, PushService

SUBJECT = "mailto:ops@chime.example"
TTL_S = 7_200


def stored(subscription: BrowserSubscription, endpoint: str | None = None) -> PushSubscription:
    return PushSubscription("user", endpoint or subscription.endpoint, subscription.p256dh, subscription.auth,
                            "2026-01-01T00:00:00.000Z")


@pytest.fixture
async def make_sender(vapid_keys: VapidKeys) -> AsyncIterator[Callable[..., WebPushSender]]:
    senders: list[WebPushSender] = []

    def make(allow_private: bool = True, timeout_s: float = 5.0) -> WebPushSender:
        sender = WebPushSender(vapid_keys, SUBJECT, allow_private=allow_private, timeout_s=timeout_s)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        await sender.close()


async def test_a_push_is_signed_encrypted_and_carries_ttl_urgency_topic(
        push_service: PushService, vapid_keys: VapidKeys, make_sender) -> None:
    subscription = push_service.subscribe(vapid_keys.public_key)
    payload = build_payload("chan1", "done", "Hello, world", "A title")
    result = await make_sender().send(stored(subscription), payload, topic=topic_for("chan1"), ttl_s=TTL_S)
    assert result == SendResult(status=201)
    assert push_service.errors == []
    [delivery] = push_service.deliveries_for(subscription)
    assert delivery.payload == orjson.loads(payload)
    assert delivery.ttl == TTL_S
    assert delivery.urgency == "normal"
    assert delivery.topic == topic_for("chan1")
    assert delivery.content_encoding == "aes128gcm"
    assert delivery.claims["sub"] == SUBJECT and delivery.claims["aud"] == push_service.origin


async def test_every_push_gets_its_own_audience(vapid_keys: VapidKeys, make_sender) -> None:
    """pywebpush fills ``aud`` into the claims it is given: a shared dict would sign for the first service."""
    sender = make_sender()
    with PushService() as first, PushService() as second:
        for service in (first, second, first):
            subscription = service.subscribe(vapid_keys.public_key)
            result = await sender.send(stored(subscription), b'{"a": 1}', topic="t", ttl_s=TTL_S)
            assert result.delivered, result
        assert first.errors == [] and second.errors == []
        assert len(first.deliveries) == 2 and len(second.deliveries) == 1


async def test_a_push_signed_with_another_key_is_refused_by_the_service(
        push_service: PushService, vapid_keys: VapidKeys, make_sender, tmp_path) -> None:
    """The service checks ``k``: proves the loopback service would catch a wrong key."""
    other = VapidKeys.load_or_create(tmp_path / "other")
    subscription = push_service.subscribe(other.public_key)
    result = await make_sender().send(stored(subscription), b"{}", topic="t", ttl_s=TTL_S)
    assert result.status == 403
    assert push_service.deliveries == [] and len(push_service.errors) == 1


@pytest.mark.parametrize("status", [404, 410, 400, 413, 500, 503])
async def test_the_status_of_a_refusal_is_reported(
        push_service: PushService, vapid_keys: VapidKeys, make_sender, status: int) -> None:
    subscription = push_service.subscribe(vapid_keys.public_key)
    push_service.answer(subscription, Answer(status))
    result = await make_sender().send(stored(subscription), b"{}", topic="t", ttl_s=TTL_S)
    assert result.status == status and not result.delivered and not result.blocked


async def test_429_reports_retry_after(push_service: PushService, vapid_keys: VapidKeys, make_sender) -> None:
    subscription = push_service.subscribe(vapid_keys.public_key)
    push_service.answer(subscription, Answer(429, {"Retry-After": "7"}))
    result = await make_sender().send(stored(subscription), b"{}", topic="t", ttl_s=TTL_S)
    assert result == SendResult(status=429, retry_after_s=7.0)


async def test_a_redirect_is_not_followed(push_service: PushService, vapid_keys: VapidKeys, make_sender) -> None:
    subscription = push_service.subscribe(vapid_keys.public_key)
    target = push_service.subscribe(vapid_keys.public_key)
    push_service.answer(subscription, Answer(307, {"Location": target.endpoint}))
    result = await make_sender().send(stored(subscription), b"{}", topic="t", ttl_s=TTL_S)
    assert result.status == 307
    assert push_service.attempts_for(target) == []


async def test_a_refused_connection_is_a_network_failure(vapid_keys: VapidKeys, make_sender) -> None:
    with PushService() as service:
        subscription = service.subscribe(vapid_keys.public_key)
    # The service is closed: its port refuses connections now.
    result = await make_sender().send(stored(subscription), b"{}", topic="t", ttl_s=TTL_S)
    assert result.status is None and not result.blocked and result.error


async def test_a_service_that_never_answers_times_out(
        push_service: PushService, vapid_keys: VapidKeys, make_sender) -> None:
    subscription = push_service.subscribe(vapid_keys.public_key)
    push_service.hang(subscription)
    result = await asyncio.wait_for(
        make_sender(timeout_s=0.3).send(stored(subscription), b"{}", topic="t", ttl_s=TTL_S), 10)
    assert result.status is None and result.error
    assert push_service.hanging == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1",
                                  "169.254.169.254"])
async def test_without_allow_private_no_private_address_is_called(
        push_service: PushService, vapid_keys: VapidKeys, make_sender, host: str) -> None:
    """Checked again at send time: a stored endpoint (or its name's answer) that is private is never called."""
    subscription = push_service.subscribe(vapid_keys.public_key)
    port = push_service.origin.rsplit(":", 1)[1]
    endpoint = subscription.endpoint.replace(f"http://127.0.0.1:{port}", f"https://{host}:{port}")
    result = await make_sender(allow_private=False).send(stored(subscription, endpoint), b"{}", topic="t",
                                                         ttl_s=TTL_S)
    assert result.blocked and result.status is None
    assert push_service.attempts == [] and push_service.errors == []
