"""Third-party SSE clients read a channel without phantom events; polling waits past the end.

httpx-sse and code that ``json.loads`` every message, and the Node ``eventsource``
package, must see exactly the channel's events: no empty ``message`` event for
the leading ``retry:`` or for a keepalive (API.md: SSE; README: Where the contract is silent).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.channel_clients import Reader
from tests.support.server import ROOT, ServerProcess

TYPES = {"meta", "delta", "usage", "done", "error", "cancelled", "interrupted"}
# The demo model is quieter than the keepalive interval, so keepalives fall between its tokens.
SLOW_ENV = {"CHIME_DEMO_DELAY_MS": "60", "CHIME_KEEPALIVE_S": "0.02"}


@pytest.fixture
def slow(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server(SLOW_ENV)


def test_httpx_sse_sees_every_event_and_no_phantom(slow: ServerProcess) -> None:
    reader = Reader(slow)
    channel = reader.submit("read me with httpx-sse")
    raw = httpx.get(f"{slow.url}/api/channels/{channel}/events", headers=reader.auth, timeout=30).text
    with httpx.Client(base_url=slow.url, headers=reader.auth, timeout=30) as http:
        channel = reader.submit("and once more, live")
        with connect_sse(http, "GET", f"/api/channels/{channel}/events") as source:
            events = list(source.iter_sse())
    assert ": keepalive" in raw  # keepalives were there to be mistaken for events
    assert [event.event for event in events if event.event not in TYPES] == []
    assert all(json.loads(event.data) is not None for event in events)  # what naive clients do
    assert [int(event.id) for event in events] == list(range(1, len(events) + 1))
    assert events[0].event == "meta" and events[0].retry == 2000 and events[-1].event == "done"
    assert reader.record(channel)["last_event_id"] == len(events)


def test_the_eventsource_package_dispatches_only_the_channels_events(slow: ServerProcess) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js is missing: bin/setup --test installs it"
    assert (ROOT / "node_modules" / "eventsource").exists(), "run bin/setup --test (npm ci)"
    reader = Reader(slow)
    channel = reader.submit("read me with eventsource")
    done = subprocess.run([node, str(ROOT / "tests" / "e2e" / "sse_client.mjs"),
                           f"{slow.url}/api/channels/{channel}/events", reader.token],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout)
    assert [e for e in seen if e["listener"] == "message"] == []
    assert [int(e["id"]) for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0]["listener"] == "meta" and seen[-1]["listener"] == "done"
    assert all(json.loads(e["data"]) is not None for e in seen)


def test_polling_past_the_end_of_a_running_channel_waits(slow: ServerProcess) -> None:
    reader = Reader(slow)
    channel = reader.submit("poll past my end")
    last = reader.record(channel)["last_event_id"]
    started = time.monotonic()
    page = reader.http.get(f"/api/channels/{channel}/events.json",
                           params={"after": last + 1000, "wait": "1"}, headers=reader.auth).json()
    held_s = time.monotonic() - started
    assert page == {"events": [], "last_event_id": last + 1000, "finished": False} or page["finished"]
    if not page["finished"]:
        assert held_s >= 0.9, held_s  # held for the whole wait, not answered at the next commit
