"""GET /api/channels/{channel}, cancel and presence."""

from __future__ import annotations

import httpx

from tests.routes.conftest import Api, assert_error, cookie, parse_sse
from tests.support.waiting import wait_until

DOCUMENTED = {"channel", "conversation_id", "status", "content", "last_event_id", "created_at", "finished_at",
              "usage"}


def test_a_finished_channel_as_a_record(api: Api) -> None:
    token = api.new_user()
    submitted = api.submit(token, "a record please")
    channel = submitted["channel"]
    events = parse_sse(api.get(f"/api/channels/{channel}/events", token).body)
    response = api.get(f"/api/channels/{channel}", token)
    assert response.status == 200
    record = response.json
    assert DOCUMENTED <= set(record)
    assert record["channel"] == channel and record["conversation_id"] == submitted["conversation_id"]
    assert record["status"] == "done"
    assert record["content"] == "".join(e["data"]["content"] for e in events if e["event"] == "delta")
    assert record["last_event_id"] == events[-1]["id"]
    assert record["created_at"].endswith("Z") and record["finished_at"].endswith("Z")
    assert record["finished_at"] >= record["created_at"]
    assert record["usage"] == next(e["data"] for e in events if e["event"] == "usage")
    assert api.get(f"/api/channels/{channel}", headers=cookie(token)).json == record


def test_the_channel_record_needs_its_owner(api: Api) -> None:
    token = api.new_user()
    channel = api.submit(token)["channel"]
    assert_error(api.get(f"/api/channels/{channel}"), 401, "unauthenticated")
    assert_error(api.get(f"/api/channels/{channel}?access_token={token}"), 401, "unauthenticated")
    assert_error(api.get(f"/api/channels/{channel}", "unknown"), 401, "unauthenticated")
    assert_error(api.get(f"/api/channels/{channel}", api.new_user()), 404, "not_found")
    assert_error(api.get("/api/channels/no-such-channel", token), 404, "not_found")


def test_cancelling_a_finished_channel_is_409(api: Api) -> None:
    token = api.new_user()
    channel = api.submit(token)["channel"]
    before = api.counts()
    assert_error(api.post(f"/api/channels/{channel}/cancel", token), 409, "already_finished")
    assert_error(api.post(f"/api/channels/{channel}/cancel"), 401, "unauthenticated")
    assert_error(api.post(f"/api/channels/{channel}/cancel", "unknown"), 401, "unauthenticated")
    assert_error(api.post(f"/api/channels/{channel}/cancel", api.new_user()), 404, "not_found")
    assert_error(api.post("/api/channels/no-such-channel/cancel", token), 404, "not_found")
    after = api.counts()
    assert after["events"] == before["events"] and after["channels"] == before["channels"]
    assert api.get(f"/api/channels/{channel}", token).json["status"] == "done"


def test_presence_takes_json_and_text_plain_bodies(api: Api) -> None:
    token = api.new_user()
    channel = api.submit(token)["channel"]
    for content_type in ("application/json", "text/plain;charset=UTF-8", None):
        headers = {"Content-Type": content_type} if content_type else {}
        for body in (b'{"visible": false}', b'{"visible": true}'):
            response = api.post(f"/api/channels/{channel}/presence", token, content=body, headers=headers)
            assert response.status == 204 and response.body == b""


def test_bad_presence_reports_are_refused(api: Api) -> None:
    token = api.new_user()
    channel = api.submit(token)["channel"]
    before = api.counts()
    for body in (b"", b"{", b"[]", b'"visible"'):
        assert_error(api.post(f"/api/channels/{channel}/presence", token, content=body), 400, "invalid_json")
    for body in (b"{}", b'{"visible": "yes"}', b'{"visible": 1}', b'{"visible": null}'):
        response = api.post(f"/api/channels/{channel}/presence", token, content=body)
        assert response.status == 400 and response.json["error"]["code"] in ("invalid_json", "invalid_parameter")
    visible = b'{"visible": true}'
    assert_error(api.post(f"/api/channels/{channel}/presence", content=visible), 401, "unauthenticated")
    assert_error(api.post(f"/api/channels/{channel}/presence", "unknown", content=visible), 401, "unauthenticated")
    assert_error(api.post(f"/api/channels/{channel}/presence", api.new_user(), content=visible), 404, "not_found")
    assert_error(api.post("/api/channels/no-such-channel/presence", token, content=visible), 404, "not_found")
    after = api.counts()
    assert after["events"] == before["events"]


def test_cancelling_a_running_answer_is_202_and_ends_it_cancelled(make_server) -> None:
    server = make_server({"CHIME_DEMO_DELAY_MS": "50"})
    with httpx.Client(base_url=server.url, timeout=10) as client:
        token = client.post("/api/users").json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        channel = client.post("/api/chat", headers=auth, json={"message": "cancel me"}).json()["channel"]
        assert client.post(f"/api/channels/{channel}/cancel",
                           headers={"Authorization": f"Bearer {client.post('/api/users').json()['token']}"}
                           ).status_code == 404
        response = client.post(f"/api/channels/{channel}/cancel", headers=auth)
        assert response.status_code == 202
        record = wait_until(lambda: (r := client.get(f"/api/channels/{channel}", headers=auth).json())
                            ["status"] != "running" and r, 10, "the answer to end")
        assert record["status"] == "cancelled"
        events = client.get(f"/api/channels/{channel}/events.json", headers=auth).json()
        assert events["finished"] and events["events"][-1] == {
            "id": record["last_event_id"], "event": "cancelled", "data": {}}
        assert client.post(f"/api/channels/{channel}/cancel", headers=auth).status_code == 409
