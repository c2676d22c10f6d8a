"""A real ``redis-server`` (Debian's) as a child process on a free loopback port.

``RedisServer(directory)`` starts one with its own data directory; ``stop``
(SIGTERM: Redis writes its AOF out), ``kill`` (SIGKILL: a crash), ``pause`` and
``resume`` (SIGSTOP/SIGCONT: a Redis that hangs), ``restart`` (the same port and
directory, so the same data when ``appendonly``).

``shared_server()`` is one server for the whole test session, started on first
use (``stop_shared_server`` stops it; the store fixtures do at the session's end).
Tests keep apart on it by key prefix: ``prefix_for(location)`` derives one from
a directory, so the same location means the same data, as
``StoreKind.make(location)`` requires.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from tests.support.server import free_port
from tests.support.waiting import wait_until

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def available() -> bool:
    return os.access(REDIS_SERVER, os.X_OK)


class RedisServer:
    """One ``redis-server`` with its own directory; ``url`` is where clients connect."""

    def __init__(self, directory: Path, *, appendonly: bool = False, appendfsync: str = "everysec",
                 port: int | None = None) -> None:
        self.directory = Path(directory)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = port or free_port()
        self.log_path = self.directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client of its own (close it, or use it in a ``with``)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5.0)

    def start(self) -> RedisServer:
        # A missing server fails the test that needs it (CI runs every test): never a skip.
        assert available(), f"{REDIS_SERVER} is not installed: bin/setup --test installs it"
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             "--appendfsync", self.appendfsync, "--daemonize", "no", "--logfile", ""],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._answers, START_TIMEOUT_S, f"redis-server on port {self.port} to answer PING")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):  # refused, or still loading
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM: Redis finishes its AOF and exits."""
        self._signal_and_wait(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no chance to write anything out (a crash)."""
        self._signal_and_wait(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections and answers nothing (a hung Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Stop it (unless it is stopped) and start it again on the same port and directory."""
        if self.running:
            self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal_and_wait(self, signum: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused server takes no other signal
        process.send_signal(signum)
        process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


# ---- one server for the session, one prefix per location ------------------------------------

_shared: RedisServer | None = None


def shared_server() -> RedisServer:
    """The session's server, started on first use in a directory of its own."""
    global _shared
    if _shared is None or not _shared.running:
        directory = Path(tempfile.mkdtemp(prefix="chime-redis-"))
        _shared = RedisServer(directory).start()
        atexit.register(stop_shared_server)
    return _shared


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        _shared.kill()
        shutil.rmtree(_shared.directory, ignore_errors=True)
        _shared = None


def prefix_for(location: Path) -> str:
    """A key prefix of its own for ``location``: the same directory, the same prefix."""
    digest = hashlib.sha256(str(Path(location).resolve()).encode()).hexdigest()[:16]
    return f"test-{digest}"
