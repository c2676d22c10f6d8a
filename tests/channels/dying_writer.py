"""A database writer process that exits in the middle of every group commit, for the recovery tests.

``python -m tests.channels.dying_writer WHEN DATABASE WAL_LIMIT_BYTES FD FOLD_ROWS FOLD_AFTER_S``:
the writer of ``channels.sqlite`` (set ``WriterProcess.entry`` to ``dying_entry(WHEN)``), except
that each group commit exits the process ``before_commit`` (its rows inserted, the transaction
open) or ``after_commit`` (committed, no reply sent). Everything else it serves as usual.
"""

from __future__ import annotations

import os
import sys

from channels.sqlite.writer import SQL_INSERT_EVENT, EventRow, Writer, main

BEFORE_COMMIT, AFTER_COMMIT = "before_commit", "after_commit"


def dying_entry(when: str) -> tuple[str, ...]:
    """``WriterProcess.entry`` for a writer that dies ``when``."""
    assert when in (BEFORE_COMMIT, AFTER_COMMIT), when
    return ("-m", "tests.channels.dying_writer", when)


def _writer_dying(when: str) -> type[Writer]:
    class DyingWriter(Writer):
        def events(self, rows: list[EventRow]) -> None:
            if when == AFTER_COMMIT:
                super().events(rows)
            else:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(SQL_INSERT_EVENT, rows)
            os._exit(1)  # no reply, no cleanup: as a crash or SIGKILL would leave it

    return DyingWriter


if __name__ == "__main__":
    main(sys.argv[2:], _writer_dying(sys.argv[1]))
