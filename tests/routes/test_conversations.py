"""GET /api/conversations, GET and DELETE /api/conversations/{id}."""

from __future__ import annotations

from tests.routes.conftest import Api, assert_error, cookie


def test_conversations_are_listed_most_recent_first(api: Api) -> None:
    token, other = api.new_user(), api.new_user()
    assert api.get("/api/conversations", token).json == {"conversations": []}
    first = api.submit(token, "first")["conversation_id"]
    second = api.submit(token, "second")["conversation_id"]
    api.submit(other, "not mine")
    listed = api.get("/api/conversations", token).json["conversations"]
    assert [(c["id"], c["title"]) for c in listed] == [(second, "second"), (first, "first")]
    assert all({"id", "title", "updated_at"} <= set(c) and c["updated_at"].endswith("Z") for c in listed)
    api.submit(token, "again", conversation_id=first)  # a new message moves it to the top
    listed = api.get("/api/conversations", headers=cookie(token)).json["conversations"]
    assert [c["id"] for c in listed] == [first, second]


def test_a_conversation_with_its_messages(api: Api) -> None:
    token = api.new_user()
    submitted = api.submit(token, "the question")
    conversation_id = submitted["conversation_id"]
    answer = api.get(f"/api/channels/{submitted['channel']}", token).json
    response = api.get(f"/api/conversations/{conversation_id}", token)
    assert response.status == 200
    body = response.json
    assert {"id", "title", "messages"} <= set(body)
    assert (body["id"], body["title"]) == (conversation_id, "the question")
    user_message, assistant = body["messages"]
    for message in body["messages"]:
        assert {"role", "content", "channel", "created_at"} <= set(message) and message["created_at"].endswith("Z")
    assert (user_message["role"], user_message["content"], user_message["channel"]) == (
        "user", "the question", submitted["channel"])
    assert (assistant["role"], assistant["content"], assistant["channel"]) == (
        "assistant", answer["content"], submitted["channel"])


def test_deleting_a_conversation_takes_its_channels(api: Api) -> None:
    token = api.new_user()
    doomed = api.submit(token, "doomed")
    reply = api.submit(token, "reply", conversation_id=doomed["conversation_id"])
    kept = api.submit(token, "kept")
    response = api.delete(f"/api/conversations/{doomed['conversation_id']}", token)
    assert response.status == 204 and response.body == b""
    assert_error(api.get(f"/api/conversations/{doomed['conversation_id']}", token), 404, "not_found")
    for channel in (doomed["channel"], reply["channel"]):
        assert_error(api.get(f"/api/channels/{channel}", token), 404, "not_found")
        assert_error(api.get(f"/api/channels/{channel}/events", token), 404, "not_found")
        assert_error(api.get(f"/api/channels/{channel}/events.json", token), 404, "not_found")
    assert [c["id"] for c in api.get("/api/conversations", token).json["conversations"]] == [kept["conversation_id"]]
    counts = api.counts()
    assert (counts["conversations"], counts["channels"], counts["messages"]) == (1, 1, 2)
    assert_error(api.delete(f"/api/conversations/{doomed['conversation_id']}", token), 404, "not_found")


def test_conversations_need_their_owner(api: Api) -> None:
    token, other = api.new_user(), api.new_user()
    conversation_id = api.submit(token)["conversation_id"]
    before = api.counts()
    path = f"/api/conversations/{conversation_id}"
    for method in ("get", "delete"):
        assert_error(api.call(method, path), 401, "unauthenticated")
        assert_error(api.call(method, path, "unknown"), 401, "unauthenticated")
        assert_error(api.call(method, path, headers={"Authorization": "Basic x"}), 401, "unauthenticated")
        assert_error(api.call(method, path, other), 404, "not_found")
        assert_error(api.call(method, "/api/conversations/no-such-conversation", token), 404, "not_found")
    assert_error(api.get("/api/conversations"), 401, "unauthenticated")
    assert_error(api.get("/api/conversations", "unknown"), 401, "unauthenticated")
    assert_error(api.get(f"/api/conversations?access_token={token}"), 401, "unauthenticated")
    assert api.counts() == before
    assert api.get(path, token).status == 200
