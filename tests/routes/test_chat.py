"""POST /api/users and POST /api/chat (API.md: Identity, Submitting)."""

from __future__ import annotations

import re

import httpx
import pytest

from routes.auth import COOKIE
from tests.routes.conftest import Api, assert_error, cookie, parse_sse

URL_SAFE_128_BITS = re.compile(r"^[A-Za-z0-9_-]{22,}$")


def cookie_attributes(set_cookie: str) -> tuple[str, dict[str, str]]:
    first, *rest = [part.strip() for part in set_cookie.split(";")]
    attributes = {}
    for part in rest:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return first, attributes


# ---- users --------------------------------------------------------------------------

def test_post_users_makes_an_anonymous_user(api: Api) -> None:
    before = api.counts()
    response = api.post("/api/users")
    assert response.status == 201
    assert set(response.json) == {"user_id", "token"}
    assert URL_SAFE_128_BITS.match(response.json["user_id"]) and URL_SAFE_128_BITS.match(response.json["token"])
    assert "set-cookie" not in response.headers
    assert api.counts()["users"] == before["users"] + 1
    assert api.get("/api/conversations", response.json["token"]).json == {"conversations": []}
    assert api.post("/api/users").json["user_id"] != response.json["user_id"]


def test_post_users_with_an_unknown_token_is_401(api: Api) -> None:
    before = api.counts()
    assert_error(api.post("/api/users", "not-a-token"), 401, "unauthenticated")
    assert_error(api.post("/api/users", headers={"Authorization": "Basic abc"}), 401, "unauthenticated")
    assert api.counts() == before


# ---- submitting: success ---------------------------------------------------------------

def test_chat_without_identity_makes_a_user_and_sets_the_cookie(api: Api) -> None:
    response = api.post("/api/chat", json={"message": "hello"})
    assert response.status == 201
    body = response.json
    assert set(body) == {"channel", "conversation_id", "events_url", "ws_url", "answer_url", "token"}
    channel = body["channel"]
    assert URL_SAFE_128_BITS.match(channel) and URL_SAFE_128_BITS.match(body["conversation_id"])
    assert body["events_url"] == f"/api/channels/{channel}/events"
    assert body["ws_url"] == f"/api/channels/{channel}/ws"
    assert body["answer_url"] == f"/c/{channel}"
    first, attributes = cookie_attributes(response.headers["set-cookie"])
    assert first == f"{COOKIE}={body['token']}"
    assert "httponly" in attributes and attributes["samesite"].lower() == "lax"
    assert attributes["path"] == "/" and "secure" not in attributes  # plain http here
    assert api.counts()["users"] == 1
    # The token in the body and the cookie are the same identity.
    by_bearer = api.get(f"/api/channels/{channel}", body["token"])
    by_cookie = api.get(f"/api/channels/{channel}", headers=cookie(body["token"]))
    assert by_bearer.status == by_cookie.status == 200


def test_chat_with_an_identity_returns_no_token(api: Api) -> None:
    token = api.new_user()
    by_bearer = api.post("/api/chat", token, json={"message": "hi"})
    by_cookie = api.post("/api/chat", headers=cookie(token), json={"message": "hi"})
    for response in (by_bearer, by_cookie):
        assert response.status == 201
        assert "token" not in response.json and "set-cookie" not in response.headers
    conversations = api.get("/api/conversations", token).json["conversations"]
    assert {c["id"] for c in conversations} == {by_bearer.json["conversation_id"], by_cookie.json["conversation_id"]}
    assert api.counts()["users"] == 1


def test_the_answer_is_produced_and_stored_without_a_reader(api: Api) -> None:
    token = api.new_user()
    channel = api.submit(token, "  what is   chime?  ")["channel"]
    record = api.get(f"/api/channels/{channel}", token).json
    assert record["status"] == "done" and record["content"]
    conversation = api.get(f"/api/conversations/{record['conversation_id']}", token).json
    assert [(m["role"], m["content"]) for m in conversation["messages"]] == [
        ("user", "what is   chime?"), ("assistant", record["content"])]


def test_a_conversation_id_continues_the_conversation_with_its_history(api: Api) -> None:
    token = api.new_user()
    first = api.submit(token, "first question")
    second = api.submit(token, "second question", conversation_id=first["conversation_id"])
    assert second["conversation_id"] == first["conversation_id"] and second["channel"] != first["channel"]
    alone = api.submit(token, "second question")
    conversation = api.get(f"/api/conversations/{first['conversation_id']}", token).json
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user", "assistant"]
    # The demo model counts every word it is sent: the earlier turn went with the second question.
    with_history = api.get(f"/api/channels/{second['channel']}", token).json["usage"]["prompt_tokens"]
    without = api.get(f"/api/channels/{alone['channel']}", token).json["usage"]["prompt_tokens"]
    assert with_history > without


@pytest.mark.parametrize(("message", "title"), [
    ("  hello \n\t  world  ", "hello world"),
    ("a" * 80, "a" * 80),
    ("b" * 81, "b" * 79 + "…"),
    ("word " * 40, ("word " * 16)[:79] + "…"),
    ("🌍" * 100, "🌍" * 79 + "…"),  # code points, not UTF-16 units or bytes
])
def test_the_title_is_the_message_collapsed_and_cut_at_80(api: Api, message: str, title: str) -> None:
    token = api.new_user()
    conversation_id = api.submit(token, message)["conversation_id"]
    conversation = api.get(f"/api/conversations/{conversation_id}", token).json
    assert conversation["title"] == title and len(conversation["title"]) <= 80
    assert api.get("/api/conversations", token).json["conversations"][0]["title"] == title


