"""Fixtures for the store suites: each test runs once per ``Store`` implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from channels.hub import Hub
from channels.sqlite import SQLiteStore
from channels.store import Store
from tests.channels.stores import STORE_KINDS, StoreKind
from tests.support import redis_server


@pytest.fixture(scope="session", autouse=True)
def _shared_redis_server() -> Iterator[None]:
    """The Redis the ``redis`` kind's stores use is started on first use and stopped here."""
    yield
    redis_server.stop_shared_server()


@pytest.fixture(params=STORE_KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    kind: StoreKind = request.param
    return kind


@pytest.fixture
def location(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
async def store(kind: StoreKind, location: Path) -> AsyncIterator[Store]:
    store = kind.make(location)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def hub(store: Store) -> Hub:
    """A hub told of every commit of ``store``, as the app wires them."""
    hub = Hub()
    store.on_commit = hub.publish
    return hub


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """For what only the SQLite store has (its file, its writer process); ``store.path`` is the database."""
    store = SQLiteStore(tmp_path / "chime.sqlite3")
    await store.open()
    yield store
    await store.close()
