"""Metrics: one process's counters and gauges, and every process's when workers share a directory.

The multiprocess cases run real processes: prometheus-client chooses file-backed values
at import, from the environment, as a worker does when the main process starts it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import metrics
from metrics import Metrics
from tests.support.server import ROOT

PROCESS_TIMEOUT_S = 30.0


def series(text: str) -> dict[str, float]:
    """Every sample line of a scrape, ``name{labels}`` to value."""
    return {match[1]: float(match[2]) for match in re.finditer(r"^([^#\s][^ ]*) (\S+)$", text, re.MULTILINE)}


def test_counters_render_under_their_names_with_help_and_type() -> None:
    registry = Metrics()
    registry.inc("chime_answers_total", help="Answers ended, by terminal status.", status="done")
    registry.inc("chime_answers_total", help="Answers ended, by terminal status.", status="done")
    registry.inc("chime_answers_total", status="error")
    registry.inc("chime_submissions_total", 3, help="Questions submitted.")
    text = registry.render()
    assert "# HELP chime_answers_total Answers ended, by terminal status.\n" in text
    assert "# TYPE chime_answers_total counter\n" in text
    assert series(text) == {'chime_answers_total{status="done"}': 2, 'chime_answers_total{status="error"}': 1,
                            "chime_submissions_total": 3}
    assert registry.value("chime_answers_total", status="done") == 2
    assert registry.value("chime_submissions_total") == 3
    assert registry.value("chime_answers_total", status="cancelled") == 0
    assert registry.value("chime_unknown_total") == 0


def test_label_values_are_escaped() -> None:
    registry = Metrics()
    registry.inc("chime_push_sends_total", help="Pushes.", outcome='a"b\\c')
    assert 'chime_push_sends_total{outcome="a\\"b\\\\c"} 1.0' in registry.render()


def test_a_gauge_is_read_at_each_scrape_and_a_new_callback_replaces_the_old() -> None:
    registry = Metrics()
    running = [2]
    registry.gauge("chime_running_answers", "Answers being generated.", lambda: running[0])
    assert "# TYPE chime_running_answers gauge" in registry.render()
    assert series(registry.render())["chime_running_answers"] == 2
    running[0] = 5
    assert series(registry.render())["chime_running_answers"] == 5
    registry.gauge("chime_running_answers", "Answers being generated.", lambda: 7)
    assert series(registry.render())["chime_running_answers"] == 7


def test_instances_do_not_share_values() -> None:
    first, second = Metrics(), Metrics()
    first.inc("chime_submissions_total", help="Questions submitted.")
    assert second.value("chime_submissions_total") == 0 and "chime_submissions" not in second.render()


def test_one_process_exports_no_created_series() -> None:
    registry = Metrics()
    registry.inc("chime_submissions_total", help="Questions submitted.")
    assert "_created" not in registry.render()


def test_a_counter_name_must_end_with_total() -> None:
    with pytest.raises(ValueError, match="_total"):
        Metrics().inc("chime_submissions", help="Questions submitted.")


def test_a_directory_named_after_import_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(metrics.MULTIPROCESS_DIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match=metrics.MULTIPROCESS_DIR_ENV):
        Metrics()


def test_the_directory_for_workers_is_made_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROCESS_DIR_ENV, raising=False)
    with metrics.multiprocess_dir() as directory:
        assert directory.is_dir() and os.environ[metrics.MULTIPROCESS_DIR_ENV] == str(directory)
        (directory / "counter_1.db").write_bytes(b"")
    assert not directory.exists() and metrics.MULTIPROCESS_DIR_ENV not in os.environ


# ---- several processes, one directory ---------------------------------------------------------

WORKER = """
import sys
from metrics import Metrics
registry = Metrics()
assert registry.multiprocess
registry.inc("chime_submissions_total", {amount}, help="Questions submitted.")
registry.inc("chime_answers_total", help="Answers ended, by terminal status.", status="done")
registry.gauge("chime_running_answers", "Answers being generated.", lambda: {running})
registry.publish_gauges()
print("ready", flush=True)
if sys.stdin.readline().strip() == "leave":
    registry.forget_this_process()
    print("left", flush=True)
    sys.stdin.readline()
"""


class Worker:
    """A process that counts, publishes a gauge and stays alive until told or killed."""

    def __init__(self, directory: Path, amount: int, running: int) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WORKER.format(amount=amount, running=running)],
                                        cwd=ROOT, env=_environment(directory), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.expect("ready")

    def expect(self, line: str) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == line

    def leave(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("leave\n")
        self.process.stdin.flush()
        self.expect("left")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(PROCESS_TIMEOUT_S)

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _environment(directory: Path) -> dict[str, str]:
    return {**os.environ, metrics.MULTIPROCESS_DIR_ENV: str(directory)}


def scrape(directory: Path) -> dict[str, float]:
    """What a process of its own, scraping, renders for every process of ``directory``."""
    result = subprocess.run([sys.executable, "-c", "from metrics import Metrics; print(Metrics().render())"],
                            cwd=ROOT, env=_environment(directory), capture_output=True, text=True,
                            timeout=PROCESS_TIMEOUT_S, check=True)
    return series(result.stdout)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started = [Worker(tmp_path, amount=2, running=3), Worker(tmp_path, amount=5, running=4)]
    yield started
    for worker in started:
        worker.close()


def test_a_scrape_in_any_process_sums_every_process(tmp_path: Path, workers: list[Worker]) -> None:
    assert scrape(tmp_path) == {"chime_submissions_total": 7, 'chime_answers_total{status="done"}': 2,
                                "chime_running_answers": 7}


def test_a_killed_process_keeps_its_counts_and_leaves_the_gauges(tmp_path: Path, workers: list[Worker]) -> None:
    workers[0].kill()
    seen = scrape(tmp_path)
    assert seen["chime_submissions_total"] == 7 and seen['chime_answers_total{status="done"}'] == 2
    assert seen["chime_running_answers"] == 4


def test_a_process_that_stops_serving_leaves_the_gauges(tmp_path: Path, workers: list[Worker]) -> None:
    workers[1].leave()
    seen = scrape(tmp_path)
    assert seen["chime_running_answers"] == 3 and seen["chime_submissions_total"] == 7
