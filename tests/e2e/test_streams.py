"""SSE, WebSocket and polling against the real server process with real clients."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.channel_clients import Reader, SseStream, content_of, parse_sse_lines, ws_close_code
from tests.support.server import ServerProcess

TOKEN_DELAY_MS = 20
KEEPALIVE_S = 0.008  # well under the time between tokens


@pytest.fixture(scope="module", params=["1", "0"], ids=["fast-path", "public-api-only"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per fast-path setting: a demo model slow enough to read it live, frequent keepalives.

    With ``CHIME_FAST_PATH=0`` every stream goes through Sanic's public API
    only (``routes.sanic_internals``): the wire must be exactly the same.
    """
    env = {"CHIME_DEMO_DELAY_MS": str(TOKEN_DELAY_MS), "CHIME_KEEPALIVE_S": str(KEEPALIVE_S),
           "CHIME_FAST_PATH": request.param}
    with ServerProcess(tmp_path_factory.mktemp("streams"), env) as process:
        yield process


@pytest.fixture
def reader(server: ServerProcess) -> Iterator[Reader]:
    reader = Reader(server)
    yield reader
    reader.close()


def test_sse_streams_live_events_with_keepalives_and_ends_after_the_terminal(reader: Reader) -> None:
    channel = reader.submit("a live answer")
    first = reader.sse(channel, stop_after=2)  # meta and the first delta
    assert reader.record(channel)["status"] == "running"  # ... arrived while the answer was running
    stream = reader.sse(channel)
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache, no-transform"
    assert stream.headers["x-accel-buffering"] == "no"
    assert stream.retry == ["retry: 2000"]
    assert ": keepalive" in stream.comments  # the model is quieter than the keepalive interval
    assert set(stream.comments) == {": keepalive"}
    assert stream.ended_by_server
    events = stream.events
    assert events[:2] == first.events and first.events[1]["event"] == "delta"
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "done" and [e for e in events if e["event"] in ("done", "error")] == events[-1:]
    assert reader.record(channel)["content"] == content_of(events)


def test_the_sse_body_starts_with_retry(reader: Reader, server: ServerProcess) -> None:
    channel = reader.submit("raw bytes")
    with httpx.stream("GET", f"{server.url}/api/channels/{channel}/events", headers=reader.auth,
                      timeout=10) as response:
        head = next(response.iter_raw())
    assert head.startswith(b"retry: 2000\nid: 1\nevent: meta\ndata: {") or head == b"retry: 2000\n"


