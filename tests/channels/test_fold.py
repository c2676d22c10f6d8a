"""Events wait in ``recent_events`` and are folded into ``events`` in pieces; reads see each exactly once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from channels.events import DELTA, DONE
from channels.sqlite import SQLiteStore
from channels.sqlite.log import SQL_LAST_ID, SQL_READ_AFTER
from channels.sqlite.schema import MIGRATIONS
from channels.sqlite.writer import Writer, connect
from tests.channels.stores import new_channel
from tests.support.waiting import async_wait_until

DATA = b'{"content":"x"}'


def _writer(path: Path, **options: float) -> Writer:
    writer = Writer(connect(path, 64 << 20), **options)  # type: ignore[arg-type]
    writer.migrate(MIGRATIONS)
    return writer


def _count(db: sqlite3.Connection, table: str) -> int:
    return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _ids(db: sqlite3.Connection, channel: str) -> list[int]:
    return [row[0] for row in db.execute(SQL_READ_AFTER, (channel, 0, 100_000))]


def test_a_fold_runs_in_pieces_between_commits_and_every_read_sees_each_event_once(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "chime.sqlite3", fold_rows=60, fold_after_s=3600, fold_pieces=4)
    db = writer.db
    channels = [f"channel-{n:02d}" for n in range(12)]
    pieces_run = 0
    for round_ in range(1, 21):  # a token for every channel per commit, as paced streams commit
        writer.events([(channel, round_, DELTA, DATA) for channel in channels])
        if not writer.folding and writer.fold_due():
            writer.start_fold()
        if writer.folding:  # one piece per commit, as the serve loop takes turns
            writer.fold_piece()
            pieces_run += 1
        for channel in channels:
            assert _ids(db, channel) == list(range(1, round_ + 1))
            assert db.execute(SQL_LAST_ID, (channel,)).fetchone()[0] == round_
        if not writer.folding:
            assert writer.recent == _count(db, "recent_events")
    assert pieces_run >= 8 and _count(db, "events") > 0  # folds happened, piece by piece

    writer.start_fold()
    while writer.folding:
        writer.fold_piece()
    assert (_count(db, "recent_events"), _count(db, "events"), writer.recent) == (0, 240, 0)
    assert all(_ids(db, channel) == list(range(1, 21)) for channel in channels)


def test_rows_a_previous_writer_left_are_folded_when_the_next_starts(tmp_path: Path) -> None:
    path = tmp_path / "chime.sqlite3"
    first = _writer(path, fold_rows=1_000_000, fold_after_s=3600)
    first.events([(f"c{n}", 1, DELTA, DATA) for n in range(50)])
    assert _count(first.db, "recent_events") == 50
    first.db.close()  # as a writer killed before its fold

    second = _writer(path)
    assert (_count(second.db, "recent_events"), _count(second.db, "events"), second.recent) == (0, 50, 0)


def test_rows_deleted_with_their_conversation_leave_no_fold_pending(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "chime.sqlite3", fold_rows=5, fold_after_s=3600)
    writer.events([("gone", n, DELTA, DATA) for n in range(1, 11)])
    writer.statements([("DELETE FROM recent_events WHERE channel = ?", ("gone",))])
    assert writer.fold_due()
    writer.start_fold()
    while writer.folding:
        writer.fold_piece()
    assert writer.recent == 0 and not writer.fold_due()  # the serve loop would otherwise spin


async def test_the_writer_process_folds_once_nothing_is_written_for_a_moment(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chime.sqlite3", fold_after_s=0.05)
    await store.open()
    try:
        channel = await new_channel(store)
        for n in range(30):
            await store.append(channel, DELTA, {"content": f"{n} "}, wait=False)
        await store.append(channel, DONE, {"finish_reason": "stop"})

        def recent() -> int:
            with sqlite3.connect(store.path) as db:
                return _count(db, "recent_events")

        await async_wait_until(lambda: recent() == 0, timeout_s=10, what="the idle fold")
        assert [e.id for e in await store.read_after(channel, 0)] == list(range(1, 33))
        assert await store.channel_content(channel) == "".join(f"{n} " for n in range(30))
    finally:
        await store.close()


def test_a_new_channels_meta_row_is_counted_for_the_fold(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "chime.sqlite3", fold_rows=3, fold_after_s=3600)
    for n in range(3):  # as create_answer sends them: the channel's rows, then its meta event
        writer.statements([("SELECT 1", ())], [(f"c{n}", 1, "meta", DATA)])
    assert writer.recent == _count(writer.db, "recent_events") == 3
    assert writer.fold_due()
    writer.start_fold()
    while writer.folding:
        writer.fold_piece()
    assert (_count(writer.db, "recent_events"), _count(writer.db, "events"), writer.recent) == (0, 3, 0)
