"""``/api/ai`` over HTTP (API.md, "Vercel AI SDK chat protocol"): shapes, identity, and every bad input.

These run in process with the demo model at full speed, so every answer has
ended by the time its buffered body is read; live reads are in test_client.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from routes.ai_sdk import conversation_id
from routes.auth import COOKIE
from routes.encoders import ai_sdk as wire
from tests.routes.conftest import Api, assert_error, cookie
from tests.support.waiting import wait_until

Part = tuple[int | None, Any]


def ui_message(text: str, role: str = "user", message_id: str = "m1") -> dict[str, Any]:
    return {"id": message_id, "role": role, "parts": [{"type": "text", "text": text}]}


def chat_body(chat_id: str = "chat-1", text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"id": chat_id, "messages": [ui_message(text)], "trigger": "submit-message", **extra}


def parts(body: bytes) -> list[Part]:
    """``(id, part)`` per SSE block, ``[DONE]`` as the string (it has no id); comments left out."""
    blocks: list[Part] = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            assert set(fields) <= {"id", "data"}, block
            data = fields["data"]
            blocks.append((int(fields["id"]) if "id" in fields else None,
                           data if data == "[DONE]" else orjson.loads(data)))
    return blocks


def types(blocks: list[Part]) -> list[str]:
    return [part if isinstance(part, str) else part["type"] for _, part in blocks]


def text_of(blocks: list[Part]) -> str:
    return "".join(part["delta"] for _, part in blocks if isinstance(part, dict) and part["type"] == "text-delta")


def send(api: Api, token: str | None, body: Any = None, **kwargs: Any) -> Any:
    response = api.post("/api/ai/chat", token, json=chat_body() if body is None else body, **kwargs)
    assert response.status == 200, response.body
    return response


def channel_of(response: Any) -> str:
    start = parts(response.body)[0][1]
    assert start["type"] == "start"
    return str(start["messageId"])


def ended(api: Api, token: str, channel: str) -> None:
    wait_until(lambda: api.get(f"/api/channels/{channel}", token).json["status"] != "running", 10,
               "the answer to end")


# ---- POST /api/ai/chat -------------------------------------------------------------

def test_a_question_is_answered_as_a_ui_message_stream(api: Api) -> None:
    token = api.new_user()
    response = send(api, token)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert "set-cookie" not in response.headers
    blocks = parts(response.body)
    kinds = types(blocks)
    assert kinds[:2] == ["start", "text-start"] and kinds[-3:] == ["text-end", "finish", "[DONE]"]
    assert set(kinds[2:-3]) <= {"text-delta", "data-usage"} and "text-delta" in kinds
    assert [index for index, _ in blocks[:-1]] == list(range(len(blocks) - 1))
    channel = channel_of(response)
    record = api.get(f"/api/channels/{channel}", token).json
    assert record["status"] == "done" and text_of(blocks) == record["content"]
    assert blocks[-2][1] == {"type": "finish", "finishReason": "stop"}


def test_without_identity_the_answer_makes_a_user_and_sets_the_cookie(api: Api) -> None:
    before = api.counts()
    response = send(api, None)
    set_cookie = response.headers["set-cookie"]
    token = set_cookie.split(";")[0].removeprefix(f"{COOKIE}=")
    assert "HttpOnly" in set_cookie and "samesite=lax" in set_cookie.lower()
    assert api.counts()["users"] == before["users"] + 1
    channel = channel_of(response)
    assert api.get(f"/api/channels/{channel}", headers=cookie(token)).status == 200
    chat = api.get("/api/ai/chat/chat-1", headers=cookie(token)).json
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]


def test_the_chat_is_a_conversation_of_the_user_and_its_id_is_per_user(api: Api) -> None:
    alice, bob = api.new_user(), api.new_user()
    first = channel_of(send(api, alice, chat_body("shared-id", "from alice")))
    second = channel_of(send(api, bob, chat_body("shared-id", "from bob")))
    alice_chat = api.get("/api/ai/chat/shared-id", alice).json
    bob_chat = api.get("/api/ai/chat/shared-id", bob).json
    assert [m["parts"][0]["text"] for m in alice_chat["messages"] if m["role"] == "user"] == ["from alice"]
    assert [m["parts"][0]["text"] for m in bob_chat["messages"] if m["role"] == "user"] == ["from bob"]
    conversations = api.get("/api/conversations", alice).json["conversations"]
    assert len(conversations) == 1
    assert api.get(f"/api/channels/{first}", alice).json["conversation_id"] == conversations[0]["id"]
    assert api.get(f"/api/channels/{second}", alice).status == 404
    assert conversation_id("user-a", "x") != conversation_id("user-b", "x")
    assert len(conversation_id("user-a", "x")) >= 22


def test_a_second_question_continues_the_stored_conversation(api: Api) -> None:
    token = api.new_user()
    first = channel_of(send(api, token, chat_body(text="first question")))
    ended(api, token, first)
    # The client sends every turn; the earlier ones are taken from what Chime stored.
    body = {"id": "chat-1", "trigger": "submit-message", "messages": [
        ui_message("something the client made up", message_id="a"),
        ui_message("never said", role="assistant", message_id="b"),
        ui_message("second question", message_id="c")]}
    second = channel_of(send(api, token, body))
    ended(api, token, second)
    chat = api.get("/api/ai/chat/chat-1", token).json
    assert [(m["role"], m["id"]) for m in chat["messages"]] == [
        ("user", f"{first}-question"), ("assistant", first), ("user", f"{second}-question"), ("assistant", second)]
    assert [m["parts"][0]["text"] for m in chat["messages"] if m["role"] == "user"] == [
        "first question", "second question"]
    # The demo model counts the words it was sent: the first turn went with the second question.
    usage = api.get(f"/api/channels/{second}", token).json["usage"]
    assert usage["prompt_tokens"] > 2 + 10  # "second question" alone is two


def test_regenerate_answers_the_last_question_anew_and_keeps_the_earlier_answer(api: Api) -> None:
    token = api.new_user()
    first = channel_of(send(api, token, chat_body(text="only question")))
    ended(api, token, first)
    again = channel_of(send(api, token, chat_body(text="only question", trigger="regenerate-message",
                                                  messageId=first)))
    ended(api, token, again)
    assert again != first
    messages = api.get("/api/ai/chat/chat-1", token).json["messages"]
    assert [m["id"] for m in messages if m["role"] == "assistant"] == [first, again]
    # The answer being redone is not part of its own history.
    assert api.get(f"/api/channels/{again}", token).json["usage"]["prompt_tokens"] \
        == api.get(f"/api/channels/{first}", token).json["usage"]["prompt_tokens"]


# ---- GET /api/ai/chat/{id}/stream, stop, history -------------------------------------

def test_stream_is_204_with_nothing_running(api: Api) -> None:
    token = api.new_user()
    assert api.get("/api/ai/chat/none-yet/stream", token).status == 204
    assert api.get("/api/ai/chat/none-yet/stream").status == 204  # no identity: nothing of yours runs
    channel = channel_of(send(api, token))
    ended(api, token, channel)
    assert api.get("/api/ai/chat/chat-1/stream", token).status == 204


def test_a_position_resumes_the_latest_answer_after_it_ended(api: Api) -> None:
    token = api.new_user()
    whole = parts(send(api, token).body)
    ended(api, token, str(whole[0][1]["messageId"]))
    last = len(whole) - 2  # the index of the last part ([DONE] is not one)
    response = api.get("/api/ai/chat/chat-1/stream", token, headers={"Last-Event-ID": "3"})
    assert response.status == 200 and response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert parts(response.body) == whole[4:]
    assert parts(api.get("/api/ai/chat/chat-1/stream?startIndex=0", token).body) == whole
    assert parts(api.get(f"/api/ai/chat/chat-1/stream?startIndex={last}", token).body) == whole[-2:]
    tail = api.get("/api/ai/chat/chat-1/stream?startIndex=-2", token)
    assert tail.headers[wire.TAIL_INDEX_HEADER] == str(last)
    assert parts(tail.body) == whole[-3:]
    assert parts(api.get("/api/ai/chat/chat-1/stream?startIndex=-100000", token).body) == whole
    assert api.get("/api/ai/chat/chat-1/stream", token, headers={"Last-Event-ID": str(last)}).status == 204
    assert api.get(f"/api/ai/chat/chat-1/stream?startIndex={last + 1}", token).status == 204
    assert api.get("/api/ai/chat/chat-1/stream", token,
                   headers={"Last-Event-ID": "100000000000000000000"}).status == 204


def test_stop_with_nothing_running_is_204(api: Api) -> None:
    token = api.new_user()
    assert api.post("/api/ai/chat/none-yet/stop", token).status == 204
    channel = channel_of(send(api, token))
    ended(api, token, channel)
    assert api.post("/api/ai/chat/chat-1/stop", token).status == 204
    assert api.get(f"/api/channels/{channel}", token).json["status"] == "done"


def test_the_history_is_ui_messages(api: Api) -> None:
    token = api.new_user()
    assert api.get("/api/ai/chat/unknown", token).json == {"id": "unknown", "messages": []}
    assert api.get("/api/ai/chat/unknown").json == {"id": "unknown", "messages": []}
    channel = channel_of(send(api, token, chat_body("chat é/1", "question")))
    ended(api, token, channel)
    chat = api.get("/api/ai/chat/chat%20%C3%A9%2F1", token).json  # as encodeURIComponent writes it
    assert chat["id"] == "chat é/1"
    assert chat["messages"][0] == {"id": f"{channel}-question", "role": "user",
                                   "parts": [{"type": "text", "text": "question"}]}
    content = api.get(f"/api/channels/{channel}", token).json["content"]
    assert chat["messages"][1] == {"id": channel, "role": "assistant", "parts": [{"type": "text", "text": content}]}
    assert api.get("/api/ai/chat/chat-1", token).json["messages"] == []


# ---- bad input: 400, nothing changed --------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'"text"', b"null", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_400_invalid_json(api: Api, body: bytes) -> None:
    token = api.new_user()
    before = api.counts()
    assert_error(api.post("/api/ai/chat", token, content=body), 400, "invalid_json")
    assert api.counts() == before


@pytest.mark.parametrize("change", [
    {"id": None}, {"id": 7}, {"id": ""}, {"id": "x" * 257}, {"id": ["chat"]},
    {"trigger": "resume-stream"}, {"trigger": 1}, {"trigger": None},
    {"messageId": 5}, {"messageId": {"id": "m"}},
])
def test_a_bad_field_is_400_invalid_parameter(api: Api, change: dict[str, Any]) -> None:
    token = api.new_user()
    body = chat_body()
    body.update(change)
    before = api.counts()
    assert_error(api.post("/api/ai/chat", token, json=body), 400, "invalid_parameter")
    assert api.counts() == before


@pytest.mark.parametrize("messages", [
    None, "hello", {}, [], [None], ["hello"],
    [ui_message("answer only", role="assistant")],
    [{"id": "m1", "role": "user"}],
    [{"id": "m1", "role": "user", "parts": "hello"}],
    [{"id": "m1", "role": "user", "parts": ["hello"]}],
    [{"id": "m1", "role": "user", "parts": []}],
    [{"id": "m1", "role": "user", "parts": [{"type": "file", "url": "data:,x", "mediaType": "text/plain"}]}],
    [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": 5}]}],
    [{"id": "m1", "role": "user", "parts": [{"type": "text"}]}],
    [ui_message("   \n ")],
    [ui_message("x" * 32_001)],
    [ui_message("fine"), ui_message("   ")],
])
def test_a_bad_question_is_400_invalid_message(api: Api, messages: Any) -> None:
    token = api.new_user()
    body = chat_body()
    body["messages"] = messages
    before = api.counts()
    assert_error(api.post("/api/ai/chat", token, json=body), 400, "invalid_message")
    assert api.counts() == before


def test_a_bad_request_without_identity_makes_no_user_and_sets_no_cookie(api: Api) -> None:
    before = api.counts()
    response = api.post("/api/ai/chat", json={"id": "c", "messages": []})
    assert_error(response, 400, "invalid_message")
    assert "set-cookie" not in response.headers
    assert api.counts() == before


@pytest.mark.parametrize(("query", "headers"), [
    ("?startIndex=", {}), ("?startIndex=abc", {}), ("?startIndex=1.5", {}), ("?startIndex=--1", {}),
    ("?startIndex=%2B1", {}), ("?startIndex=-", {}), ("", {"Last-Event-ID": "-1"}), ("", {"Last-Event-ID": "x"}),
])
def test_a_bad_position_is_400(api: Api, query: str, headers: dict[str, str]) -> None:
    token = api.new_user()
    assert_error(api.get(f"/api/ai/chat/chat-1/stream{query}", token, headers=headers), 400, "invalid_parameter")


@pytest.mark.parametrize(("method", "path"), [
    ("post", "/api/ai/chat"), ("get", "/api/ai/chat/c"), ("get", "/api/ai/chat/c/stream"),
    ("post", "/api/ai/chat/c/stop"),
])
def test_an_unknown_token_is_401(api: Api, method: str, path: str) -> None:
    before = api.counts()
    kwargs: dict[str, Any] = {"json": chat_body()} if method == "post" else {}
    assert_error(api.call(method, path, "not-a-token", **kwargs), 401, "unauthenticated")
    assert api.counts() == before


def test_another_origin_cannot_post(api: Api) -> None:
    token = api.new_user()
    before = api.counts()
    assert_error(api.post("/api/ai/chat", token, json=chat_body(), headers={"Origin": "https://evil.example"}),
                 403, "cross_origin")
    assert_error(api.post("/api/ai/chat", json=chat_body(), headers={"Origin": "null"}), 403, "cross_origin")
    assert_error(api.post("/api/ai/chat/chat-1/stop", token, headers={"Origin": "https://evil.example"}),
                 403, "cross_origin")
    assert api.counts() == before
