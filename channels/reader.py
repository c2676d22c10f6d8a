"""The one replay-then-live reader: SSE, WebSocket and polling all read through it.

It yields lists of events in id order, starting after the resume point: first
what is already stored, then live events as they are committed. An empty list
means the stream has been quiet for ``keepalive_s`` (a poll's wait: its
answer is then empty). It stops after the terminal event, when the channel is
deleted, or when the server shuts down.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from channels.events import Event
from channels.hub import DirectWrite, Feed, Hub, LogReader

REPLAY_PAGE_EVENTS = 2_000


async def replay_then_live(store: LogReader, hub: Hub, channel: str, after: int, keepalive_s: float | None,
                           direct: DirectWrite | None = None, feed: Feed | None = None
                           ) -> AsyncGenerator[list[Event], None]:
    """See the module docstring. With ``direct``, live events once caught up are written
    through it as they are committed and not yielded (see ``Feed.follow``). ``feed``: the
    channel's feed, already attached by the caller (``Hub.attach``); it is released here."""
    if feed is None:
        feed = await hub.attach(channel)  # other processes' commits reach it before the store is read
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
