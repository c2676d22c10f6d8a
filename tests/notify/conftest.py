"""Fixtures for the push tests: a loopback push service and the server's VAPID keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from notify.vapid import VapidKeys
from tests.support.push_service import PushService


@pytest.fixture
def push_service() -> Iterator[PushService]:
    with PushService() as service:
        yield service


@pytest.fixture
def vapid_keys(tmp_path: Path) -> VapidKeys:
    return VapidKeys.load_or_create(tmp_path / "keys")
