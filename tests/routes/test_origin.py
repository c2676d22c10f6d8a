"""Other sites and proxies (API.md: Hostile clients and faults): a foreign Origin changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from routes.origin import normalized
from tests.routes.conftest import Api, assert_error, cookie

FOREIGN = ("https://evil.example", "null", "http://127.0.0.1:1", "http://localhost:9", "HTTP://EVIL.EXAMPLE:8080")


@pytest.mark.parametrize("origin", FOREIGN)
def test_a_foreign_origin_cannot_submit_and_leaves_no_trace(api: Api, origin: str) -> None:
    token = api.new_user()
    api.submit(token)
    before = api.counts()
    response = api.post("/api/chat", headers={"Origin": origin, "Content-Type": "text/plain"},
                        content=b'{"message": "ignore all that and subscribe me"}')
    assert_error(response, 403, "cross_origin")
    assert "set-cookie" not in response.headers
    assert_error(api.post("/api/chat", headers={"Origin": origin, **cookie(token)},
                          json={"message": "as the victim"}), 403, "cross_origin")
    assert api.counts() == before


@pytest.mark.parametrize("method, path, body", [
    ("post", "/api/users", None),
    ("post", "/api/push/subscriptions", {"endpoint": "http://127.0.0.1:9/push", "keys": {}}),
    ("delete", "/api/push/subscriptions", {"endpoint": "http://127.0.0.1:9/push"}),
    ("post", "/api/channels/{channel}/cancel", None),
    ("post", "/api/channels/{channel}/presence", {"visible": False}),
    ("delete", "/api/conversations/{conversation}", None),
])
def test_every_state_change_from_a_foreign_origin_is_403(api: Api, method: str, path: str,
                                                         body: dict[str, Any] | None) -> None:
    token = api.new_user()
    submitted = api.submit(token)
    before = api.counts()
    url = path.format(channel=submitted["channel"], conversation=submitted["conversation_id"])
    payload = {"content": orjson.dumps(body)} if body is not None else {}
    if method == "delete":  # httpx's delete() takes no body
        response = api.call("request", url, token, http_method="DELETE", headers={"Origin": "https://evil.example"},
                            **payload)
    else:
        response = api.call(method, url, token, headers={"Origin": "https://evil.example"}, **payload)
    assert_error(response, 403, "cross_origin")
    assert api.counts() == before
    assert api.get(f"/api/conversations/{submitted['conversation_id']}", token).status == 200


def test_reads_from_any_origin_and_requests_without_origin_are_served(api: Api) -> None:
    token = api.new_user()
    assert api.get("/api/conversations", token, headers={"Origin": "https://evil.example"}).status == 200
    assert api.post("/api/chat", token, json={"message": "from curl"}).status == 201


def test_the_servers_own_origin_and_allowed_origins_may_change_state(make_api: Callable[..., Api]) -> None:
    api = make_api(allowed_origins=("https://app.example.com",))
    token = api.new_user()
    same = api.post("/api/chat", token, json={"message": "same origin"},
                    headers={"Origin": "http://127.0.0.1", "Host": "127.0.0.1"})
    assert same.status == 201, same.body
    allowed = api.post("/api/chat", token, json={"message": "allowed"},
                       headers={"Origin": "https://APP.example.com:443"})
    assert allowed.status == 201, allowed.body
    assert_error(api.post("/api/chat", token, json={"message": "sibling"},
                          headers={"Origin": "https://evil.app.example.com"}), 403, "cross_origin")


def test_a_websocket_upgrade_from_a_foreign_origin_is_refused(api: Api) -> None:
    token = api.new_user()
    channel = api.submit(token)["channel"]
    response = api.get(f"/api/channels/{channel}/ws?access_token={token}",
                       headers={"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade",
                                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert_error(response, 403, "cross_origin")


def test_behind_a_trusted_proxy_the_forwarded_origin_and_scheme_count(make_api: Callable[..., Api]) -> None:
    api = make_api(proxies_count=1)
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "chat.example.com", "Origin": "https://chat.example.com"}
    response = api.post("/api/chat", json={"message": "through the proxy"}, headers=forwarded)
    assert response.status == 201, response.body
    attributes = [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
    assert "secure" in attributes
    assert_error(api.post("/api/chat", json={"message": "the proxy's own name is not ours"},
                          headers={**forwarded, "Origin": "http://127.0.0.1"}), 403, "cross_origin")


def test_without_trusted_proxies_forwarded_headers_are_ignored(api: Api) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "chat.example.com"}
    response = api.post("/api/chat", json={"message": "spoofed"}, headers=forwarded)
    assert response.status == 201
    assert "secure" not in [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
    assert_error(api.post("/api/chat", json={"message": "spoofed"},
                          headers={**forwarded, "Origin": "https://chat.example.com"}), 403, "cross_origin")


@pytest.mark.parametrize("raw, expected", [
    ("http://127.0.0.1:80", "http://127.0.0.1"), ("HTTPS://Chat.Example.com:443/", "https://chat.example.com"),
    ("https://chat.example.com:8443", "https://chat.example.com:8443"), ("http://[::1]", "http://[::1]"),
    ("ws://[::1]:80", "http://[::1]"), ("wss://h:443", "https://h"),
])
def test_origins_are_compared_without_case_or_default_ports(raw: str, expected: str) -> None:
    assert normalized(raw) == expected
