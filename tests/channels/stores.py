"""Every ``Store`` implementation the contract suites run against.

A kind knows how to open a store at a location (the same location again means
the same data) and how to list a channel's committed event ids through a
connection of its own, independent of the store under test. A new store joins
the suite by adding a ``StoreKind`` to ``STORE_KINDS``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis

from channels.events import DELTA, DONE, Event
from channels.redis import RedisStore
from channels.redis.keys import Keys
from channels.sqlite import SQLiteStore
from channels.store import ChannelRecord, Store
from tests.support import redis_server


@dataclass(frozen=True)
class StoreKind:
    name: str
    make: Callable[[Path], Store]
    committed_ids: Callable[[Path, str], list[int]]  # synchronous: usable inside on_commit


def _sqlite_path(location: Path) -> Path:
    return location / "chime.sqlite3"


def _sqlite_committed_ids(location: Path, channel: str) -> list[int]:
    with sqlite3.connect(_sqlite_path(location)) as db:
        rows = db.execute("SELECT id FROM events WHERE channel = ?1 UNION ALL "
                          "SELECT id FROM recent_events WHERE channel = ?1 ORDER BY id", (channel,)).fetchall()
    return [row[0] for row in rows]


def _redis_store(location: Path) -> RedisStore:
    """A store on the session's Redis, under the prefix of ``location``."""
    return RedisStore(redis_server.shared_server().url, prefix=redis_server.prefix_for(location))


_redis_clients: dict[str, redis.Redis] = {}


def _redis_committed_ids(location: Path, channel: str) -> list[int]:
    url = redis_server.shared_server().url
    client = _redis_clients.get(url)
    if client is None:
        client = _redis_clients[url] = redis.Redis.from_url(url, socket_timeout=5.0)
    entries: list[tuple[bytes, dict]] = client.xrange(  # type: ignore[assignment]  # bytes: nothing is decoded
        Keys(redis_server.prefix_for(location)).log(channel))
    return [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]


STORE_KINDS: list[StoreKind] = [
    StoreKind("sqlite", lambda location: SQLiteStore(_sqlite_path(location)), _sqlite_committed_ids),
    StoreKind("redis", _redis_store, _redis_committed_ids),
]


# ---- records a test needs, made through the protocol -------------------------

def new_id() -> str:
    return uuid.uuid4().hex


async def new_user(store: Store) -> str:
    user = new_id()
    await store.create_user(user, f"hash-{user}")
    return user


async def new_channel(store: Store, user: str | None = None, conversation: str | None = None) -> str:
    """A running channel with its turn recorded, as POST /api/chat makes one."""
    user = user or await new_user(store)
    if conversation is None:
        conversation = (await store.create_conversation(new_id(), user, "a title")).id
    channel = new_id()
    await store.create_channel(channel, user, conversation, "demo")
    await store.add_turn(conversation, "the question", channel)
    return channel


@dataclass(frozen=True)
class Kept:
    """What ``keep_some_of_everything`` stored: checked again after a restart."""

    user: str
    conversation: str
    finished: str  # its answer is the given text, then done
    running: str   # ten deltas, ids 2..11, still running
    events: dict[str, list[Event]]  # both channels' events as stored


async def keep_some_of_everything(store: Store, answer: str) -> Kept:
    """A user with a conversation, a finished answer, a running one and a push subscription."""
    user = await new_user(store)
    conversation = (await store.create_conversation(new_id(), user, "kept")).id
    finished = await new_channel(store, user, conversation)
    await store.append(finished, DELTA, {"content": answer})
    await store.append(finished, DONE, {"finish_reason": "stop"})
    running = await new_channel(store, user, conversation)
    await asyncio.gather(*(store.append(running, DELTA, {"content": str(n)}) for n in range(10)))
    await store.save_subscription(user, "https://push.example/a", "k", "a")
    events = {channel: await store.read_after(channel, 0) for channel in (finished, running)}
    return Kept(user, conversation, finished, running, events)


async def record_of(store: Store, channel: str) -> ChannelRecord:
    """The record of a channel that must exist."""
    record = await store.get_channel(channel)
    assert record is not None, channel
    return record


def is_utc_iso(value: str | None) -> bool:
    """Whether ``value`` is an ISO 8601 time in UTC, as every stored time must be."""
    if value is None:
        return False
    offset = datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset()
    return offset is not None and offset.total_seconds() == 0
