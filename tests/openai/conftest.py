"""A real Chime server process (demo model) and OpenAI's own SDK, sync and async, pointed at its /v1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.server import ServerProcess

# Slow enough that an answer (~90 tokens) is still running when a test reads it partway.
DEMO_DELAY_MS = "15"
CLIENT_TIMEOUT_S = 20.0


def new_token(server: ServerProcess) -> str:
    response = httpx.post(f"{server.url}/api/users", timeout=CLIENT_TIMEOUT_S)
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def sdk(server: ServerProcess, token: str) -> openai.OpenAI:
    # No retries: a test sees each answer the server gives, not the SDK's second try.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def async_sdk(server: ServerProcess, token: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0, timeout=CLIENT_TIMEOUT_S)


class Native:
    """The same user on Chime's own API."""

    def __init__(self, server: ServerProcess, token: str):
        self.http = httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S,
                                 headers={"Authorization": f"Bearer {token}"})

    def channel(self, channel: str) -> dict[str, Any]:
        response = self.http.get(f"/api/channels/{channel}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def conversations(self) -> list[dict[str, Any]]:
        conversations: list[dict[str, Any]] = self.http.get("/api/conversations").json()["conversations"]
        return conversations

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/api/conversations/{conversation_id}").json()
        return body

    def sse_events(self, channel: str) -> list[tuple[str, dict[str, Any]]]:
        """Every event of the channel over the native SSE endpoint, to its end."""
        events = []
        kind = ""
        with self.http.stream("GET", f"/api/channels/{channel}/events") as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, httpx.Response(200, content=line[6:]).json()))
        return events


@pytest.fixture(scope="module")
def chime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CHIME_DEMO_DELAY_MS": DEMO_DELAY_MS, "CHIME_NEW_USERS_PER_MINUTE": "1000",
           "CHIME_SUBMISSIONS_PER_MINUTE": "1000"}
    with ServerProcess(Path(tmp_path_factory.mktemp("chime-v1")), env) as process:
        yield process


@pytest.fixture
def token(chime: ServerProcess) -> str:
    return new_token(chime)


@pytest.fixture
def client(chime: ServerProcess, token: str) -> Iterator[openai.OpenAI]:
    with sdk(chime, token) as sync_client:
        yield sync_client


@pytest.fixture
async def async_client(chime: ServerProcess, token: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with async_sdk(chime, token) as client:
        yield client


@pytest.fixture
def native(chime: ServerProcess, token: str) -> Iterator[Native]:
    user = Native(chime, token)
    yield user
    user.http.close()
