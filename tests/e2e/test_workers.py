"""``CHIME_WORKERS=N``: several worker processes on one port, one service (API.md, "Several processes").

Which worker answers a request is the kernel's choice. ``/metrics`` counts each
scrape per answering process (``chime_metrics_scrapes_total{pid}``), so the scrapes
themselves show which workers answered and that one worker's scrape covers the others.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.channel_clients import SseStream, parse_sse_lines
from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, ServerProcess, free_port
from tests.support.waiting import async_wait_until, wait_until

WORKERS = 2
START_TIMEOUT_S = 60.0  # N fresh interpreters import everything before the first answer
WAIT_S = 30.0
SCRAPES_PER_ROUND = 8
SUBMISSIONS = 6
# One user submits every answer: the per-user limits are not what this file tests.
WORKERS_ENV = {"CHIME_WORKERS": str(WORKERS), "CHIME_MAX_RUNNING_PER_USER": "64",
               "CHIME_SUBMISSIONS_PER_MINUTE": "600"}
SCRAPES = re.compile(r'^chime_metrics_scrapes_total\{pid="(\d+)"\} (\S+)$', re.MULTILINE)
TYPES = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


class WorkersServer(ServerProcess):
    """``python app.py`` with workers, in a session of its own: stopping it can be checked to
    leave no worker behind, and a test that fails still kills every one of them."""

    def start(self, timeout_s: float = START_TIMEOUT_S) -> WorkersServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT,
                                            env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_until(self._ready, timeout_s, f"the server on port {self.port} to answer /healthz")
        return self

    def environment(self) -> dict[str, str]:
        # The server's metrics directory, and one a killed server leaves behind, stay in the test's.
        return {"TMPDIR": str(self.scratch), **super().environment()}

    @property
    def scratch(self) -> Path:
        path = self.data_dir / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __enter__(self) -> WorkersServer:
        return self.start()

    @property
    def group(self) -> int:
        assert self.process is not None
        return self.process.pid  # a session leader's pid is its process group's id

    def group_alive(self) -> bool:
        try:
            os.killpg(self.group, 0)
        except ProcessLookupError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.group_alive():
            os.killpg(self.group, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            self.process.wait(10)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def run_app(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CHIME_", "OPENAI_", "SANIC_"))}
    return subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env={**environment, **env},
                          capture_output=True, text=True, timeout=60)


def test_workers_without_redis_refuse_to_start_and_say_why(tmp_path: Path) -> None:
    result = run_app({"CHIME_WORKERS": "2", "CHIME_DATA_DIR": str(tmp_path / "data"), "CHIME_PORT": str(free_port())})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("chime: CHIME_WORKERS=2") and "CHIME_REDIS_URL" in line


def scrape_counts(text: str) -> dict[str, float]:
    """``chime_metrics_scrapes_total`` by answering pid."""
    return {pid: float(value) for pid, value in SCRAPES.findall(text)}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def gauge_names(text: str) -> set[str]:
    return {name for name, kind in TYPES.findall(text) if kind == "gauge"}


async def scrape_on_new_connections(url: str, count: int) -> list[str]:
    """``count`` scrapes at once, each on a connection of its own, so either worker may accept each."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S, limits=limits) as client:
        responses = await asyncio.gather(*(client.get("/metrics") for _ in range(count)))
    assert all(response.status_code == 200 for response in responses)
    return [response.text for response in responses]


async def scrape_until_both_workers_answered(url: str) -> tuple[str, int]:
    """Scrapes until one of them shows the counts of both workers; returns it and how many were made."""
    made: list[str] = []

    async def covering_both() -> str | None:
        made.extend(await scrape_on_new_connections(url, SCRAPES_PER_ROUND))
        return next((text for text in made if len(scrape_counts(text)) == WORKERS), None)

    covering = await async_wait_until(covering_both, WAIT_S, "a scrape covering both workers")
    return covering, len(made)


def submit_on_new_connections(url: str, count: int) -> None:
    token = httpx.post(f"{url}/api/users", timeout=WAIT_S).json()["token"]
    for index in range(count):
        response = httpx.post(f"{url}/api/chat", headers={"Authorization": f"Bearer {token}"},
                              json={"message": f"question {index}"}, timeout=WAIT_S)
        assert response.status_code == 201, response.text


