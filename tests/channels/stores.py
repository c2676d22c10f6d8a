"""Every ``Store`` implementation the contract suite runs against.

A kind knows how to open a store at a location (the same location again means
the same data) and how to list a channel's committed event ids through a
connection of its own, independent of the store under test. A new store joins
the suite by adding a ``StoreKind`` to ``STORE_KINDS``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from channels.sqlite_store import SQLiteStore
from channels.store import Store


@dataclass(frozen=True)
class StoreKind:
    name: str
    make: Callable[[Path], Store]
    committed_ids: Callable[[Path, str], list[int]]  # synchronous: usable inside on_commit


def _sqlite_path(location: Path) -> Path:
    return location / "chime.sqlite3"


def _sqlite_committed_ids(location: Path, channel: str) -> list[int]:
    with sqlite3.connect(_sqlite_path(location)) as db:
        rows = db.execute("SELECT id FROM events WHERE channel = ? ORDER BY id", (channel,)).fetchall()
    return [row[0] for row in rows]


STORE_KINDS: list[StoreKind] = [
    StoreKind("sqlite", lambda location: SQLiteStore(_sqlite_path(location)), _sqlite_committed_ids),
]
