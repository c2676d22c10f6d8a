"""Fixtures for the store suites: each test runs once per ``Store`` implementation."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from channels.hub import Hub
from channels.store import Store
from tests.channels.stores import STORE_KINDS, StoreKind


@pytest.fixture(params=STORE_KINDS, ids=lambda kind: kind.name)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    return request.param


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
