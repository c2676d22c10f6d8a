"""Shared fixtures: Settings on a temporary data directory, the app, a real server process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sanic import Sanic

from settings import Settings
from tests.support.server import ServerProcess

Sanic.test_mode = True


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", demo_delay_ms=0, shutdown_grace_s=0.2)


@pytest.fixture
def app(settings: Settings) -> Iterator[Sanic]:
    from app import create_app

    Sanic._app_registry.clear()
    yield create_app(settings)
    Sanic._app_registry.clear()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """The real server process on a free loopback port, demo model at 2 ms a token."""
    with ServerProcess(tmp_path / "server") as process:
        yield process


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Start servers with extra environment: ``make_server({"CHIME_DEMO_DELAY_MS": "50"})``."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        process = ServerProcess(data_dir or tmp_path / f"server{len(started)}", env)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.__exit__()
