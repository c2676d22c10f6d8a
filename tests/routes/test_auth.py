"""Identity on every route: bearer header, cookie, and access_token on the streaming reads only."""

from __future__ import annotations

import pytest

from tests.routes.conftest import Api, assert_error, cookie

# (method, path template, body) of every route that needs an identity.
ROUTES = [
    ("get", "/api/conversations", None),
    ("get", "/api/conversations/{conversation}", None),
    ("delete", "/api/conversations/{conversation}", None),
    ("get", "/api/channels/{channel}", None),
    ("get", "/api/channels/{channel}/events", None),
    ("get", "/api/channels/{channel}/events.json", None),
    ("post", "/api/channels/{channel}/cancel", None),
    ("post", "/api/channels/{channel}/presence", b'{"visible": true}'),
]
BAD_HEADERS = [{"Authorization": "Bearer unknown"}, {"Authorization": "Basic dXNlcg=="},
               {"Authorization": "Bearer"}, cookie("unknown")]


@pytest.fixture
def owned(api: Api) -> dict[str, str]:
    token = api.new_user()
    submitted = api.submit(token)
    return {"token": token, "channel": submitted["channel"], "conversation": submitted["conversation_id"]}


def call(api: Api, route: tuple, owned: dict[str, str], **kwargs):
    method, template, body = route
    path = template.format(**owned)
    if body is not None:
        kwargs["content"] = body
    return api.call(method, path, **kwargs)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_no_identity_or_a_bad_one_is_401(api: Api, owned: dict[str, str], route: tuple) -> None:
    before = api.counts()
    assert_error(call(api, route, owned), 401, "unauthenticated")
    for headers in BAD_HEADERS:
        assert_error(call(api, route, owned, headers=headers), 401, "unauthenticated")
    assert api.counts() == before


@pytest.mark.parametrize("route", ROUTES[1:], ids=lambda r: f"{r[0]} {r[1]}")
def test_another_user_gets_404(api: Api, owned: dict[str, str], route: tuple) -> None:
    stranger = api.new_user()
    before = api.counts()
    assert_error(call(api, route, owned, headers={"Authorization": f"Bearer {stranger}"}), 404, "not_found")
    assert api.counts() == before


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_access_token_counts_only_on_the_sse_stream(api: Api, owned: dict[str, str], route: tuple) -> None:
    method, template, body = route
    response = call(api, (method, template + "?access_token={token}", body), owned)
    if template.endswith("/events"):
        assert response.status == 200
    else:
        assert_error(response, 401, "unauthenticated")


def test_the_bearer_header_wins_over_the_cookie(api: Api, owned: dict[str, str]) -> None:
    stranger = api.new_user()
    path = f"/api/channels/{owned['channel']}"
    mine = {"Authorization": f"Bearer {owned['token']}", **cookie(stranger)}
    theirs = {"Authorization": f"Bearer {stranger}", **cookie(owned["token"])}
    assert api.get(path, headers=mine).status == 200
    assert_error(api.get(path, headers=theirs), 404, "not_found")


def test_unknown_api_paths_are_json_404(api: Api) -> None:
    for path in ("/api/nope", "/api/channels", "/api/channels/x/y/z"):
        assert_error(api.get(path), 404, "not_found")


# Header bytes that are not UTF-8 (Latin-1 from an old client, or garbage) and values no token can have.
UNDECODABLE = [{"Authorization": b"Bearer \xff\xfe\xfd"}, {"Authorization": b"\xff\xfe"},
               {"Cookie": b"chime_token=\xff\xfe\xfd"}, {"Cookie": b"chime_token=caf\xe9"},
               {"Authorization": "Bearer " + "x" * 4000}, {"Authorization": "Bearer tok\x7fen"}]


@pytest.mark.parametrize("headers", UNDECODABLE, ids=lambda h: repr(h)[:40])
def test_undecodable_credentials_are_401(api: Api, owned: dict[str, str], headers: dict) -> None:
    before = api.counts()
    for route in (ROUTES[0], ROUTES[4]):  # a plain read, and the stream that also takes access_token
        assert_error(call(api, route, owned, headers=headers), 401, "unauthenticated")
    assert api.counts() == before


def test_an_undecodable_token_cannot_make_or_submit_as_a_user(api: Api) -> None:
    before = api.counts()
    for headers in UNDECODABLE:
        assert_error(api.post("/api/users", headers=headers), 401, "unauthenticated")
        assert_error(api.post("/api/chat", headers=headers, json={"message": "hi"}), 401, "unauthenticated")
    assert api.counts() == before


def test_an_undecodable_cookie_is_cleared(api: Api) -> None:
    response = api.get("/api/conversations", headers={"Cookie": b"chime_token=\xff\xfe"})
    assert_error(response, 401, "unauthenticated")
    assert "chime_token=;" in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
