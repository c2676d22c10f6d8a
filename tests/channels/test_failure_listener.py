"""A batch that does not commit is told to ``on_failure``, so the hub can catch its readers up."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from channels.sqlite import SQLiteStore
from tests.support.waiting import async_wait_until


async def test_a_batch_that_fails_names_its_channels_to_on_failure(sqlite_store: SQLiteStore) -> None:
    store = sqlite_store
    await store.create_user("u", "hash")
    await store.create_conversation("c", "u", "title")
    await store.create_channel("ch", "u", "c", "demo")
    told: list[set[str]] = []
    store.on_failure = lambda channels: told.append(set(channels))
    real = store._write_events

    async def fail_once(events: Any) -> None:
        store._write_events = real  # type: ignore[method-assign]  # only this one commit fails
        raise sqlite3.OperationalError("disk I/O error")

    store._write_events = fail_once  # type: ignore[method-assign]  # a disk that fails one commit
    with pytest.raises(sqlite3.OperationalError):
        await store.append("ch", "delta", {"content": "lost"})
    await async_wait_until(lambda: told, 5, "on_failure to be told")
    assert told == [{"ch"}]
    event = await store.append("ch", "delta", {"content": "kept"})
    assert event.id == 2  # the failed event's id is taken again: no gap
