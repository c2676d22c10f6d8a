"""``--profile``: py-spy samples the server process during each row (py-spy is not a dependency).

The samples are saved as collapsed stacks under ``bench/results/``;
``python -m bench.profile FILE`` prints where the time went.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.report import RESULTS_DIR

SAMPLES_PER_S = 250


@contextmanager
def profiled(pid: int | None, name: str, enabled: bool, subprocesses: bool = False) -> Iterator[None]:
    """py-spy on ``pid`` while the block runs; with ``subprocesses``, on its child processes too (workers)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not enabled or pid is None or not Path(spy).exists():
        yield
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"profile-{name}.txt"
    process = subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate",
                                str(SAMPLES_PER_S), "--nonblocking", "--output", str(path),
                                *(["--subprocesses"] if subprocesses else [])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


def summary(path: Path, top: int = 35) -> str:
    """Self and inclusive sample shares per function, from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0].rstrip(")")
                  for frame in stack.split(";")]
        samples = int(count)
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples", "self%  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "incl%  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
