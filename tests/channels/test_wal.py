"""The write-ahead log stays bounded while commits never pause."""

from __future__ import annotations

from pathlib import Path

from channels.events import DELTA, DONE
from channels.sqlite_store import SQLiteStore
from tests.channels.stores import new_channel

WAL_LIMIT_BYTES = 512 * 1024
CHECKPOINT_EVERY_EVENTS = 200
CHANNELS = 20
ROUNDS = 1_000  # 20,000 events in 1,000 small commits, as paced streams commit them
# What may be written past the limit before the catching-up checkpoint ends: commits go
# on during its first pass. Without it the WAL grows a page per event, past 100 MB here.
SLACK_BYTES = 16 * 1024 * 1024


async def test_the_wal_stays_bounded_while_commits_never_pause(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chime.sqlite3", checkpoint_every_events=CHECKPOINT_EVERY_EVENTS,
                        wal_limit_bytes=WAL_LIMIT_BYTES)
    await store.open()
    try:
        channels = [await new_channel(store) for _ in range(CHANNELS)]
        largest = 0
        for _ in range(ROUNDS):
            for channel in channels[:-1]:
                await store.append(channel, DELTA, {"content": "x"}, wait=False)
            await store.append(channels[-1], DELTA, {"content": "x"})  # one commit per round
            largest = max(largest, store.wal_bytes())
        for channel in channels:
            await store.append(channel, DONE, {"finish_reason": "stop"})
        stored = [await store.read_after(channel, 0, ROUNDS + 10) for channel in channels]
    finally:
        await store.close()
    assert largest <= WAL_LIMIT_BYTES + SLACK_BYTES, f"the WAL grew to {largest:,} bytes"
    for events in stored:
        assert [event.id for event in events] == list(range(1, ROUNDS + 3))
