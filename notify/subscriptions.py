"""Push subscriptions as browsers send them: ``PushSubscription.toJSON()``, checked.

``{"endpoint": url, "keys": {"p256dh": b64url, "auth": b64url}, "expirationTime": ...}``:
``p256dh`` must be an uncompressed P-256 point that lies on the curve (65
bytes), ``auth`` a 16-byte secret, both base64url (padding optional, as
browsers leave it out). Anything else is refused before it is stored, so a
send never fails on a key that could have been caught here.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from notify.addresses import Endpoint, parse_endpoint

P256DH_BYTES = 65
AUTH_SECRET_BYTES = 16
UNCOMPRESSED_POINT_PREFIX = 0x04

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class InvalidKeys(ValueError):
    """The subscription's keys cannot be used; the message says which and why."""


@dataclass(frozen=True)
class NewSubscription:
    endpoint: Endpoint
    p256dh: str
    auth: str


def parse_subscription(body: dict[str, Any], *, allow_private: bool) -> NewSubscription:
    """Check a ``PushSubscription.toJSON()`` body; raises ``RefusedEndpoint`` or ``InvalidKeys``.

    The keys are returned unpadded base64url, the form pywebpush and browsers use.
    """
    endpoint = parse_endpoint(body.get("endpoint"), allow_private=allow_private)
    keys = body.get("keys")
    if not isinstance(keys, dict):
        raise InvalidKeys("keys must be an object with p256dh and auth.")
    p256dh = _p256dh(keys.get("p256dh"))
    auth = _auth(keys.get("auth"))
    return NewSubscription(endpoint, p256dh, auth)


def _p256dh(raw: object) -> str:
    point = decode_base64url(raw, "keys.p256dh")
    if len(point) != P256DH_BYTES or point[0] != UNCOMPRESSED_POINT_PREFIX:
        raise InvalidKeys("keys.p256dh must be an uncompressed P-256 public key (65 bytes).")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise InvalidKeys("keys.p256dh is not a point on the P-256 curve.") from None
    return encode_base64url(point)


def _auth(raw: object) -> str:
    secret = decode_base64url(raw, "keys.auth")
    if len(secret) != AUTH_SECRET_BYTES:
        raise InvalidKeys(f"keys.auth must be {AUTH_SECRET_BYTES} bytes.")
    return encode_base64url(secret)


def decode_base64url(raw: object, name: str) -> bytes:
    """Strict base64url: the URL-safe alphabet, padding optional and only where it fits."""
    if not isinstance(raw, str) or not raw:
        raise InvalidKeys(f"{name} must be a base64url string.")
    if _BASE64URL.fullmatch(raw) is None:
        raise InvalidKeys(f"{name} is not base64url.")
    unpadded = raw.rstrip("=")
    if len(unpadded) % 4 == 1 or (raw != unpadded and len(raw) % 4 != 0):
        raise InvalidKeys(f"{name} is not base64url.")
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise InvalidKeys(f"{name} is not base64url.") from None


def encode_base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