def test_chat_with_accept_event_stream_streams_the_new_channel(reader: Reader, server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        with anonymous.stream("POST", "/api/chat", json={"message": "one request"},
                              headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            token = response.cookies["chime_token"]
            stream = SseStream(200, dict(response.headers))
            parse_sse_lines(response.iter_lines(), stream, None)
    assert stream.retry and stream.ended_by_server
    meta = stream.events[0]
    assert (meta["id"], meta["event"]) == (1, "meta")
    owner = Reader(server, token)
    try:
        channel = meta["data"]["channel"]
        assert owner.sse(channel).events == stream.events  # resumable later with the GET
        assert owner.record(channel)["content"] == content_of(stream.events)
    finally:
        owner.close()


def test_websocket_frames_match_sse_and_close_1000(reader: Reader) -> None:
    channel = reader.submit("over a websocket")
    frames, code = reader.ws(channel)
    assert code == 1000
    assert [set(frame) for frame in frames] == [{"id", "event", "data"}] * len(frames)
    assert frames[0]["event"] == "meta" and frames[-1]["event"] == "done"
    assert frames == reader.sse(channel).events
    resumed, code = reader.ws(channel, "?last_event_id=3")
    assert (resumed, code) == (frames[3:], 1000)
    at_end, code = reader.ws(channel, f"?last_event_id={frames[-1]['id']}")
    assert (at_end, code) == ([], 1000)


def test_websocket_cancel_ends_the_answer_cancelled(reader: Reader) -> None:
    channel = reader.submit("cancel me over the socket")
    frames, code = reader.ws(channel, send=[{"type": "presence", "visible": True}, {"type": "cancel"}])
    assert code == 1000
    assert frames[-1] == {"id": len(frames), "event": "cancelled", "data": {}}
    assert reader.record(channel)["status"] == "cancelled"


def test_websocket_close_codes(reader: Reader, server: ServerProcess) -> None:
    channel = reader.submit("close codes")
    path = f"/api/channels/{channel}/ws"
    stranger = Reader(server)
    try:
        for query in ("?last_event_id=-1", "?last_event_id=abc", "?last_event_id=1.5", "?last_event_id="):
            assert ws_close_code(server, path + query, reader.auth) == (4400, [])
        assert ws_close_code(server, path) == (4401, [])
        assert ws_close_code(server, path, {"Authorization": "Bearer unknown"}) == (4401, [])
        assert ws_close_code(server, path + "?access_token=unknown") == (4401, [])
        assert ws_close_code(server, path, stranger.auth) == (4404, [])
        assert ws_close_code(server, "/api/channels/no-such-channel/ws", reader.auth) == (4404, [])
        code, frames = ws_close_code(server, path + f"?access_token={reader.token}")
        assert code == 1000 and frames
        code, frames = ws_close_code(server, path, {"Cookie": f"chime_token={reader.token}"})
        assert code == 1000 and frames
    finally:
        stranger.close()


def test_long_poll_holds_for_the_next_event_and_says_finished(reader: Reader) -> None:
    channel = reader.submit("poll me")
    first = reader.poll(channel)
    assert first["events"][0]["event"] == "meta" and not first["finished"]
    latest = first["last_event_id"]
    held = reader.poll(channel, after=latest, wait=10)
    assert held["events"] and held["events"][0]["id"] == latest + 1
    assert held["last_event_id"] == held["events"][-1]["id"]
    events = first["events"] + held["events"]
    while True:
        page = reader.poll(channel, after=events[-1]["id"], wait=10)
        assert page["events"] or page["finished"]
        events += page["events"]
        if page["finished"]:
            break
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events == reader.sse(channel).events
    assert reader.poll(channel, after=events[-1]["id"], wait=10) == {
        "events": [], "last_event_id": events[-1]["id"], "finished": True}


def test_concurrent_readers_of_one_channel_see_identical_streams(reader: Reader) -> None:
    channel = reader.submit("many readers")
    results: dict[str, list] = {}

    def run(name: str, read) -> None:
        results[name] = read()

    readers = [threading.Thread(target=run, args=(f"sse{n}", lambda: reader.sse(channel).events)) for n in range(3)]
    readers += [threading.Thread(target=run, args=(f"ws{n}", lambda: reader.ws(channel)[0])) for n in range(2)]
    readers += [threading.Thread(target=run, args=("poll", lambda: reader.wait_finished(channel)))]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(30)
    assert set(results) == {"sse0", "sse1", "sse2", "ws0", "ws1", "poll"}
    reference = results["sse0"]
    assert reference[-1]["event"] == "done"
    assert all(events == reference for events in results.values())


def test_the_fast_path_is_off_only_when_asked(request: pytest.FixtureRequest, server: ServerProcess) -> None:
    off = request.node.callspec.params["server"] == "0"
    assert ("serving through Sanic's public API only" in server.log()) == off


def test_unknown_api_paths_and_methods_answer_json(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for method, path, status, code in (("GET", "/api/nope", 404, "not_found"),
                                           ("PUT", "/api/chat", 405, "method_not_allowed"),
                                           ("DELETE", "/api/users", 405, "method_not_allowed"),
                                           ("GET", "/api/chat", 405, "method_not_allowed")):
            response = client.request(method, path)
            assert response.status_code == status
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"]["code"] == code
