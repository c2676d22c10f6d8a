"""A loopback Web Push service that does what a real one does with a push.

It checks ``Authorization: vapid t=<jwt>, k=<key>`` (RFC 8292): the key is the
application server key the subscription was made with, the JWT is ES256-signed
by it, ``aud`` is this service's origin, ``exp`` is in the future and within
24 hours, ``sub`` is a ``mailto:`` or ``https:`` URI. It then decrypts the
``aes128gcm`` body (RFC 8291) with the subscription's private key and auth
secret, like the browser would, and records the payload with its ``TTL``,
``Urgency`` and ``Topic``. A push that fails any check is answered 400/401/403
and recorded in ``errors``: tests assert that list stays empty.

Subscriptions are made here the way a browser makes them (a fresh P-256 key
pair and a 16-byte auth secret). Answers can be scripted per subscription
(410, 429 with ``Retry-After`` …), and a subscription can be made to hang:
the service accepts the request and never answers until it is closed.

It runs in a thread, so sync and async tests use it alike.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

MAX_BODY_BYTES = 4_096
MAX_CLAIM_LIFETIME_S = 24 * 3600
HANG_LIMIT_S = 60.0  # a hanging request is released at close, or after this at the latest
SHUTDOWN_POLL_S = 0.02  # how often serve_forever looks for close(): it bounds each test's teardown

_AUTH_PARAM = re.compile(r"([a-zA-Z]+)\s*=\s*([A-Za-z0-9_\-.=]+)")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class BrowserSubscription:
    """What ``pushManager.subscribe`` makes: an endpoint, a P-256 key pair and an auth secret."""

    id: str
    endpoint: str
    application_server_key: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    auth_secret: bytes = field(repr=False)

    @property
    def p256dh(self) -> str:
        return b64url(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    @property
    def auth(self) -> str:
        return b64url(self.auth_secret)

    def to_json(self) -> dict[str, Any]:
        """``PushSubscription.toJSON()``."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass(frozen=True)
class Attempt:
    """A push request that passed every check, and what it was answered."""

    subscription_id: str
    at: float
    status: int


