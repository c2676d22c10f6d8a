"""A crash (kill -9) and a restart on the same data directory lose nothing that was stored."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.channel_clients import Reader, content_of
from tests.support.server import ServerProcess


def test_every_stored_event_is_served_again_after_kill_9(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"CHIME_DEMO_DELAY_MS": "1"}).start()
    try:
        reader = Reader(server)
        first = reader.submit("the first answer")
        conversation = reader.record(first)["conversation_id"]
        channels = [first, reader.submit("a reply", conversation_id=conversation), reader.submit("another")]
        before = {channel: reader.wait_finished(channel) for channel in channels}
        records = {channel: reader.record(channel) for channel in channels}
        conversations = reader.http.get("/api/conversations", headers=reader.auth).json()
        reader.close()

        server.kill()
        server.start()

        again = Reader(server, reader.token)  # the user survived too
        try:
            for channel, events in before.items():
                assert again.sse(channel).events == events
                frames, code = again.ws(channel)
                assert (frames, code) == (events, 1000)
                assert again.poll(channel)["events"] == events
                assert again.record(channel) == records[channel]
                assert again.record(channel)["content"] == content_of(events)
                assert again.sse(channel, headers={"Last-Event-ID": "4"}).events == events[4:]
            assert again.http.get("/api/conversations", headers=again.auth).json() == conversations
            # New answers after the restart get fresh channels with ids from 1.
            fresh = again.submit("after the restart", conversation_id=conversation)
            events = again.wait_finished(fresh)
            assert [e["id"] for e in events] == list(range(1, len(events) + 1))
        finally:
            again.close()
    finally:
        server.__exit__()


def test_events_seen_before_a_crash_survive_it_and_the_answer_ends_interrupted(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {"CHIME_DEMO_DELAY_MS": "100"}).start()
    try:
        reader = Reader(server)
        channel = reader.submit("crash in the middle of this")
        seen = reader.sse(channel, stop_after=4).events  # meta and three deltas reached a client
        server.kill()
        server.start()
        again = Reader(server, reader.token)
        try:
            events = again.sse(channel).events
            assert events[:4] == seen
            assert [e["id"] for e in events] == list(range(1, len(events) + 1))
            assert events[-1]["event"] == "interrupted" and events[-1]["data"] == {"reason": "server_restart"}
            assert [e for e in events if e["event"] == "interrupted"] == events[-1:]
            record = again.record(channel)
            assert record["status"] == "interrupted" and record["content"] == content_of(events)
        finally:
            again.close()
            reader.close()
    finally:
        server.__exit__()
