"""Helpers for route tests through sanic-testing's client (one server start per request)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from sanic import Sanic

from settings import Settings

# Each counted thing and where its rows are: a channel's events wait in recent_events until folded.
TABLES = {"users": ("users",), "conversations": ("conversations",), "messages": ("messages",),
          "channels": ("channels",), "events": ("events", "recent_events"),
          "push_subscriptions": ("push_subscriptions",)}


class Api:
    """A thin caller of the app under test that returns sanic-testing responses."""

    def __init__(self, app: Sanic, settings: Settings):
        self.app = app
        self.settings = settings

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any):
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        _, response = getattr(self.app.test_client, method)(path, headers=headers, **kwargs)
        return response

    def get(self, path: str, token: str | None = None, **kwargs: Any):
        return self.call("get", path, token, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs: Any):
        return self.call("post", path, token, **kwargs)

    def delete(self, path: str, token: str | None = None, **kwargs: Any):
        return self.call("delete", path, token, **kwargs)

    def new_user(self) -> str:
        response = self.post("/api/users")
        assert response.status == 201, response.body
        return response.json["token"]

    def submit(self, token: str | None, message: str = "hello there", **fields: Any) -> dict[str, Any]:
        response = self.post("/api/chat", token, json={"message": message, **fields})
        assert response.status == 201, response.body
        return response.json

    def counts(self) -> dict[str, int]:
        """Rows in every table: what a refused request must leave unchanged."""
        if not self.settings.db_path.exists():
            return {table: 0 for table in TABLES}
        with sqlite3.connect(self.settings.db_path) as db:
            return {name: sum(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in tables)
                    for name, tables in TABLES.items()}


@pytest.fixture
def api(app: Sanic, settings: Settings) -> Api:
    return Api(app, settings)


@pytest.fixture
def make_api(settings: Settings) -> Iterator[Callable[..., Api]]:
    """An app with changed settings: ``make_api(max_body_bytes=4096)``."""
    from dataclasses import replace

    from app import create_app

    def make(**changes: Any) -> Api:
        Sanic._app_registry.clear()
        changed = replace(settings, **changes)
        return Api(create_app(changed), changed)

    yield make
    Sanic._app_registry.clear()


def cookie(token: str) -> dict[str, str]:
    """The headers of a browser that holds the ``chime_token`` cookie."""
    return {"Cookie": f"chime_token={token}"}


def assert_error(response, status: int, code: str) -> None:
    """The API's one error shape: JSON ``{"error": {"code", "message"}}`` with a message to act on."""
    assert response.status == status, response.body
    assert response.headers["content-type"].startswith("application/json")
    body = orjson.loads(response.body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"].strip()


def parse_sse(body: bytes) -> list[dict[str, Any]]:
    """Events of an SSE body as ``{"id", "event", "data"}``; comments and ``retry`` are left out."""
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
                      and not line.startswith("retry:"))
        if fields:
            assert set(fields) == {"id", "event", "data"}, block
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": orjson.loads(fields["data"])})
    return events
