"""What an operator meets: a start that refuses bad configuration in one line, backup and restore.

Everything runs through the real ``python app.py`` process and its exit code.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.channel_clients import Reader, content_of
from tests.support.server import ROOT, ServerProcess, free_port
from tests.support.waiting import wait_until

# Slow enough that an answer is still running when its backup has been taken.
SLOW_DEMO = {"CHIME_DEMO_DELAY_MS": "150"}


def run_app(env: Mapping[str, str], *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python app.py [args]`` with only ``env`` of Chime's variables set."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CHIME_", "OPENAI_", "SANIC_"))}
    environment.update(env)
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def refusal(env: Mapping[str, str]) -> str:
    """The one line a refused start prints; fails unless it exits 2 with just that line."""
    result = run_app({"CHIME_PORT": str(free_port()), **env})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chime: ")
    return lines[0]


@pytest.mark.parametrize(("env", "says"), [
    ({"CHIME_LOG_LEVEL": "verbose"}, ["CHIME_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR"]),
    ({"CHIME_HOST": "not-a-host.invalid"}, ["CHIME_HOST", "not-a-host.invalid"]),
    ({"OPENAI_BASE_URL": "localhost:11434"}, ["OPENAI_BASE_URL", "http://localhost:11434/v1"]),
    ({"CHIME_MAX_TOKENS": "-5"}, ["CHIME_MAX_TOKENS"]),
    ({"CHIME_TEMPERATURE": "5"}, ["CHIME_TEMPERATURE", "0 to 2"]),
    ({"CHIME_MODEL": "llama3.2"}, ["CHIME_MODEL", "demo", "OPENAI_BASE_URL", "OPENAI_API_KEY"]),
], ids=["log-level", "host", "base-url", "max-tokens", "temperature", "model-without-endpoint"])
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(tmp_path: Path, env: dict[str, str],
                                                               says: list[str]) -> None:
    line = refusal({"CHIME_DATA_DIR": str(tmp_path / "data"), **env})
    for words in says:
        assert words in line


def test_a_port_in_use_stops_the_start_with_one_line(tmp_path: Path, port_in_use: int) -> None:
    line = refusal({"CHIME_DATA_DIR": str(tmp_path / "data"), "CHIME_PORT": str(port_in_use)})
    assert f"CHIME_PORT={port_in_use}" in line and "in use" in line


def test_a_data_dir_that_cannot_be_created_stops_the_start_with_one_line(tmp_path: Path) -> None:
    # Tests run as root, whom permissions do not stop: nothing can be created under a file.
    (tmp_path / "file").write_text("not a directory")
    data_dir = tmp_path / "file" / "data"
    line = refusal({"CHIME_DATA_DIR": str(data_dir)})
    assert f"CHIME_DATA_DIR='{data_dir}'" in line
    assert not data_dir.exists()


def test_a_second_server_on_the_same_data_dir_is_refused(server: ServerProcess) -> None:
    line = refusal({"CHIME_DATA_DIR": str(server.data_dir)})
    assert "CHIME_DATA_DIR" in line and f"pid {server.process.pid}" in line  # type: ignore[union-attr]
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200  # and the first one goes on


def test_the_demo_model_may_be_named(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", {"CHIME_MODEL": "demo"}) as process:
        assert "model 'demo' (offline demo)" in process.log()


def test_a_backup_of_a_server_mid_answer_restores_into_a_server_that_sees_all_of_it(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "live", SLOW_DEMO) as live:
        reader = Reader(live)
        try:
            # One conversation already ended, one answer still streaming when the backup is taken.
            ended = reader.submit("a question answered before the backup")
            wait_until(lambda: len(reader.poll(ended)["events"]) >= 3, 20, "the first answer to begin")
            assert reader.http.post(f"/api/channels/{ended}/cancel", headers=reader.auth).status_code == 202
            ended_events = reader.wait_finished(ended)
            running = reader.submit("a question still being answered during the backup")
            wait_until(lambda: len(reader.poll(running)["events"]) >= 5, 20, "the second answer to stream")
            before = reader.poll(running)["events"]

            result = run_app({"CHIME_DATA_DIR": str(live.data_dir)}, "backup", str(tmp_path / "backup"))

            assert result.returncode == 0, result.stderr
            assert "2 conversations (2 answers, 1 running)" in result.stdout
            after = reader.poll(running)["events"]
            assert reader.record(running)["status"] == "running", "the backup was not taken mid-answer"
        finally:
            reader.close()
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["chime.sqlite3", "vapid_private_key.pem"]

    restored_dir = tmp_path / "restored"
    result = run_app({"CHIME_DATA_DIR": str(restored_dir)}, "restore", str(tmp_path / "backup"))
    assert result.returncode == 0, result.stderr
    assert "end as interrupted" in result.stdout
    assert ((restored_dir / "vapid_private_key.pem").read_bytes()
            == (live.data_dir / "vapid_private_key.pem").read_bytes())

    with ServerProcess(restored_dir) as restored:
        again = Reader(restored, reader.token)  # the user, and its token, came back too
        try:
            titles = [c["title"] for c in again.http.get("/api/conversations", headers=again.auth).json()
                      ["conversations"]]
            assert sorted(titles) == sorted(["a question answered before the backup",
                                             "a question still being answered during the backup"])
            assert again.wait_finished(ended) == ended_events
            events = again.wait_finished(running)
            stored, last = events[:-1], events[-1]
            # Everything stored before the backup began is there, and nothing that was not yet stored.
            assert len(before) <= len(stored) <= len(after) and stored == after[:len(stored)]
            assert last == {"id": len(events), "event": "interrupted", "data": {"reason": "server_restart"}}
            record = again.record(running)
            assert record["status"] == "interrupted" and record["content"] == content_of(events)
        finally:
            again.close()


def test_restore_refuses_while_a_server_runs_on_the_data_dir(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "live") as live:
        reader = Reader(live)
        try:
            reader.wait_finished(reader.submit("kept"))
            assert run_app({"CHIME_DATA_DIR": str(live.data_dir)}, "backup", str(tmp_path / "backup")).returncode == 0
            reader.wait_finished(reader.submit("written after the backup"))
            result = run_app({"CHIME_DATA_DIR": str(live.data_dir)}, "restore", str(tmp_path / "backup"))
            assert result.returncode == 1 and "Traceback" not in result.stderr
            assert "stop the server" in result.stderr and f"pid {live.process.pid}" in result.stderr  # type: ignore[union-attr]
            titles = {c["title"] for c in reader.http.get("/api/conversations", headers=reader.auth).json()
                      ["conversations"]}
            assert titles == {"kept", "written after the backup"}  # the live database was not touched
        finally:
            reader.close()
    assert not list(live.data_dir.glob("*.replaced-*"))

    # Stopped, the same restore goes ahead and keeps what it replaced.
    result = run_app({"CHIME_DATA_DIR": str(live.data_dir)}, "restore", str(tmp_path / "backup"))
    assert result.returncode == 0, result.stderr
    replaced = [p for p in live.data_dir.glob("chime.sqlite3.replaced-*") if not p.name.endswith("-wal")]
    assert replaced and replaced[0].name in result.stdout
    assert _titles(live.data_dir / "chime.sqlite3") == ["kept"]
    assert sorted(_titles(replaced[0])) == ["kept", "written after the backup"]


def _titles(path: Path) -> list[Any]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT title FROM conversations")]
    finally:
        db.close()

