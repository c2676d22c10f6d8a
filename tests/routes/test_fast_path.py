"""The fast path is taken where it can be: an in-process server, a live SSE and WebSocket reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sanic import Sanic
from websockets.asyncio.client import connect

from channels.events import Event
from routes import sanic_internals
from settings import Settings
from tests.support.server import free_port

Writer = Any


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    from app import create_app

    Sanic._app_registry.clear()
    app = create_app(Settings(data_dir=tmp_path / "data", demo_delay_ms=2, shutdown_grace_s=0.1))
    port = free_port()
    server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.before_stop()
        await server.close()
        await server.after_stop()
        Sanic._app_registry.clear()


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[list[int]]:
    """Ids written through each direct writer ``name`` made."""
    written: list[list[int]] = []
    make = getattr(sanic_internals, name)

    def spying(connection: Any, encode: Any) -> Writer:
        write = make(connection, encode)
        assert write is not None, f"{name} gave no direct writer"

        def recording(events: list[Event]) -> bool:
            taken: bool = write(events)
            if taken:
                written.append([event.id for event in events])
            return taken
        return recording

    monkeypatch.setattr(sanic_internals, name, spying)
    return written


async def ask(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:
    token = (await client.post("/api/users")).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    channel = (await client.post("/api/chat", json={"message": "fast"}, headers=auth)).json()["channel"]
    return auth, channel


async def test_a_live_sse_reader_is_written_directly(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written = spy(monkeypatch, "direct_chunks")
    async with httpx.AsyncClient(base_url=f"http://{served}", timeout=10) as client:
        auth, channel = await ask(client)
        async with client.stream("GET", f"/api/channels/{channel}/events", headers=auth) as response:
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body.startswith(b"retry: 2000\nid: 1\nevent: meta\n") and b"event: done" in body
    assert written  # the live part of the answer went through the fast path


async def test_a_live_websocket_reader_is_written_directly(served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written = spy(monkeypatch, "direct_frames")
    async with httpx.AsyncClient(base_url=f"http://{served}", timeout=10) as client:
        auth, channel = await ask(client)
    async with connect(f"ws://{served}/api/channels/{channel}/ws", additional_headers=auth,
                       compression=None) as ws:
        frames = [message async for message in ws]
    assert '"event":"done"' in str(frames[-1])
    assert written