async def test_workers_share_the_port_and_every_scrape_covers_every_worker(tmp_path: Path,
                                                                          redis: RedisServer) -> None:
    env = {**WORKERS_ENV, "CHIME_REDIS_URL": redis.url}
    with WorkersServer(tmp_path / "server", env) as server:
        scratch = server.scratch  # where the server's metrics directory goes
        assert httpx.get(f"{server.url}/healthz", timeout=WAIT_S).status_code == 200
        assert len(list(scratch.glob("chime-metrics-*"))) == 1

        # A scrape answered by one worker shows the other's count: it covers both.
        covering, made = await scrape_until_both_workers_answered(server.url)
        assert len(scrape_counts(covering)) == WORKERS

        submit_on_new_connections(server.url, SUBMISSIONS)
        # Every scrape so far, on whichever worker, and this one: one scrape counts them all.
        final = httpx.get(f"{server.url}/metrics", timeout=WAIT_S).text
        assert sum(scrape_counts(final).values()) == made + 1
        assert metric(final, "chime_submissions_total") == SUBMISSIONS
        # One set of names, whichever worker answers, and the same as one process exports.
        with ServerProcess(tmp_path / "single", {"CHIME_REDIS_URL": redis.url}) as single:
            one_process = httpx.get(f"{single.url}/metrics", timeout=WAIT_S).text
        assert gauge_names(final) == gauge_names(one_process) != set()
        assert {"chime_running_answers", "chime_answers_waiting_to_end"} <= gauge_names(final)
        assert scrape_counts(one_process) == {str(single.process.pid): 1.0}  # type: ignore[union-attr]

        assert server.stop(WAIT_S) == 0
        wait_until(lambda: not server.group_alive(), WAIT_S, "every worker to exit")
        assert list(scratch.glob("chime-metrics-*")) == []


def follow(url: str, token: str, channel: str, stream: SseStream) -> threading.Thread:
    """A reader of ``channel``'s SSE stream until the server ends it, on a thread of its own."""
    def read() -> None:
        with httpx.stream("GET", f"{url}/api/channels/{channel}/events", timeout=WAIT_S,
                          headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}) as response:
            stream.status = response.status_code
            parse_sse_lines(response.iter_lines(), stream, None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def stored_events(server: ServerProcess, token: str, channel: str) -> list[dict]:
    response = httpx.get(f"{server.url}/api/channels/{channel}/events.json?after=0", timeout=WAIT_S,
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["finished"]
    return response.json()["events"]


def test_sigterm_twice_stops_every_worker_in_order_and_exits_0(tmp_path: Path, redis: RedisServer) -> None:
    """As in one process: running answers end as interrupted after the grace period, streams end,
    and a second SIGTERM (or a SIGINT) during the stop does not cut it short.

    A stream may end before the terminal event of an answer another worker generates (that
    worker is stopping too): its client would read the rest from whichever process serves next.
    """
    env = {**WORKERS_ENV, "CHIME_REDIS_URL": redis.url, "CHIME_DEMO_DELAY_MS": "50", "CHIME_SHUTDOWN_GRACE_S": "0.5"}
    with WorkersServer(tmp_path / "server", env) as server:
        token = httpx.post(f"{server.url}/api/users", timeout=WAIT_S).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        channels = [httpx.post(f"{server.url}/api/chat", headers=auth, json={"message": f"question {n}"},
                               timeout=WAIT_S).json()["channel"] for n in range(4)]
        streams = {channel: SseStream(status=0, headers={}) for channel in channels}
        readers = [follow(server.url, token, channel, stream) for channel, stream in streams.items()]
        wait_until(lambda: all(len(stream.events) > 2 for stream in streams.values()), WAIT_S,
                   "every answer to be under way")

        assert server.process is not None
        started = time.monotonic()
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            server.process.send_signal(signum)
        assert server.process.wait(WAIT_S) == 0, server.log()
        assert time.monotonic() - started < 10, server.log()
        for reader in readers:
            reader.join(WAIT_S)
        assert all(stream.ended_by_server for stream in streams.values())
        wait_until(lambda: not server.group_alive(), WAIT_S, "every worker to exit")
        assert "Killing" not in server.log()  # Sanic's SIGKILL of every worker never came

    with ServerProcess(tmp_path / "after", {"CHIME_REDIS_URL": redis.url}) as after:
        for channel, stream in streams.items():
            stored = stored_events(after, token, channel)
            assert (stored[-1]["event"], stored[-1]["data"]) == ("interrupted", {"reason": "server_shutdown"})
            assert stream.events == stored[:len(stream.events)], channel
