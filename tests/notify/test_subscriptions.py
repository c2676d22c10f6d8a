"""Checking ``PushSubscription.toJSON()`` bodies: every kind of malformed key is refused."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from notify.addresses import RefusedEndpoint
from notify.subscriptions import InvalidKeys, decode_base64url, parse_subscription

ENDPOINT = "https://93.184.215.14/push/abc"


def b64url(data: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if pad else text.rstrip("=")


def browser_keys() -> tuple[bytes, bytes]:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return point, os.urandom(16)


def off_curve_point() -> bytes:
    point = bytearray(browser_keys()[0])
    point[-1] ^= 1  # y no longer satisfies the curve equation
    return bytes(point)


def compressed_point() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def body(p256dh: object, auth: object, endpoint: object = ENDPOINT) -> dict:
    return {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": p256dh, "auth": auth}}


# Every kind of malformed key a client could send, by name (the route tests reuse it).
POINT, AUTH = browser_keys()
MALFORMED_KEYS = {
    "p256dh missing": {"auth": b64url(AUTH)},
    "auth missing": {"p256dh": b64url(POINT)},
    "p256dh not a string": {"p256dh": 12345, "auth": b64url(AUTH)},
    "auth not a string": {"p256dh": b64url(POINT), "auth": ["a"]},
    "p256dh empty": {"p256dh": "", "auth": b64url(AUTH)},
    "p256dh bad base64url": {"p256dh": b64url(POINT)[:-3] + "!!!", "auth": b64url(AUTH)},
    "p256dh standard base64": {"p256dh": base64.b64encode(b"\xfb\xff" * 32 + b"\x04").decode(),
                               "auth": b64url(AUTH)},
    "p256dh impossible length": {"p256dh": b64url(POINT) + "A", "auth": b64url(AUTH)},
    "p256dh too short": {"p256dh": b64url(POINT[:64]), "auth": b64url(AUTH)},
    "p256dh too long": {"p256dh": b64url(POINT + b"\x00"), "auth": b64url(AUTH)},
    "p256dh compressed point": {"p256dh": b64url(compressed_point()), "auth": b64url(AUTH)},
    "p256dh wrong prefix": {"p256dh": b64url(b"\x05" + POINT[1:]), "auth": b64url(AUTH)},
    "p256dh not on the curve": {"p256dh": b64url(off_curve_point()), "auth": b64url(AUTH)},
    "p256dh all zero": {"p256dh": b64url(b"\x04" + bytes(64)), "auth": b64url(AUTH)},
    "auth bad base64url": {"p256dh": b64url(POINT), "auth": "not base64 url!"},
    "auth too short": {"p256dh": b64url(POINT), "auth": b64url(AUTH[:15])},
    "auth too long": {"p256dh": b64url(POINT), "auth": b64url(AUTH + b"x")},
    "auth misplaced padding": {"p256dh": b64url(POINT), "auth": "AAAA=AAAAAAAAAAAAAAAAA"},
}


def test_a_browser_subscription_is_accepted_and_keys_come_back_unpadded() -> None:
    point, auth = browser_keys()
    parsed = parse_subscription(body(b64url(point, pad=True), b64url(auth, pad=True)), allow_private=False)
    assert parsed.endpoint.url == ENDPOINT
    assert parsed.p256dh == b64url(point) and parsed.auth == b64url(auth)


@pytest.mark.parametrize("kind", sorted(MALFORMED_KEYS))
def test_malformed_keys_are_refused(kind: str) -> None:
    with pytest.raises(InvalidKeys):
        parse_subscription({"endpoint": ENDPOINT, "keys": MALFORMED_KEYS[kind]}, allow_private=False)


@pytest.mark.parametrize("keys", [None, "keys", [1, 2], 5])
def test_keys_must_be_an_object(keys: object) -> None:
    with pytest.raises(InvalidKeys):
        parse_subscription({"endpoint": ENDPOINT, "keys": keys}, allow_private=False)


def test_the_endpoint_is_checked_too() -> None:
    point, auth = browser_keys()
    with pytest.raises(RefusedEndpoint):
        parse_subscription(body(b64url(point), b64url(auth), "http://127.0.0.1:9/x"), allow_private=False)
    assert parse_subscription(body(b64url(point), b64url(auth), "http://127.0.0.1:9/x"),
                              allow_private=True).endpoint.port == 9


def test_base64url_padding_is_optional_but_must_fit() -> None:
    assert decode_base64url("AAE", "x") == b"\x00\x01"
    assert decode_base64url("AAE=", "x") == b"\x00\x01"
    for bad in ("AAE==", "A", "AA=A", "AAE===", "+/8=", " AAE"):
        with pytest.raises(InvalidKeys):
            decode_base64url(bad, "x")
