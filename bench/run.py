"""``python -m bench``: run the workloads, print the table, save the JSON.

Starts the loopback upstream (its own process), then for each row a fresh
Chime server process pointed at it (``OPENAI_BASE_URL``), and drives both with
this process's asyncio load generator. Everything listens on 127.0.0.1.

``--store sqlite|redis`` (repeatable) and ``--processes 1,2,4`` (Redis only) run
the stream rows (``paced-*``, ``unpaced``) once per store: ``sqlite`` in one
process, and ``redis`` once per process count, each on a fresh ``redis-server``
(``appendonly yes``, ``appendfsync everysec``) with ``CHIME_WORKERS`` workers on
one port. Rows are then named with their store (``paced-1000 sqlite``,
``paced-1000 redis×2``); the other scenarios run on SQLite alone. The default is
SQLite alone, and the rows are named as before.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.arrivals import Arrivals, Submissions
from bench.procstat import memory_kb
from bench.report import save, table
from bench.scenarios import SQLITE, Bench, Idle, Replay, Store, Streams, stop
from bench.serve import HTTP_CLIENTS
from bench.upstream import raise_open_files_limit
from tests.support import redis_server
from tests.support.server import ROOT, free_port
from tests.support.waiting import wait_until

PACED_RATE = 25          # tokens/s per stream
PACED_DELAY_MS = 100     # from the go (every reader attached) to a paced stream's first token
ARRIVAL_FIRST_TOKEN_MS = 1000 // PACED_RATE  # an arriving answer: its first token one token period after its request


def scenarios(quick: bool) -> dict[str, Any]:
    paced_tokens = 75 if quick else 250  # 3 s or 10 s of tokens per stream
    unpaced_tokens = 2_000 if quick else 5_000
    all_: list[Any] = [
        Streams("paced-50", 50, paced_tokens, PACED_RATE, PACED_DELAY_MS),
        Streams("paced-200", 200, paced_tokens, PACED_RATE, PACED_DELAY_MS),
        Streams("paced-1000", 1000, paced_tokens, PACED_RATE, PACED_DELAY_MS),
        Streams("unpaced", 20, unpaced_tokens, 0, 300),
        Arrivals("arrivals-1000", 1000, paced_tokens, PACED_RATE, ARRIVAL_FIRST_TOKEN_MS),
        Submissions("submit-1000", 1000),
        Idle("idle-5000", 5_000),
        Replay("replay"),
    ]
    if not quick:
        all_.insert(7, Idle("idle-10000", 10_000))
    return {scenario.name: scenario for scenario in all_}


class UpstreamProcess:
    """``python -m bench.upstream PORT`` in its own process, so it never shares our CPU."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> UpstreamProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "bench.upstream", str(self.port)], cwd=ROOT,
                                        stdout=subprocess.PIPE)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if b"listening" not in line:
            raise RuntimeError(f"the upstream did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


async def run(names: list[str], quick: bool, transports: tuple[str, ...],
              profile: bool = False, http_client: str = "lean",
              stores: tuple[Store, ...] = (SQLITE,)) -> list[dict[str, Any]]:
    chosen = scenarios(quick)
    rows: list[dict[str, Any]] = []
    with UpstreamProcess() as upstream, tempfile.TemporaryDirectory(prefix="chime-bench-") as work:
        bench = Bench(upstream.port, upstream.process.pid, Path(work), transports, profile,  # type: ignore[union-attr]
                      http_client, stores)
        for name in names or list(chosen):
            started = time.monotonic()
            async for result in chosen[name].rows(bench):
                result["upstream_peak_rss_mb"] = memory_kb(upstream.process.pid)["VmHWM"] / 1024  # type: ignore
                result["http_client"] = http_client
                rows.append(result)
                print(table([result]).splitlines()[-1], flush=True)
            print(f"# {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return rows


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter streams; idle-10000 left out")
    parser.add_argument("--scenario", action="append", default=[], metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(scenarios(False))}")
    parser.add_argument("--transport", action="append", choices=("sse", "ws", "v1"), default=[],
                        help="only this transport (repeatable); default all three (v1: the /v1 Responses stream)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the server with py-spy into bench/results/profile-*.txt")
    parser.add_argument("--http-client", choices=HTTP_CLIENTS, default="lean",
                        help="the server's client to the model: its own lean HTTP/1.1 transport (default) or "
                             "the OpenAI SDK's aiohttp client, for comparison")
    parser.add_argument("--store", action="append", choices=("sqlite", "redis"), default=[],
                        help="the stream rows on this store (repeatable, in this order); default sqlite. "
                             "redis: a fresh redis-server per row (appendonly yes, appendfsync everysec)")
    parser.add_argument("--processes", type=process_counts, default=(1,), metavar="N[,N...]",
                        help="with --store redis: a row per count of Chime processes (CHIME_WORKERS) on one "
                             "port, e.g. 1,2,4; default 1")
    args = parser.parse_args(argv)
    unknown = set(args.scenario) - set(scenarios(args.quick))
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")
    if "redis" not in args.store and args.processes != (1,):
        parser.error("--processes needs --store redis: SQLite is served by one process")
    if "redis" in args.store and not redis_server.available():
        parser.error(f"--store redis needs {redis_server.REDIS_SERVER} (bin/setup --test installs it)")
    if "redis" in args.store and args.http_client != "lean" and max(args.processes) > 1:
        parser.error("--http-client aiohttp reaches one process only: run redis with --processes 1")
    args.stores = stores(args.store, args.processes)
    return args


def process_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be 1 or more")
    return counts


def stores(kinds: list[str], processes: tuple[int, ...]) -> tuple[Store, ...]:
    """One ``Store`` per row of a stream scenario: each kind named (once), Redis once per process count."""
    chosen: list[Store] = []
    for kind in dict.fromkeys(kinds or ["sqlite"]):
        chosen += [Store(kind, count) for count in (processes if kind == "redis" else (1,))]
    return tuple(chosen)


def main(argv: list[str] | None = None) -> None:
    import uvloop

    args = parse(sys.argv[1:] if argv is None else argv)
    raise_open_files_limit()  # servers started from here inherit it
    transports = tuple(args.transport) or ("sse", "ws", "v1")
    print(table([]), flush=True)
    rows = uvloop.run(run(args.scenario, args.quick, transports, args.profile, args.http_client, args.stores))
    print("\n" + table(rows))
    path = save(rows, {"quick": args.quick, "scenarios": args.scenario, "transports": transports,
                       "profile": args.profile, "http_client": args.http_client,
                       "stores": [store.label for store in args.stores]})
    print(f"\nsaved {path.relative_to(ROOT)}")


__all__ = ["main", "stop", "wait_until"]
