"""Real clients of a channel for end-to-end tests: SSE over httpx streaming, WebSocket, polling."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support.server import ServerProcess

READ_TIMEOUT_S = 10.0


@dataclass
class SseStream:
    """What one SSE response carried, in order."""

    status: int
    headers: dict[str, str]
    retry: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    ended_by_server: bool = False


def parse_sse_lines(lines: Iterator[str], stream: SseStream, stop_after: int | None) -> None:
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            stream.comments.append(line)
        elif line.startswith("retry:"):
            stream.retry.append(line)
        elif line:
            name, _, value = line.partition(": ")
            assert name not in fields, f"field {name} repeated in one event"
            fields[name] = value
        elif fields:
            assert set(fields) == {"id", "event", "data"}, fields
            stream.events.append({"id": int(fields["id"]), "event": fields["event"],
                                  "data": orjson.loads(fields["data"])})
            fields = {}
            if stop_after is not None and len(stream.events) >= stop_after:
                return
    stream.ended_by_server = True


class Reader:
    """One user's view of a server: a token and sync httpx client."""

    def __init__(self, server: ServerProcess, token: str | None = None):
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S)
        self.token = token or self.http.post("/api/users").json()["token"]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def close(self) -> None:
        self.http.close()

    def submit(self, message: str = "hello", **fields: Any) -> str:
        response = self.http.post("/api/chat", headers=self.auth, json={"message": message, **fields})
        assert response.status_code == 201, response.text
        return response.json()["channel"]

    def record(self, channel: str) -> dict[str, Any]:
        response = self.http.get(f"/api/channels/{channel}", headers=self.auth)
        assert response.status_code == 200, response.text
        return response.json()

    def sse(self, channel: str, headers: dict[str, str] | None = None, stop_after: int | None = None,
            query: str = "") -> SseStream:
        """Read the SSE stream until the server ends it, or disconnect after ``stop_after`` events."""
        url = f"/api/channels/{channel}/events{query}"
        with self.http.stream("GET", url, headers={**self.auth, **(headers or {})}) as response:
            stream = SseStream(response.status_code, dict(response.headers))
            if response.status_code == 200:
                parse_sse_lines(response.iter_lines(), stream, stop_after)
        return stream

    def ws(self, channel: str, query: str = "", stop_after: int | None = None,
           send: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Frames received, and the close code (None when the client left first)."""
        url = f"{self.server.ws_url}/api/channels/{channel}/ws{query}"
        frames: list[dict[str, Any]] = []
        with connect(url, additional_headers=self.auth, open_timeout=READ_TIMEOUT_S) as ws:
            for message in send or []:
                ws.send(orjson.dumps(message).decode())
            try:
                while stop_after is None or len(frames) < stop_after:
                    frames.append(orjson.loads(ws.recv(timeout=READ_TIMEOUT_S)))
            except ConnectionClosed as closed:
                return frames, closed.rcvd.code if closed.rcvd else None
        return frames, None

    def poll(self, channel: str, after: int = 0, wait: float = 0) -> dict[str, Any]:
        response = self.http.get(f"/api/channels/{channel}/events.json", headers=self.auth,
                                 params={"after": after, "wait": wait})
        assert response.status_code == 200, response.text
        return response.json()

    def wait_finished(self, channel: str) -> list[dict[str, Any]]:
        """Every event of the channel, once it has ended (long-polls, no sleeping)."""
        events: list[dict[str, Any]] = []
        while True:
            page = self.poll(channel, events[-1]["id"] if events else 0, wait=5)
            events += page["events"]
            if page["finished"]:
                return events


def ws_close_code(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> tuple[int, list]:
    """Connect, read until the server closes; the close code and any frames."""
    frames = []
    with connect(f"{server.ws_url}{path}", additional_headers=headers or {}, open_timeout=READ_TIMEOUT_S) as ws:
        try:
            while True:
                frames.append(ws.recv(timeout=READ_TIMEOUT_S))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "the server closed without a close frame"
            return closed.rcvd.code, frames


def content_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["content"] for e in events if e["event"] == "delta")
