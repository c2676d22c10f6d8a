"""GET /api/push/vapid-public-key, POST and DELETE /api/push/subscriptions (API.md: Push notifications)."""

from __future__ import annotations

import base64
import hashlib
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from routes.push import MAX_SUBSCRIPTIONS_PER_USER
from tests.notify.test_subscriptions import MALFORMED_KEYS, b64url, browser_keys
from tests.routes.conftest import Api, assert_error

PUBLIC_ENDPOINT = "https://93.184.215.14/wpush/v2/gAAAAABk"


def subscription(endpoint: str = PUBLIC_ENDPOINT) -> dict:
    point, auth = browser_keys()
    return {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": b64url(point), "auth": b64url(auth)}}


def stored(api: Api) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(api.settings.db_path) as db:
        return db.execute("SELECT user_id, endpoint, p256dh, auth FROM push_subscriptions "
                          "ORDER BY created_at").fetchall()


def user_id_of(api: Api, token: str) -> str:
    with sqlite3.connect(api.settings.db_path) as db:
        return db.execute("SELECT id FROM users WHERE token_hash = ?",
                          (hashlib.sha256(token.encode()).hexdigest(),)).fetchone()[0]


def unsubscribe(api: Api, token: str | None = None, **kwargs):
    """DELETE with a body (httpx's ``delete()`` takes none)."""
    return api.call("request", "/api/push/subscriptions", token, http_method="DELETE", **kwargs)


# ---- the public key ----------------------------------------------------------------

def test_the_vapid_public_key_is_an_uncompressed_p256_point(api: Api) -> None:
    response = api.get("/api/push/vapid-public-key")
    assert response.status == 200
    assert set(response.json) == {"public_key"}
    key = response.json["public_key"]
    point = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert len(point) == 65 and point[0] == 4 and "=" not in key
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    assert api.get("/api/push/vapid-public-key").json["public_key"] == key  # kept across starts


# ---- subscribing ---------------------------------------------------------------------

def test_a_subscription_is_stored_for_its_user(api: Api) -> None:
    token = api.new_user()
    body = subscription()
    response = api.post("/api/push/subscriptions", token, json=body)
    assert response.status == 201
    assert response.json == {"endpoint": PUBLIC_ENDPOINT}
    assert stored(api) == [(user_id_of(api, token), PUBLIC_ENDPOINT, body["keys"]["p256dh"], body["keys"]["auth"])]


def test_padded_keys_are_stored_unpadded(api: Api) -> None:
    token = api.new_user()
    point, auth = browser_keys()
    body = {"endpoint": PUBLIC_ENDPOINT, "keys": {"p256dh": b64url(point, pad=True), "auth": b64url(auth, pad=True)}}
    assert api.post("/api/push/subscriptions", token, json=body).status == 201
    assert stored(api)[0][2:] == (b64url(point), b64url(auth))


def test_the_same_endpoint_again_replaces_the_old_one(api: Api) -> None:
    first, second = api.new_user(), api.new_user()
    assert api.post("/api/push/subscriptions", first, json=subscription()).status == 201
    renewed = subscription()
    assert api.post("/api/push/subscriptions", second, json=renewed).status == 201
    assert stored(api) == [(user_id_of(api, second), PUBLIC_ENDPOINT, renewed["keys"]["p256dh"],
                            renewed["keys"]["auth"])]


def test_a_user_keeps_at_most_the_newest_subscriptions(make_api) -> None:
    api = make_api()
    token = api.new_user()
    for number in range(MAX_SUBSCRIPTIONS_PER_USER + 2):
        response = api.post("/api/push/subscriptions", token, json=subscription(f"{PUBLIC_ENDPOINT}/{number}"))
        assert response.status == 201
    endpoints = [row[1] for row in stored(api)]
    assert len(endpoints) == MAX_SUBSCRIPTIONS_PER_USER
    assert f"{PUBLIC_ENDPOINT}/0" not in endpoints and f"{PUBLIC_ENDPOINT}/1" not in endpoints
    assert f"{PUBLIC_ENDPOINT}/{MAX_SUBSCRIPTIONS_PER_USER + 1}" in endpoints


def test_private_endpoints_are_accepted_when_allowed(make_api) -> None:
    api = make_api(push_allow_private=True)
    token = api.new_user()
    response = api.post("/api/push/subscriptions", token, json=subscription("http://127.0.0.1:9/push/x"))
    assert response.status == 201 and len(stored(api)) == 1


# ---- refused subscriptions change nothing -------------------------------------------------

def test_subscribing_needs_an_identity(api: Api) -> None:
    before = api.counts()
    assert_error(api.post("/api/push/subscriptions", json=subscription()), 401, "unauthenticated")
    assert_error(api.post("/api/push/subscriptions", "unknown-token", json=subscription()), 401, "unauthenticated")
    assert api.counts() == before


@pytest.mark.parametrize("kind", sorted(MALFORMED_KEYS))
def test_malformed_keys_are_400(api: Api, kind: str) -> None:
    token = api.new_user()
    before = api.counts()
    response = api.post("/api/push/subscriptions", token,
                        json={"endpoint": PUBLIC_ENDPOINT, "keys": MALFORMED_KEYS[kind]})
    assert_error(response, 400, "invalid_subscription")
    assert api.counts() == before


@pytest.mark.parametrize("endpoint", [
    "http://127.0.0.1:9/push/x",  # plain http and loopback: only with CHIME_PUSH_ALLOW_PRIVATE
    "https://127.0.0.1/push/x", "https://localhost/push/x", "https://[::1]/push/x",
    "https://[::ffff:127.0.0.1]/push/x", "https://10.0.0.8/push/x", "https://192.168.0.1/push/x",
    "https://169.254.169.254/latest/meta-data", "https://[fe80::1]/push/x", "https://0.0.0.0/push/x",
    "https://224.0.0.1/push/x", "https://127.1/push/x", "https://user:pw@93.184.215.14/push/x",
    "ftp://93.184.215.14/push/x", "not a url", "", None, 17,
])
def test_refused_endpoints_are_400(api: Api, endpoint: object) -> None:
    token = api.new_user()
    before = api.counts()
    body = subscription()
    body["endpoint"] = endpoint
    assert_error(api.post("/api/push/subscriptions", token, json=body), 400, "invalid_subscription")
    assert api.counts() == before


@pytest.mark.parametrize("raw, code", [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"),
                                       (b'{"endpoint": "https://93.184.215.14/x"}', "invalid_subscription"),
                                       (b'{"endpoint": "https://93.184.215.14/x", "keys": []}',
                                        "invalid_subscription")])
def test_bodies_that_are_not_a_subscription_are_400(api: Api, raw: bytes, code: str) -> None:
    token = api.new_user()
    before = api.counts()
    assert_error(api.post("/api/push/subscriptions", token, content=raw), 400, code)
    assert api.counts() == before


# ---- unsubscribing -------------------------------------------------------------------------

def test_delete_removes_the_subscription(api: Api) -> None:
    token = api.new_user()
    api.post("/api/push/subscriptions", token, json=subscription())
    api.post("/api/push/subscriptions", token, json=subscription(PUBLIC_ENDPOINT + "/other"))
    response = unsubscribe(api, token, json={"endpoint": PUBLIC_ENDPOINT})
    assert response.status == 204 and response.body == b""
    assert [row[1] for row in stored(api)] == [PUBLIC_ENDPOINT + "/other"]
    assert unsubscribe(api, token, json={"endpoint": PUBLIC_ENDPOINT}).status == 204


def test_delete_does_not_touch_another_users_subscription(api: Api) -> None:
    owner, other = api.new_user(), api.new_user()
    api.post("/api/push/subscriptions", owner, json=subscription())
    assert unsubscribe(api, other, json={"endpoint": PUBLIC_ENDPOINT}).status == 204
    assert len(stored(api)) == 1


def test_delete_needs_an_identity_and_an_endpoint(api: Api) -> None:
    token = api.new_user()
    api.post("/api/push/subscriptions", token, json=subscription())
    before = api.counts()
    assert_error(unsubscribe(api, None, json={"endpoint": PUBLIC_ENDPOINT}), 401, "unauthenticated")
    assert_error(unsubscribe(api, "unknown", json={"endpoint": PUBLIC_ENDPOINT}), 401,
                 "unauthenticated")
    assert_error(unsubscribe(api, token, json={}), 400, "invalid_subscription")
    assert_error(unsubscribe(api, token, json={"endpoint": 5}), 400, "invalid_subscription")
    assert_error(unsubscribe(api, token, content=b"nope"), 400, "invalid_json")
    assert api.counts() == before
