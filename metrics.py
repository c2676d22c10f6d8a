"""Counters and gauges for ``GET /metrics`` (Prometheus text format), in one process or across workers.

prometheus-client keeps the values. With ``CHIME_WORKERS`` > 1 the main process points
``PROMETHEUS_MULTIPROC_DIR`` at a directory of its own before it starts the workers
(``multiprocess_dir``); every worker then writes its values to its own files there, and a
scrape that reaches any worker sums every worker's files, so each scrape covers the whole
server under the same names as one process exports. A counter of a worker that has died
still counts (what happened, happened); its gauges stop counting (``livesum``).

A gauge is read through a callback. One process reads it at each scrape; across workers a
scrape cannot call into the other processes, so every worker writes its gauges' current
values every ``GAUGE_PUBLISH_S`` (``publish_gauges_every``) and at each scrape it answers:
a sum over workers is at most that old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("chime.metrics")

# prometheus-client's switch: set before it is imported, it writes values to files there.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How stale a worker's gauge may be in a scrape answered by another worker.
GAUGE_PUBLISH_S = 1.0
# Gauges summed over live processes: a dead worker's running answers are no longer running.
GAUGE_MODE: Final = "livesum"
# A ``<name>_created`` series per counter exists in one process only; one set of names everywhere.
disable_created_metrics()

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


class Metrics:
    """Counters (``inc``) and callback gauges (``gauge``) of this process, rendered for a scrape.

    A counter's label names are fixed by its first ``inc``; ``value`` reads this process's count.
    """

    def __init__(self) -> None:
        self._multiprocess_dir = _multiprocess_dir()
        self._registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, tuple[Gauge, Callable[[], float]]] = {}

    @property
    def multiprocess(self) -> bool:
        return self._multiprocess_dir is not None

    def inc(self, name: str, amount: float = 1, help: str = "", **labels: str) -> None:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _counter(name, help or name, sorted(labels), self._registry)
        (counter.labels(**labels) if labels else counter).inc(amount)

    def value(self, name: str, **labels: str) -> float:
        return self._registry.get_sample_value(name, labels) or 0.0

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """``read()`` is the gauge's value; registering a name again replaces its callback."""
        known = self._gauges.get(name)
        gauge = known[0] if known else Gauge(name, help, registry=self._registry, multiprocess_mode=GAUGE_MODE)
        if not self.multiprocess:
            gauge.set_function(read)
        self._gauges[name] = (gauge, read)

    def publish_gauges(self) -> None:
        """Write every gauge's current value where other workers' scrapes read it."""
        if self.multiprocess:
            for gauge, read in self._gauges.values():
                gauge.set(read())

    async def publish_gauges_every(self, interval_s: float = GAUGE_PUBLISH_S) -> None:
        """Publish until cancelled; a callback that fails is logged and the others still publish."""
        while True:
            try:
                self.publish_gauges()
            except Exception:
                log.exception("a gauge could not be read for /metrics")
            await asyncio.sleep(interval_s)

    def forget_this_process(self) -> None:
        """This process stops serving: its gauges leave the sums (its counters stay)."""
        if self._multiprocess_dir is not None:
            mark_process_dead(os.getpid(), self._multiprocess_dir)

    def render(self) -> str:
        if self._multiprocess_dir is None:
            return generate_latest(self._registry).decode()
        self.publish_gauges()
        _forget_dead_processes(self._multiprocess_dir)
        every_process = CollectorRegistry()
        MultiProcessCollector(every_process, path=self._multiprocess_dir)
        return generate_latest(every_process).decode()


def _counter(name: str, help: str, label_names: list[str], registry: CollectorRegistry) -> Counter:
    if not name.endswith("_total"):  # prometheus-client would export it as <name>_total
        raise ValueError(f"counter {name!r} must end with _total")
    return Counter(name, help, label_names, registry=registry)


def _multiprocess_dir() -> str | None:
    """The directory every worker's values go to, or None in one process.

    prometheus-client chooses in-memory or file values once, at its import: a directory named
    only later would leave this process's values out of every scrape, so it is refused.
    """
    path = os.environ.get(MULTIPROCESS_DIR_ENV)
    in_files = values.ValueClass is not values.MutexValue
    if bool(path) != in_files:
        raise RuntimeError(f"{MULTIPROCESS_DIR_ENV} must be set before prometheus_client is imported "
                           "(and not unset after)")
    return path


def _forget_dead_processes(directory: str) -> None:
    """Gauges of workers that died without stopping (kill -9) leave the sums too."""
    for entry in os.scandir(directory):
        match = _LIVE_GAUGE_FILE.fullmatch(entry.name)
        if match and not _alive(int(match[1])):
            mark_process_dead(int(match[1]), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process has that pid now
        return True
    return True


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """A fresh directory for the values of the workers started inside; removed at exit.

    The environment variable is set here, in the main process, so that every worker it
    starts afterwards (spawned: a fresh interpreter) has it before importing prometheus-client.
    Files of an earlier server are never summed into this one's scrapes.
    """
    directory = Path(tempfile.mkdtemp(prefix="chime-metrics-"))
    previous = os.environ.get(MULTIPROCESS_DIR_ENV)
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
        else:
            os.environ[MULTIPROCESS_DIR_ENV] = previous
        remove_multiprocess_dir(directory)


def remove_multiprocess_dir(directory: Path) -> None:
    """The workers' values are gone with the server (a second call does nothing)."""
    shutil.rmtree(directory, ignore_errors=True)
