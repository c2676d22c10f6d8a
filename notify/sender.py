"""Sending one push: VAPID-signed, ``aes128gcm``-encrypted, through pywebpush's async API.

``PushSender`` is the seam: ``WebPushSender`` talks to real push services
(tests run it against a loopback one that checks VAPID and decrypts), and
unit tests use a recording fake. A sender never raises for what a push
service or the network does; it returns a ``SendResult`` that the notifier
turns into retry, delete or give up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp.resolver import ThreadedResolver
from py_vapid import VapidException
from pywebpush import WebPushException, webpush_async

from channels.store import PushSubscription
from notify.addresses import BlockedAddress, GuardedResolver, RefusedEndpoint, parse_endpoint
from notify.vapid import VapidKeys
from retry_after import parse_retry_after

log = logging.getLogger("chime.push")

URGENCY = "normal"
# RFC 8292 allows up to 24 hours; a shorter claim limits what a leaked header is worth.
VAPID_CLAIM_LIFETIME_S = 12 * 3600
MAX_CONNECTIONS = 32
MAX_CONNECTIONS_PER_HOST = 8


@dataclass(frozen=True)
class SendResult:
    """What came of one attempt: an HTTP status, or none (network), or a refused address."""

    status: int | None = None
    retry_after_s: float | None = None
    blocked: bool = False
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class PushSender(Protocol):
    async def send(self, subscription: PushSubscription, payload: bytes, *, topic: str,
                   ttl_s: int) -> SendResult: ...
    async def close(self) -> None: ...


class WebPushSender:
    """Posts through one aiohttp session; names resolve through ``GuardedResolver`` unless private is allowed."""

    def __init__(self, keys: VapidKeys, subject: str, *, allow_private: bool, timeout_s: float):
        self.keys = keys
        self.subject = subject
        self.allow_private = allow_private
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        resolver = ThreadedResolver() if allow_private else GuardedResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, limit=MAX_CONNECTIONS,
                                         limit_per_host=MAX_CONNECTIONS_PER_HOST, use_dns_cache=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, trust_env=False)

    async def send(self, subscription: PushSubscription, payload: bytes, *, topic: str,
                   ttl_s: int) -> SendResult:
        try:
            endpoint = parse_endpoint(subscription.endpoint, allow_private=self.allow_private)
        except RefusedEndpoint as exc:
            return SendResult(blocked=True, error=str(exc))
        claims = {"sub": self.subject, "aud": endpoint.origin,
                  "exp": int(time.time()) + VAPID_CLAIM_LIFETIME_S}  # fresh: webpush_async mutates it
        try:
            response = await webpush_async(
                {"endpoint": subscription.endpoint, "keys": {"p256dh": subscription.p256dh,
                                                            "auth": subscription.auth}},
                data=payload,  # bytes are sent as they are
                vapid_private_key=self.keys.signer, vapid_claims=claims,
                content_encoding="aes128gcm", ttl=ttl_s, timeout=self.timeout,
                headers={"Urgency": URGENCY, "Topic": topic},
                aiohttp_session=_WithoutRedirects(self._session))
        except WebPushException as exc:
            return _refused(exc)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddress):
                return SendResult(blocked=True, error=str(exc.os_error))
            return SendResult(error=type(exc).__name__)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return SendResult(error=type(exc).__name__)
        except VapidException as exc:  # e.g. an IPv6-literal origin, which py_vapid cannot sign for
            return SendResult(blocked=True, error=f"cannot sign for this endpoint: {exc}")
        return SendResult(status=response.status)

    async def close(self) -> None:
        await self._session.close()


def _refused(exc: WebPushException) -> SendResult:
    if exc.status_code is None:
        return SendResult(error=exc.message)
    return SendResult(status=exc.status_code, retry_after_s=parse_retry_after(exc.retry_after))


class _WithoutRedirects:
    """The session as pywebpush uses it (``post`` only), never following a redirect.

    Push services answer, they do not redirect; a redirect could point at a
    private address that the endpoint check never saw.
    """

    def __init__(self, session: aiohttp.ClientSession):
        self._session = session

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._session.post(url, allow_redirects=False, **kwargs)
