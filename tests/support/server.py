"""The real Chime server as a child process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python app.py`` with its own data directory; start, kill, restart."""

    def __init__(self, data_dir: Path, env: Mapping[str, str] | None = None, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.log_path = self.data_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CHIME_", "OPENAI_", "SANIC_"))}
        env.update({
            "CHIME_HOST": "127.0.0.1",
            "CHIME_PORT": str(self.port),
            "CHIME_DATA_DIR": str(self.data_dir),
            "CHIME_DEMO_DELAY_MS": "2",
            "CHIME_SHUTDOWN_GRACE_S": "0.5",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 20.0) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT,
                                        env=self.environment(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._ready, timeout_s, f"the server on port {self.port} to answer /healthz")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crash)."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        return self._signal_and_wait(signal.SIGTERM, timeout_s)

    def _signal_and_wait(self, sig: int, timeout_s: float) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"the server did not stop within {timeout_s}s:\n{self.log()}") from None

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
