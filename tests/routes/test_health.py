"""``/healthz`` and every write answer 503 with Retry-After, within 10 s, while another process holds the database."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest

from tests.routes.conftest import Api, assert_error

# API.md: "within 10 seconds".
WITHIN_S = 10.0


@pytest.fixture
def locked(api: Api) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock, as a backup or a second server would."""
    api.new_user()  # the database exists
    holder = sqlite3.connect(api.settings.db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        holder.close()


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_healthz_is_ok_while_the_store_can_be_written(api: Api) -> None:
    response = api.get("/healthz")
    assert response.status == 200 and response.json == {"status": "ok"}


def test_a_locked_database_is_503_for_healthz_and_writes_within_10_s_and_ok_once_released(
        api: Api, locked: sqlite3.Connection) -> None:
    health, health_s = timed(lambda: api.get("/healthz"))
    assert_error(health, 503, "unavailable")
    assert 1 <= int(health.headers["retry-after"]) <= 10
    assert health_s < WITHIN_S, f"/healthz took {health_s:.1f}s"

    before = api.counts()
    sign_up, sign_up_s = timed(lambda: api.post("/api/users"))
    assert_error(sign_up, 503, "unavailable")
    assert 1 <= int(sign_up.headers["retry-after"]) <= 10
    assert sign_up_s < WITHIN_S, f"POST /api/users took {sign_up_s:.1f}s"

    locked.execute("ROLLBACK")
    assert api.counts() == before  # the refused sign-up did not land after all
    assert api.get("/healthz").status == 200
    assert api.post("/api/users").status == 201
    assert api.counts()["users"] == before["users"] + 1