@dataclass(frozen=True)
class Delivery:
    subscription_id: str
    at: float
    payload: dict[str, Any]
    ttl: int
    urgency: str | None
    topic: str | None
    content_encoding: str
    body_bytes: int
    claims: dict[str, Any]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class PushService:
    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.push_service = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,),
                                        name="push-service", daemon=True)
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._subscriptions: dict[str, BrowserSubscription] = {}
        self._scripts: dict[str, list[Answer]] = {}
        self._hanging_ids: set[str] = set()
        self.attempts: list[Attempt] = []
        self.deliveries: list[Delivery] = []
        self.errors: list[str] = []
        self.hanging = 0

    # ---- life ------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> PushService:
        self._thread.start()
        return self

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> PushService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what tests set up -------------------------------------------------

    def subscribe(self, application_server_key: str) -> BrowserSubscription:
        """A new subscription for the server whose VAPID public key is ``application_server_key``."""
        subscription_id = secrets.token_urlsafe(16)
        subscription = BrowserSubscription(
            subscription_id, f"{self.origin}/push/{subscription_id}", application_server_key,
            ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        with self._lock:
            self._subscriptions[subscription_id] = subscription
        return subscription

    def answer(self, subscription: BrowserSubscription, *answers: Answer) -> None:
        """Answer the next pushes to ``subscription`` with these, in order; then 201 again."""
        with self._lock:
            self._scripts.setdefault(subscription.id, []).extend(answers)

    def hang(self, subscription: BrowserSubscription) -> None:
        """Accept pushes to ``subscription`` and never answer them (until close)."""
        with self._lock:
            self._hanging_ids.add(subscription.id)

    # ---- what tests read ---------------------------------------------------

    def attempts_for(self, subscription: BrowserSubscription) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.subscription_id == subscription.id]

    def deliveries_for(self, subscription: BrowserSubscription) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.subscription_id == subscription.id]

    # ---- handling a push ---------------------------------------------------

    def handle(self, path: str, headers: Any, body: bytes) -> Answer:
        match = re.fullmatch(r"/push/([A-Za-z0-9_-]+)", path)
        with self._lock:
            subscription = self._subscriptions.get(match.group(1)) if match else None
        if subscription is None:
            return Answer(404)
        try:
            claims = self._check_vapid(subscription, headers.get("Authorization", ""))
            delivery = self._decrypt(subscription, headers, body, claims)
        except _Refused as refused:
            with self._lock:
                self.errors.append(f"{refused.status}: {refused}")
            return Answer(refused.status)
        if subscription.id in self._hanging_ids:
            self._hold()
            return Answer(201)
        with self._lock:
            script = self._scripts.get(subscription.id)
            answer = script.pop(0) if script else Answer(201, {"Location": f"{self.origin}/m/{secrets.token_hex(8)}"})
            self.attempts.append(Attempt(subscription.id, time.monotonic(), answer.status))
            if 200 <= answer.status < 300:
                self.deliveries.append(delivery)
        return answer

    def _hold(self) -> None:
        with self._lock:
            self.hanging += 1
        self._release.wait(HANG_LIMIT_S)

    def _check_vapid(self, subscription: BrowserSubscription, authorization: str) -> dict[str, Any]:
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise _Refused(401, f"Authorization is not 'vapid t=…, k=…': {authorization[:40]!r}")
        values = dict(_AUTH_PARAM.findall(params))
        token, key = values.get("t"), values.get("k")
        if not token or not key:
            raise _Refused(401, "Authorization lacks t or k")
        if key != subscription.application_server_key:
            raise _Refused(403, "k is not the application server key the subscription was made with")
        claims = _verify_jwt(token, key)
        now = time.time()
        if claims.get("aud") != self.origin:
            raise _Refused(403, f"aud {claims.get('aud')!r} is not {self.origin!r}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or not now < exp <= now + MAX_CLAIM_LIFETIME_S:
            raise _Refused(403, f"exp {exp!r} is not within the next 24 hours")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
            raise _Refused(403, f"sub {sub!r} is not a mailto: or https: URI")
        return claims

    def _decrypt(self, subscription: BrowserSubscription, headers: Any, body: bytes,
                 claims: dict[str, Any]) -> Delivery:
        encoding = headers.get("Content-Encoding", "")
        if encoding != "aes128gcm":
            raise _Refused(400, f"Content-Encoding {encoding!r} is not aes128gcm")
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, f"body of {len(body)} bytes is over {MAX_BODY_BYTES}")
        ttl = headers.get("TTL")
        if ttl is None or not ttl.isdigit():
            raise _Refused(400, f"TTL {ttl!r} is not a number of seconds")
        try:
            plaintext = http_ece.decrypt(body, private_key=subscription.private_key,
                                         auth_secret=subscription.auth_secret, version="aes128gcm")
            payload = json.loads(plaintext)
        except Exception as exc:  # any failure to decrypt is the sender's bug
            raise _Refused(400, f"the body does not decrypt to JSON: {exc!r}") from None
        return Delivery(subscription.id, time.monotonic(), payload, int(ttl), headers.get("Urgency"),
                        headers.get("Topic"), encoding, len(body), claims)


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _verify_jwt(token: str, key: str) -> dict[str, Any]:
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = json.loads(unb64url(header_b64))
        claims = json.loads(unb64url(claims_b64))
        signature = unb64url(signature_b64)
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    except ValueError as exc:
        raise _Refused(401, f"malformed VAPID token or key: {exc}") from None
    if header.get("alg") != "ES256" or len(signature) != 64:
        raise _Refused(401, f"VAPID token is not ES256: {header}")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _Refused(401, "the VAPID signature does not verify") from None
    return claims


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.server.push_service.handle(self.path, self.headers, body)  # type: ignore[attr-defined]
        try:
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass  # the sender gave up waiting

    def log_message(self, format: str, *args: Any) -> None:
        pass