def test_a_reply_in_a_conversation_keeps_its_title(api: Api) -> None:
    token = api.new_user()
    conversation_id = api.submit(token, "the first title")["conversation_id"]
    api.submit(token, "another message", conversation_id=conversation_id)
    assert api.get(f"/api/conversations/{conversation_id}", token).json["title"] == "the first title"


@pytest.mark.parametrize("message", ["x" * 32_000, "🌍" * 32_000, "  " + "y" * 32_000 + "\n"])
def test_messages_up_to_32000_code_points_after_trimming_are_accepted(api: Api, message: str) -> None:
    response = api.post("/api/chat", api.new_user(), json={"message": message})
    assert response.status == 201


def test_chat_as_an_event_stream_starts_with_meta(api: Api) -> None:
    response = api.post("/api/chat", json={"message": "stream it"}, headers={"Accept": "text/event-stream"})
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.body.startswith(b"retry: ")
    events = parse_sse(response.body)
    meta = events[0]
    assert (meta["id"], meta["event"]) == (1, "meta")
    channel = meta["data"]["channel"]
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "done"
    first, attributes = cookie_attributes(response.headers["set-cookie"])
    token = first.split("=", 1)[1]
    assert "httponly" in attributes and attributes["samesite"].lower() == "lax"
    assert api.get(f"/api/channels/{channel}", token).json["content"] == "".join(
        e["data"]["content"] for e in events if e["event"] == "delta")


# ---- submitting: bad input changes nothing ---------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe", b"{'message': 'hi'}",
                                  b'{"message": "hi"', b"[]", b'"hello"', b"1", b"null", b"true"])
def test_a_body_that_is_not_a_json_object_is_400_invalid_json(api: Api, body: bytes) -> None:
    token = api.new_user()
    before = api.counts()
    assert_error(api.post("/api/chat", token, content=body), 400, "invalid_json")
    assert_error(api.post("/api/chat", content=body), 400, "invalid_json")
    assert api.counts() == before


@pytest.mark.parametrize("body", [
    {}, {"message": ""}, {"message": "   "}, {"message": " \n\t\u3000 "}, {"message": None},
    {"message": 42}, {"message": ["hi"]}, {"message": {"text": "hi"}}, {"message": True},
    {"message": "x" * 32_001}, {"message": "🌍" * 32_001}, {"text": "hi"},
])
def test_a_bad_message_is_400_invalid_message(api: Api, body: dict) -> None:
    token = api.new_user()
    before = api.counts()
    assert_error(api.post("/api/chat", token, json=body), 400, "invalid_message")
    assert_error(api.post("/api/chat", json=body), 400, "invalid_message")
    assert api.counts() == before


@pytest.mark.parametrize("conversation_id", [42, ["x"], {"id": "x"}, True])
def test_a_conversation_id_that_is_not_a_string_is_400(api: Api, conversation_id: object) -> None:
    token = api.new_user()
    before = api.counts()
    assert_error(api.post("/api/chat", token, json={"message": "hi", "conversation_id": conversation_id}),
                 400, "invalid_parameter")
    assert api.counts() == before


def test_an_unknown_or_foreign_conversation_is_404(api: Api) -> None:
    owner, other = api.new_user(), api.new_user()
    conversation_id = api.submit(owner)["conversation_id"]
    before = api.counts()
    for token in (owner, other, None):
        for unknown in (conversation_id, "no-such-conversation", ""):
            if token == owner and unknown == conversation_id:
                continue  # the one valid pair
            response = api.post("/api/chat", token, json={"message": "hi", "conversation_id": unknown})
            assert_error(response, 404, "not_found")
    assert api.counts() == before


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer unknown-token"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer two words"},
    {"Authorization": "bearer unknown-token"},
    {"Authorization": "token-without-scheme"},
])
def test_chat_with_an_unknown_or_malformed_token_is_401(api: Api, headers: dict) -> None:
    api.new_user()
    before = api.counts()
    assert_error(api.post("/api/chat", headers=headers, json={"message": "hi"}), 401, "unauthenticated")
    assert api.counts() == before


def test_an_unknown_cookie_is_401_and_expired(api: Api) -> None:
    before = api.counts()
    response = api.post("/api/chat", headers=cookie("stale-token"), json={"message": "hi"})
    assert_error(response, 401, "unauthenticated")
    first, attributes = cookie_attributes(response.headers["set-cookie"])
    assert first == f"{COOKIE}=" and attributes["max-age"] == "0"
    assert api.counts() == before
    # Without the stale cookie the browser starts over.
    assert api.post("/api/chat", json={"message": "hi"}).status == 201


def test_a_body_over_the_limit_is_413_too_large(make_api) -> None:
    api = make_api(max_body_bytes=4_096)
    token = api.new_user()
    before = api.counts()
    response = api.post("/api/chat", token, json={"message": "z" * 5_000})
    assert_error(response, 413, "too_large")
    assert api.counts() == before
    assert api.post("/api/chat", token, json={"message": "z" * 4_000}).status == 201


def test_too_many_submissions_are_429_with_retry_after(make_server) -> None:
    server = make_server({"CHIME_SUBMISSIONS_PER_MINUTE": "2"})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        token = client.post("/api/users").json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        for _ in range(2):
            assert client.post("/api/chat", headers=auth, json={"message": "hi"}).status_code == 201
        refused = client.post("/api/chat", headers=auth, json={"message": "hi"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert len(client.get("/api/conversations", headers=auth).json()["conversations"]) == 2
        other = client.post("/api/users").json()["token"]  # limits are per user
        assert client.post("/api/chat", headers={"Authorization": f"Bearer {other}"},
                           json={"message": "hi"}).status_code == 201
