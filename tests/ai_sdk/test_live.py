"""``/api/ai`` streams read live from the real server process with httpx: the part ids of a
running answer are the same on every read, from any position."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson

from routes.encoders import ai_sdk as wire
from tests.support.server import ServerProcess

Part = tuple[int | None, Any]
MakeServer = Callable[..., ServerProcess]
READ_TIMEOUT_S = 30.0
LIVE_ENV = {"CHIME_DEMO_DELAY_MS": "30"}
QUESTION = {"id": "live", "trigger": "submit-message",
            "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "a live one"}]}]}


def read_parts(response: httpx.Response) -> Iterator[Part]:
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                data = fields["data"]
                yield (int(fields["id"]) if "id" in fields else None,
                       data if data == "[DONE]" else orjson.loads(data))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def client(server: ServerProcess) -> httpx.Client:
    token = httpx.post(f"{server.url}/api/users", timeout=10).json()["token"]
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=READ_TIMEOUT_S)


def first_parts(http: httpx.Client, count: int) -> list[Part]:
    """Ask, read ``count`` parts, and hang up: the answer runs on."""
    with http.stream("POST", "/api/ai/chat", json=QUESTION) as response:
        assert response.status_code == 200
        parts = []
        for part in read_parts(response):
            parts.append(part)
            if len(parts) == count:
                return parts
    raise AssertionError("the answer ended too soon")


def test_last_event_id_and_start_index_resume_a_running_answer_with_the_same_ids(make_server: MakeServer) -> None:
    server = make_server(LIVE_ENV)
    with client(server) as http:
        seen = first_parts(http, 8)
        with http.stream("GET", "/api/ai/chat/live/stream", headers={"Last-Event-ID": "7"}) as response:
            assert response.status_code == 200
            assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
            rest = list(read_parts(response))
        whole = seen + rest
        assert [index for index, _ in whole[:-1]] == list(range(len(whole) - 1)) and whole[-1] == (None, "[DONE]")
        with http.stream("GET", "/api/ai/chat/live/stream?startIndex=0") as response:
            assert list(read_parts(response)) == whole
        assert http.get("/api/ai/chat/live/stream").status_code == 204  # ended: nothing runs


def test_a_negative_start_index_on_a_running_answer_names_its_tail(make_server: MakeServer) -> None:
    server = make_server(LIVE_ENV)
    with client(server) as http:
        first_parts(http, 6)
        with http.stream("GET", "/api/ai/chat/live/stream?startIndex=-2") as response:
            assert response.status_code == 200
            tail = int(response.headers[wire.TAIL_INDEX_HEADER])
            parts = list(read_parts(response))
        assert tail >= 5
        assert parts[0][0] == tail - 1 and parts[-2][1]["type"] == "finish"
        assert [index for index, _ in parts[:-1]] == list(range(tail - 1, tail - 1 + len(parts) - 1))
        with http.stream("GET", "/api/ai/chat/live/stream?startIndex=0") as response:
            whole = list(read_parts(response))
        assert whole[tail - 1:] == parts
