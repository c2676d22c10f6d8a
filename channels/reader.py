"""The one replay-then-live reader shared by SSE, WebSocket and polling.

It yields lists of events in id order, starting after the resume point: first
what is already stored, then live events as they are committed. An empty list
means the stream has been quiet for the keepalive interval. It stops after the
terminal event, or when the server shuts down.
"""

from __future__ import annotations

from typing import AsyncIterator

from channels.events import Event
from channels.hub import DirectWrite, Hub
from channels.store import Store

REPLAY_PAGE_EVENTS = 2_000


async def replay_then_live(store: Store, hub: Hub, channel: str, after: int, keepalive_s: float | None,
                           direct: DirectWrite | None = None) -> AsyncIterator[list[Event]]:
    """See the module docstring. With ``direct``, live events once caught up are written
    through it as they are committed and not yielded (see ``Feed.follow``)."""
    feed = hub.acquire(channel)
    try:
        while not hub.shutting_down:
            batch = feed.since(after, REPLAY_PAGE_EVENTS)
            if batch is None:
                # Behind the tail, or the feed has seen no commit yet: the store is the truth.
                batch = await store.read_after(channel, after, REPLAY_PAGE_EVENTS)
            if batch:
                yield batch
                after = batch[-1].id
                if batch[-1].terminal:
                    return
                continue
            if feed.closed and not feed.has_after(after):
                return  # the channel was deleted under the reader
            if hub.shutting_down:
                return  # shutdown woke the feed while the store was read: that wake-up is spent
            if direct is not None:
                after, quiet = await feed.follow(after, keepalive_s, direct)
                if quiet:
                    yield []
            elif not await feed.wait(after, keepalive_s):
                yield []
    finally:
        hub.release(feed)


async def read_once(store: Store, hub: Hub, channel: str, after: int, wait_s: float,
                    limit: int = REPLAY_PAGE_EVENTS) -> list[Event]:
    """Events after ``after``, at once if there are any, else the first to come within ``wait_s``."""
    events = await store.read_after(channel, after, limit)
    if events or wait_s <= 0:
        return events
    feed = hub.acquire(channel)
    try:
        events = await store.read_after(channel, after, limit)
        if events or hub.shutting_down:  # a stopping server holds no request
            return events
        if await feed.wait(after, wait_s) and not hub.shutting_down:
            events = feed.since(after, limit) or await store.read_after(channel, after, limit)
        return events
    finally:
        hub.release(feed)
