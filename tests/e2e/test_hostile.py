"""Hostile clients against the real server process (API.md: Hostile clients and faults).

Slow requests meet a deadline counted from their first byte; a client that
hangs up during a submission leaves nothing or a whole answer; the service
caps the answers it runs; a stop survives repeated signals.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.test_models import API_KEY, model_env
from tests.support.openai_upstream import OpenAIUpstream, Reply
from tests.support.server import ServerProcess
from tests.support.waiting import wait_until

TERMINAL = {"done", "error", "cancelled", "interrupted"}


def read_response(sock: socket.socket, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    sock.settimeout(timeout_s)
    received = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    return received


def trickle(server: ServerProcess, first: bytes, rest: bytes, every_s: float) -> tuple[bytes, float]:
    """Send ``first``, then ``rest`` a byte at a time; the response and when it came."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    sock.sendall(first)
    sock.setblocking(False)
    answered = b""
    for byte in rest:
        deadline = time.monotonic() + every_s
        while time.monotonic() < deadline:  # read what the server says while waiting to send
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return answered, time.monotonic() - started
                answered += chunk
            except BlockingIOError:
                time.sleep(0.01)
            except ConnectionResetError:
                return answered, time.monotonic() - started
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.setblocking(True)
    answered += read_response(sock, 5)
    sock.close()
    return answered, time.monotonic() - started


def test_headers_that_trickle_in_get_408_from_the_first_byte(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"CHIME_REQUEST_TIMEOUT_S": "1"})
    answered, elapsed = trickle(server, b"GET /api/conversations HTTP/1.1\r\n",
                                b"X-Slow: " + b"a" * 200 + b"\r\n\r\n", every_s=0.1)
    assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
    assert b'"request_timeout"' in answered
    assert elapsed < 4, elapsed  # 1 s after the first byte, give or take the check interval


def test_a_body_that_trickles_in_gets_408_not_503(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"CHIME_REQUEST_TIMEOUT_S": "1"})
    body = b'{"message": "' + b"x" * 100 + b'"}'
    head = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    answered, elapsed = trickle(server, head, body, every_s=0.1)
    assert answered.startswith(b"HTTP/1.1 408"), answered[:200]
    assert elapsed < 4, elapsed
    with sqlite3.connect(server.data_dir / "chime.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM channels").fetchone() == (0,)


def test_a_slow_client_in_time_is_served(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"CHIME_REQUEST_TIMEOUT_S": "5"})
    answered, _ = trickle(server, b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\nConnection: close\r\n\r\n",
                          every_s=0.02)
    assert answered.startswith(b"HTTP/1.1 200"), answered[:200]


def hang_up_hard(port: int, request: bytes) -> None:
    """Send a whole request, then reset the connection (SO_LINGER 0) without reading a byte."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(request)
    sock.close()


def channel_logs(db_path: Path) -> dict[str, list[tuple[int, str]]]:
    """Every channel's (id, type) log, both queries read from one snapshot of the database."""
    with sqlite3.connect(db_path, isolation_level=None) as db:
        db.execute("BEGIN")  # the server goes on writing: channels and events from the same moment
        logs: dict[str, list[tuple[int, str]]] = {
            channel: [] for (channel,) in db.execute("SELECT id FROM channels")}
        for channel, id_, type_ in db.execute("SELECT channel, id, type FROM events UNION ALL "
                                              "SELECT channel, id, type FROM recent_events ORDER BY 1, 2"):
            logs[channel].append((id_, type_))
        db.execute("COMMIT")
    return logs


def test_a_client_that_hangs_up_during_a_submission_leaves_nothing_or_a_whole_answer(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"CHIME_DEMO_DELAY_MS": "1", "CHIME_NEW_USERS_PER_MINUTE": "1000",
                          "CHIME_MAX_RUNNING": "1000"})
    body = b'{"message": "hang up on me"}'
    request = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    for _ in range(80):
        hang_up_hard(server.port, request)
    db_path = server.data_dir / "chime.sqlite3"

    def all_ended() -> dict[str, list[tuple[int, str]]] | None:
        logs = channel_logs(db_path)
        return logs if logs and all(log and log[-1][1] in TERMINAL for log in logs.values()) else None

    logs = wait_until(all_ended, 30, "every channel that exists to reach its terminal event")
    for channel, log in logs.items():
        assert log[0] == (1, "meta"), (channel, log)
        assert [id_ for id_, _ in log] == list(range(1, len(log) + 1)), (channel, log)
        assert sum(type_ in TERMINAL for _, type_ in log) == 1, (channel, log)
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM users WHERE id NOT IN (SELECT user_id FROM channels)"
                          ).fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM messages WHERE channel NOT IN (SELECT id FROM channels)"
                          ).fetchone() == (0,)
    assert "Traceback" not in server.log()


def test_the_whole_service_runs_at_most_max_running_answers(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"CHIME_MAX_RUNNING": "2", "CHIME_DEMO_DELAY_MS": "200"})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(2):
            assert http.post("/api/chat", json={"message": "a long question"}).status_code == 201
        refused = http.post("/api/chat", json={"message": "one too many"})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert "set-cookie" not in refused.headers


def test_new_users_per_address_are_limited_and_a_refusal_leaves_no_trace(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"CHIME_NEW_USERS_PER_MINUTE": "3"})
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post("/api/users").status_code == 201
        assert http.post("/api/chat", json={"message": "anonymous"}).status_code == 201
        http.cookies.clear()
        assert http.post("/api/users").status_code == 201
        for refused in (http.post("/api/users"), http.post("/api/chat", json={"message": "one more"})):
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert "set-cookie" not in refused.headers
    with sqlite3.connect(server.data_dir / "chime.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM users").fetchone() == (3,)
        assert db.execute("SELECT COUNT(*) FROM channels").fetchone() == (1,)


def test_sigterm_during_a_stop_never_hangs_it(tmp_path: Path) -> None:
    """With a model endpoint set and answers running, SIGTERM twice (and thrice) still exits in time,
    and every running answer ends as interrupted."""
    slow = Reply(tokens=[f"t{n} " for n in range(400)], token_delay_s=0.05)
    with OpenAIUpstream(api_key=API_KEY, default=slow) as upstream:
        for attempt in range(6):
            server = ServerProcess(tmp_path / f"stop{attempt}", model_env(upstream, CHIME_SHUTDOWN_GRACE_S="0.5"))
            with server:
                with httpx.Client(base_url=server.url, timeout=10) as http:
                    token = http.post("/api/users").json()["token"]
                    http.headers["Authorization"] = f"Bearer {token}"
                    channels = [http.post("/api/chat", json={"message": f"question {n}"}).json()["channel"]
                                for n in range(3)]
                    for channel in channels:
                        wait_until(lambda: http.get(f"/api/channels/{channel}")  # noqa: B023  # called within this iteration
                                   .json()["last_event_id"] > 2, 10, "the answer to be under way")
                assert server.process is not None
                started = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.01 * attempt)  # the second signal lands at a different point of the stop each time
                server.process.send_signal(signal.SIGTERM)
                server.process.send_signal(signal.SIGINT)
                code = server.process.wait(15)
                assert time.monotonic() - started < 5, server.log()
                assert code == 0, server.log()
            logs = channel_logs(server.data_dir / "chime.sqlite3")
            for channel in channels:
                assert logs[channel][-1][1] == "interrupted", (attempt, logs[channel][-3:], server.log())
            assert "Traceback" not in server.log()
