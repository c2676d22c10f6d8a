"""Reading a finished channel: SSE and JSON polling through the test client (live reads are in e2e)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from routes import sanic_internals
from tests.routes.conftest import Api, assert_error, cookie, parse_sse

BAD_IDS = ["-1", "abc", "1.5", "", " ", "1e3", "+1", "0x10", "١٢"]
# Past every id a channel could have, however many digits: "past the end", never malformed.
HUGE_IDS = ["100000000000000000000", "9223372036854775808", "9" * 5000]
MAX_EVENT_ID = 2**63 - 1


@pytest.fixture
def finished(api: Api) -> tuple[str, str, list[dict]]:
    """A user's token, a finished channel and its events as SSE gives them from the start."""
    token = api.new_user()
    channel = api.submit(token, "tell me about resuming")["channel"]
    response = api.get(f"/api/channels/{channel}/events", token)
    return token, channel, parse_sse(response.body)


def test_sse_replays_the_whole_channel_with_the_documented_framing(api: Api, finished) -> None:
    token, channel, _ = finished
    response = api.get(f"/api/channels/{channel}/events", token)
    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.body.startswith(b"retry: 2000\nid: 1\nevent: meta\n")
    blocks = response.body.decode().split("\n\n")
    assert blocks[-1] == ""  # the body ends with a complete event
    for block in blocks[1:-1]:
        lines = block.split("\n")
        assert [line.split(": ", 1)[0] for line in lines] == ["id", "event", "data"]
    events = parse_sse(response.body)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0] == {"id": 1, "event": "meta", "data": {
        "channel": channel, "conversation_id": events[0]["data"]["conversation_id"], "model": "demo"}}
    assert {e["event"] for e in events[1:-2]} == {"delta"}
    assert events[-2]["event"] == "usage"
    assert set(events[-2]["data"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert events[-1] == {"id": len(events), "event": "done", "data": {"finish_reason": "stop"}}
    content = "".join(e["data"]["content"] for e in events if e["event"] == "delta")
    assert "\n" in content  # multi-line content still travels as one data line
    assert api.get(f"/api/channels/{channel}", token).json["content"] == content


def test_sse_resumes_from_the_header_or_the_query(api: Api, finished) -> None:
    token, channel, events = finished
    by_header = api.get(f"/api/channels/{channel}/events", token, headers={"Last-Event-ID": "3"})
    by_query = api.get(f"/api/channels/{channel}/events?last_event_id=3", token)
    assert parse_sse(by_header.body) == parse_sse(by_query.body) == events[3:]


def test_the_header_wins_over_the_query(api: Api, finished) -> None:
    token, channel, events = finished
    response = api.get(f"/api/channels/{channel}/events?last_event_id=abc", token, headers={"Last-Event-ID": "5"})
    assert response.status == 200 and parse_sse(response.body) == events[5:]
    response = api.get(f"/api/channels/{channel}/events?last_event_id=2", token, headers={"Last-Event-ID": "x"})
    assert_error(response, 400, "invalid_parameter")


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_bad_resume_point_is_400(api: Api, finished, bad: str) -> None:
    token, channel, _ = finished
    assert_error(api.get(f"/api/channels/{channel}/events", token, params={"last_event_id": bad}),
                 400, "invalid_parameter")
    if bad.strip() and bad.isascii():  # header values are ASCII and trimmed by HTTP itself
        assert_error(api.get(f"/api/channels/{channel}/events", token, headers={"Last-Event-ID": bad}),
                     400, "invalid_parameter")


def test_a_resume_point_at_or_past_the_end_is_204(api: Api, finished) -> None:
    token, channel, events = finished
    for after in (len(events), len(events) + 1, 10**12):
        response = api.get(f"/api/channels/{channel}/events", token, headers={"Last-Event-ID": str(after)})
        assert response.status == 204 and response.body == b""
    last = api.get(f"/api/channels/{channel}/events", token, headers={"Last-Event-ID": str(len(events) - 1)})
    assert parse_sse(last.body) == events[-1:]


@pytest.mark.parametrize("huge", HUGE_IDS, ids=len)
def test_a_huge_resume_point_is_past_the_end_not_malformed(api: Api, finished, huge: str) -> None:
    token, channel, _ = finished
    by_header = api.get(f"/api/channels/{channel}/events", token, headers={"Last-Event-ID": huge})
    by_query = api.get(f"/api/channels/{channel}/events", token, params={"last_event_id": huge})
    assert (by_header.status, by_header.body) == (by_query.status, by_query.body) == (204, b"")


def test_leading_zeros_are_still_the_same_small_resume_point(api: Api, finished) -> None:
    token, channel, events = finished
    padded = "0" * 30 + "3"
    response = api.get(f"/api/channels/{channel}/events", token, headers={"Last-Event-ID": padded})
    assert parse_sse(response.body) == events[3:]
    polled = api.get(f"/api/channels/{channel}/events.json", token, params={"after": padded}).json
    assert polled["events"] == events[3:]


def test_sse_takes_the_cookie_and_the_access_token_query(api: Api, finished) -> None:
    token, channel, events = finished
    assert parse_sse(api.get(f"/api/channels/{channel}/events", headers=cookie(token)).body) == events
    assert parse_sse(api.get(f"/api/channels/{channel}/events?access_token={token}").body) == events
    assert_error(api.get(f"/api/channels/{channel}/events?access_token=unknown"), 401, "unauthenticated")


def test_sse_needs_the_owner(api: Api, finished) -> None:
    token, channel, _ = finished
    assert_error(api.get(f"/api/channels/{channel}/events"), 401, "unauthenticated")
    assert_error(api.get(f"/api/channels/{channel}/events", "unknown"), 401, "unauthenticated")
    assert_error(api.get(f"/api/channels/{channel}/events", api.new_user()), 404, "not_found")
    assert_error(api.get("/api/channels/no-such-channel/events", token), 404, "not_found")


# ---- polling -------------------------------------------------------------------------------

def test_polling_returns_events_after_n(api: Api, finished) -> None:
    token, channel, events = finished
    everything = api.get(f"/api/channels/{channel}/events.json", token)
    assert everything.status == 200
    assert everything.json == {"events": events, "last_event_id": len(events), "finished": True}
    middle = api.get(f"/api/channels/{channel}/events.json?after=2", token).json
    assert middle == {"events": events[2:], "last_event_id": len(events), "finished": True}


def test_polling_past_the_end_returns_nothing_and_finished(api: Api, finished) -> None:
    token, channel, events = finished
    for after in (len(events), len(events) + 5):
        body = api.get(f"/api/channels/{channel}/events.json?after={after}&wait=30", token).json
        assert body == {"events": [], "last_event_id": after, "finished": True}


@pytest.mark.parametrize("huge", HUGE_IDS, ids=len)
def test_polling_after_a_huge_id_is_an_empty_finished_page(api: Api, finished, huge: str) -> None:
    token, channel, _ = finished
    response = api.get(f"/api/channels/{channel}/events.json", token, params={"after": huge, "wait": "30"})
    assert response.status == 200
    # Clamped to the largest id a store can hold: still past the end, and a 64-bit JSON integer.
    assert response.json == {"events": [], "last_event_id": MAX_EVENT_ID, "finished": True}


@pytest.mark.parametrize(("name", "bad"), [
    *(("after", bad) for bad in BAD_IDS),
    ("wait", "-1"), ("wait", "31"), ("wait", "abc"), ("wait", "nan"), ("wait", "inf"), ("wait", ""),
])
def test_a_bad_after_or_wait_is_400(api: Api, finished, name: str, bad: str) -> None:
    token, channel, _ = finished
    assert_error(api.get(f"/api/channels/{channel}/events.json", token, params={name: bad}),
                 400, "invalid_parameter")


def test_polling_does_not_take_the_access_token_query(api: Api, finished) -> None:
    token, channel, events = finished
    assert_error(api.get(f"/api/channels/{channel}/events.json?access_token={token}"), 401, "unauthenticated")
    assert api.get(f"/api/channels/{channel}/events.json", headers=cookie(token)).json["events"] == events


def test_polling_needs_the_owner(api: Api, finished) -> None:
    token, channel, _ = finished
    assert_error(api.get(f"/api/channels/{channel}/events.json", "unknown"), 401, "unauthenticated")
    assert_error(api.get(f"/api/channels/{channel}/events.json", api.new_user()), 404, "not_found")
    assert_error(api.get("/api/channels/no-such-channel/events.json", token), 404, "not_found")


# ---- Sanic's public API only (CHIME_FAST_PATH=0) -----------------------------------------------

@pytest.fixture
def public_api_only(make_api) -> Iterator[Api]:
    api = make_api(fast_path=False)
    yield api
    sanic_internals.configure(True)  # the switch is the process's: later tests get the default


def test_without_the_fast_path_sse_and_polling_read_the_same(public_api_only: Api) -> None:
    api = public_api_only
    token = api.new_user()
    channel = api.submit(token, "tell me about resuming")["channel"]
    response = api.get(f"/api/channels/{channel}/events", token)
    assert not sanic_internals.enabled
    assert response.body.startswith(b"retry: 2000\nid: 1\nevent: meta\n")
    events = parse_sse(response.body)
    assert events[0]["event"] == "meta" and events[-1]["event"] == "done"
    polled = api.get(f"/api/channels/{channel}/events.json", token).json
    assert polled == {"events": events, "last_event_id": len(events), "finished": True}
