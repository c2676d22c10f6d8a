"""The workloads: paced streams, unpaced throughput, idle readers, replay.

Each scenario yields rows (dicts, see ``bench.report``). A row through the
server gets a fresh server process, so its peak RSS is its own; the ``direct``
row reads the upstream with the same clients and no server: the floor.

The stream rows (``Streams``) run once per ``Store`` of the bench: SQLite in one
process (the default, and the only store of the other scenarios), or Redis with
1, 2, 4... processes. A Redis row gets a fresh ``redis-server`` of its own
(``appendonly yes``, ``appendfsync everysec``: what ``deploy/`` runs), stopped
and deleted after the row, and a server on it with ``CHIME_WORKERS`` worker
processes on one port: the kernel hands each connection to a worker, and any
worker serves any reader. The server's CPU is its whole process tree (the main
process and every worker); Redis's CPU is a column of its own.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.clients import (
    READERS,
    DirectReader,
    Exchange,
    ExchangePool,
    Tally,
    Totals,
    direct_request,
    open_reader,
    post_request,
)
from bench.procstat import (
    CpuMeter,
    MachineMeter,
    TreeMeter,
    memory_kb,
    open_sockets,
    started_ticks,
    tree_pids,
)
from bench.profile import profiled
from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, ServerProcess
from tests.support.waiting import wait_until

SETUP_CONCURRENCY = 64        # streams being set up at once (POST + connect)
IDLE_CONNECT_CONCURRENCY = 256
IDLE_CHANNELS = 100           # idle readers are spread over this many running channels
STREAM_TIMEOUT_S = 120.0      # a stream that has not ended by then is a failure, not a hang
REPLAY_EVENTS = 10_000
REPLAY_REPEATS = 20
PHASE_NS = 1_000_000_000     # latencies apart for the first and the last second of emissions
WORKERS_START_TIMEOUT_S = 60.0  # N fresh interpreters import everything before the first answer

SERVER_ENV = {
    "CHIME_LOG_LEVEL": "WARNING",
    "CHIME_MAX_RUNNING_PER_USER": "1000000",
    "CHIME_SUBMISSIONS_PER_MINUTE": "100000000",
    # The public-deployment caps, lifted for the bench's load (thousands of streams from one address).
    "CHIME_MAX_RUNNING": "1000000",
    "CHIME_NEW_USERS_PER_MINUTE": "100000000",
    "CHIME_MAX_ANSWER_S": "3600",
    "CHIME_MAX_ANSWER_CHARS": "100000000",
    "CHIME_MODEL_STALL_S": "3600",
    "CHIME_SHUTDOWN_GRACE_S": "0",
}


@dataclass(frozen=True)
class Store:
    """Where a row's server keeps its data: SQLite in one process, or Redis with ``processes`` workers."""

    kind: str = "sqlite"  # "sqlite" or "redis"
    processes: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("sqlite", "redis"):
            raise ValueError(f"no store {self.kind!r}: sqlite or redis")
        if self.processes < 1 or (self.kind == "sqlite" and self.processes != 1):
            raise ValueError(f"{self.kind} cannot run {self.processes} processes (SQLite: one; Redis: 1 or more)")

    @property
    def label(self) -> str:
        return "sqlite" if self.kind == "sqlite" else f"redis×{self.processes}"


SQLITE = Store()


@dataclass
class Deployment:
    """One row's server, and its own Redis when the store is Redis."""

    server: ServerProcess
    store: Store = SQLITE
    redis: RedisServer | None = None

    @property
    def pid(self) -> int:
        return self.server.process.pid  # type: ignore[union-attr]

    @property
    def redis_pid(self) -> int | None:
        return self.redis.process.pid if self.redis is not None and self.redis.process is not None else None


@dataclass
class Bench:
    """What every scenario shares: the upstream, where to keep data, what to run."""

    upstream_port: int
    upstream_pid: int
    work_dir: Path
    transports: tuple[str, ...] = ("sse", "ws")
    profile: bool = False
    http_client: str = "lean"  # the model's HTTP client: "lean" (the product's) or "aiohttp" (see bench.serve)
    stores: tuple[Store, ...] = (SQLITE,)  # the stream rows run once per store, in this order
    servers_started: int = 0
    redis_started: int = 0

    def server(self, env: dict[str, str], data_dir: Path | None = None,
               timeout_s: float = 20.0) -> ServerProcess:
        self.servers_started += 1
        data_dir = data_dir or self.work_dir / f"server-{self.servers_started}"
        if self.http_client == "lean":
            return ServerProcess(data_dir, {**SERVER_ENV, **env}).start(timeout_s)
        return SwitchedServer(data_dir, {**SERVER_ENV, "CHIME_BENCH_HTTP_CLIENT": self.http_client, **env}
                              ).start(timeout_s)

    def model_server(self, env: dict[str, str] | None = None, timeout_s: float = 20.0) -> ServerProcess:
        return self.server({"OPENAI_BASE_URL": f"http://127.0.0.1:{self.upstream_port}/v1",
                            "OPENAI_API_KEY": "bench", "CHIME_MODEL": "bench", "CHIME_MODEL_RETRIES": "0",
                            **(env or {})}, timeout_s=timeout_s)

    def labelled(self, scenario: str, store: Store) -> str:
        """The row's name: the scenario's alone for the default store, else with the store (``paced-1000 redis×2``)."""
        return scenario if self.stores == (SQLITE,) else f"{scenario} {store.label}"

    @contextmanager
    def deployed(self, store: Store) -> Iterator[Deployment]:
        """A model server on ``store`` for one row; with Redis, a fresh ``redis-server`` of its own."""
        if store.kind == "sqlite":
            server = self.model_server()
            try:
                yield Deployment(server)
            finally:
                stop(server)
            return
        if self.http_client != "lean" and store.processes > 1:
            raise ValueError("the aiohttp switch reaches one process only: run redis with 1 process")
        self.redis_started += 1
        directory = self.work_dir / f"redis-{self.redis_started}"
        redis = RedisServer(directory, appendonly=True, appendfsync="everysec").start()
        try:
            server = self.model_server({"CHIME_REDIS_URL": redis.url, "CHIME_WORKERS": str(store.processes)},
                                       timeout_s=WORKERS_START_TIMEOUT_S)
            try:
                yield Deployment(server, store, redis)
            finally:
                stop(server)
        finally:
            redis.stop()
            shutil.rmtree(directory, ignore_errors=True)  # its append-only file: up to tens of MB a row


class SwitchedServer(ServerProcess):
    """The server started through ``bench.serve``, which swaps the model's HTTP client."""

    def start(self, timeout_s: float = 20.0) -> SwitchedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "bench.serve"], cwd=ROOT,
                                            env=self.environment(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout_s, f"the server on port {self.port} to answer /healthz")
        return self


def stop(server: ServerProcess) -> None:
    """SIGTERM to the server (with workers: the main process, which stops them), and no process of it left."""
    workers = [(pid, started_ticks(pid)) for pid in tree_pids(server.process.pid)[1:]] if server.process else []
    try:
        server.stop(timeout_s=30)
    except AssertionError:
        pass  # killed after the timeout; the figures are already taken
    for pid, started in workers:  # one its main process did not take down (a backstop: each ends with it)
        if started_ticks(pid) == started:  # still that process, not a new one given its pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- measuring a row ------------------------------------------------------------

class Window:
    """CPU of the server, the upstream, Redis and this load generator over one row, plus wall time.

    The server is its process tree: the event loop and the database writer (SQLite), or
    the main process and its ``processes`` workers (``CHIME_WORKERS``). "loop" is the
    first process alone, which is the event loop only when one process serves.
    """

    def __init__(self, server_pid: int | None, upstream_pid: int | None, redis_pid: int | None = None,
                 processes: int = 1):
        self.meters = {"server": CpuMeter(server_pid, tree=True) if server_pid else None,
                       "loop": CpuMeter(server_pid) if server_pid and processes == 1 else None,
                       "upstream": CpuMeter(upstream_pid) if upstream_pid else None,
                       "redis": CpuMeter(redis_pid, tree=True) if redis_pid else None,  # with an AOF rewrite's fork
                       "loadgen": CpuMeter(None)}
        self.server_processes = TreeMeter(server_pid) if server_pid else None
        self.machine = MachineMeter()  # everything else on the machine: another job's load shows here
        self.redis_pid = redis_pid
        self.processes = processes
        self.wall_s = 0.0

    def __enter__(self) -> Window:
        for meter in self.meters.values():
            if meter is not None:
                meter.start()
        if self.server_processes is not None:
            self.server_processes.start()
        self.machine.start()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._started
        self.machine.stop()
        for meter in self.meters.values():
            if meter is not None:
                meter.stop()
        if self.server_processes is not None:
            self.server_processes.stop()

    def used_s(self, name: str) -> float:
        """CPU seconds of a meter the row must have (the server's: every row runs one)."""
        meter = self.meters[name]
        assert meter is not None, f"nothing to measure as {name!r}"
        return meter.used_s

    def per_token_us(self, name: str, tokens: int) -> float | None:
        meter = self.meters[name]
        return None if meter is None or not tokens else meter.used_s / tokens * 1e6

    def cpu_pct(self, name: str) -> float | None:
        meter = self.meters[name]
        return None if meter is None else self.pct(meter.used_s)

    def pct(self, cpu_s: float) -> float | None:
        """CPU seconds over the row as % of one core (None for a row of no time)."""
        return 100 * cpu_s / self.wall_s if self.wall_s else None

    def other_cpu_pct(self) -> float | None:
        """CPU of the machine's other processes over the row (another job's), % of one core."""
        if not self.wall_s:
            return None
        ours = sum(meter.used_s for name, meter in self.meters.items() if meter is not None and name != "loop")
        return max(0.0, 100 * (self.machine.processes_s - ours) / self.wall_s)

    def process_pcts(self) -> list[float]:
        """Each server process's CPU over the row as % of one core, busiest first."""
        if self.server_processes is None or not self.wall_s:
            return []
        return sorted((100 * used / self.wall_s for used in self.server_processes.used_s.values()), reverse=True)


def _system_share(meter: CpuMeter | None) -> float | None:
    return 100 * meter.system_s / meter.used_s if meter is not None and meter.used_s else None


def latency_figures(totals: Totals) -> dict[str, float | None]:
    """p50/p99/max of every live token, and p99 apart for tokens emitted in the first second, the
    last second and between (``p99_head_ms``, ``p99_tail_ms``, ``p99_mid_ms``): a start or an end
    that stalls every stream at once shows there, apart from the steady state. ``end_p99_ms``:
    from a stream's last token's emission to its terminal event's arrival."""
    ends = sorted(totals.end_latencies_ns)
    end = {"end_p99_ms": _pick(ends, 0.99) if ends else None}
    values = sorted(totals.latencies_ns)
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None,
                "p99_head_ms": None, "p99_mid_ms": None, "p99_tail_ms": None, **end}
    first, last = min(totals.emitted_ns), max(totals.emitted_ns)
    parts: dict[str, list[int]] = {"p99_head_ms": [], "p99_mid_ms": [], "p99_tail_ms": []}
    if last - first > 2 * PHASE_NS:
        for latency, emitted in zip(totals.latencies_ns, totals.emitted_ns, strict=True):
            phase = "head" if emitted < first + PHASE_NS else "tail" if emitted > last - PHASE_NS else "mid"
            parts[f"p99_{phase}_ms"].append(latency)
    return {"p50_ms": _pick(values, 0.50), "p99_ms": _pick(values, 0.99), "max_ms": values[-1] / 1e6,
            **{name: _pick(sorted(part), 0.99) if part else None for name, part in parts.items()}, **end}


def _pick(values: list[int], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6


def row(scenario: str, transport: str, streams: int, totals: Totals, window: Window,
        server: ServerProcess | None, tokens_span_s: float | None = None, store: Store = SQLITE) -> dict[str, Any]:
    delivered = totals.delivered
    span_s = tokens_span_s or window.wall_s
    loadgen_s = window.used_s("loadgen")
    peak = memory_kb(server.process.pid, tree=True)["VmHWM"] / 1024 if server and server.process else None
    redis_peak = memory_kb(window.redis_pid, tree=True)["VmHWM"] / 1024 if window.redis_pid else None
    processes = window.process_pcts()
    return {
        "scenario": scenario, "transport": transport, "streams": streams, "delivered": delivered,
        "lost": totals.lost, "duplicated": totals.duplicated, "out_of_order": totals.out_of_order,
        "failed_streams": totals.failed_streams, "endings": totals.endings, "replayed": totals.replayed,
        **latency_figures(totals),
        "tokens_per_s": delivered / span_s if span_s else None,
        "server_us_per_token": window.per_token_us("server", delivered),
        "loop_us_per_token": window.per_token_us("loop", delivered),
        "server_peak_rss_mb": peak,
        "server_system_pct": _system_share(window.meters["server"]),
        "server_cpu_pct": window.cpu_pct("server"),
        "server_busiest_cpu_pct": processes[0] if processes else None,
        "server_process_cpu_pct": processes,
        "upstream_us_per_token": window.per_token_us("upstream", delivered),
        "redis_us_per_token": window.per_token_us("redis", delivered),
        "redis_cpu_pct": window.cpu_pct("redis"),
        "redis_peak_rss_mb": redis_peak,
        "loadgen_us_per_token": window.per_token_us("loadgen", delivered),
        "loadgen_cpu_pct": window.pct(loadgen_s),
        "other_cpu_pct": window.other_cpu_pct(),
        "interrupts_cpu_pct": window.pct(window.machine.interrupts_s),
        "stolen_cpu_pct": window.pct(window.machine.stolen_s),
        "idle_cpu_pct": window.pct(window.machine.idle_s),
        "wall_s": window.wall_s,
        "store": store.kind, "processes": store.processes,
    }


# ---- streams: paced and unpaced -------------------------------------------------

@dataclass(frozen=True)
class Streams:
    """``streams`` answers of ``tokens`` tokens at ``rate`` tokens/s each (0: unpaced).

    Every stream is set up (submitted, reader attached) before the upstream is
    told to go, so the row measures all of them delivering at once; CPU is
    counted from the go, and the set-up is reported on its own.
    """

    name: str
    streams: int
    tokens: int
    rate: int
    delay_ms: int

    def message(self, group: int) -> str:
        return f"bench n={self.tokens} rate={self.rate} delay_ms={self.delay_ms} go={group}"

    async def rows(self, bench: Bench) -> AsyncIterator[dict[str, Any]]:
        yield await self.direct(bench)
        for transport in bench.transports:
            for store in bench.stores:
                with bench.deployed(store) as deployment:
                    result = await self.through(bench, deployment, transport)
                result.update(log_problems(deployment.server.log()))  # stopped: its last words are in
                yield result

    async def direct(self, bench: Bench) -> dict[str, Any]:
        totals = Totals()
        group = next_group()
        request = direct_request(f"127.0.0.1:{bench.upstream_port}", self.message(group))

        async def attach(gate: asyncio.Semaphore) -> tuple[Any, Tally]:
            tally = Tally(totals, self.tokens)
            async with gate:
                return await open_reader(bench.upstream_port, DirectReader, request, tally), tally

        setup = Setup(None)
        with setup:
            readers = await _all(self.streams, attach)
        with Window(None, bench.upstream_pid) as window:
            await _go(bench, group, self.streams)
            await asyncio.gather(*(_ended(reader, tally) for reader, tally in readers))
        return setup.figures(row(self.name, "direct", self.streams, totals, window, None,
                                 totals_span_s(totals, window)))

    async def through(self, bench: Bench, deployment: Deployment, transport: str) -> dict[str, Any]:
        server, store = deployment.server, deployment.store
        name = bench.labelled(self.name, store)
        totals = Totals()
        reader_type, make_request = READERS[transport]
        host = f"127.0.0.1:{server.port}"
        pool = ExchangePool(server.port, SETUP_CONCURRENCY)
        try:
            await pool.open_one_by_one(host)  # spread over the workers as independent clients' would be
            status, body = await pool.request(post_request(host, "/api/users", b"{}"))
            token = orjson.loads(body)["token"]
            group = next_group()
            submit = post_request(host, "/api/chat", orjson.dumps({"message": self.message(group)}), token)

            async def attach(gate: asyncio.Semaphore) -> tuple[Any, Tally]:
                tally = Tally(totals, self.tokens)
                async with gate:
                    status, body = await pool.request(submit)
                    if status != 201:
                        raise RuntimeError(f"POST /api/chat answered {status}: {body[:200]!r}")
                    request = make_request(host, orjson.loads(body)["channel"], token)
                    return await open_reader(server.port, reader_type, request, tally), tally

            pid = deployment.pid
            setup = Setup(pid)
            with setup:
                readers = await _all(self.streams, attach)
            # How the kernel spread the connections: sockets of each server process, busiest first.
            sockets = sorted((open_sockets(each) for each in tree_pids(pid)), reverse=True)
            profile_name = f"{self.name}-{transport}" + ("" if store == SQLITE else f"-{store.kind}{store.processes}")
            with profiled(pid, profile_name, bench.profile, subprocesses=store.processes > 1), \
                    Window(pid, bench.upstream_pid, deployment.redis_pid, store.processes) as window:
                await _go(bench, group, self.streams)
                await asyncio.gather(*(_ended(reader, tally) for reader, tally in readers))
        finally:
            pool.close()
        result = row(name, transport, self.streams, totals, window, server, totals_span_s(totals, window), store)
        result["server_process_sockets"] = sockets
        return setup.figures(result)


_LOG_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")  # a line's first one is its level
_LOG_IDS = re.compile(r"\b[A-Za-z0-9_-]{22}\b|\b[0-9a-f]{16,}\b")
_LOG_TIME = re.compile(r"^.*?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.\d]*(?: [+-]\d{4})? ")


def log_problems(log: str) -> dict[str, Any]:
    """Warnings and errors the server logged from its start to its stop, and the commonest kinds.

    Every token can arrive while the server fails at something else (an answer's end
    steps, a push): the row's ``log warn`` column says so.
    """
    kinds: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        level = _LOG_LEVEL.search(line) if line[:1].strip() else None  # not a traceback's lines
        if level is not None and level[1] in ("WARNING", "ERROR", "CRITICAL"):
            kinds[_LOG_IDS.sub("…", _LOG_TIME.sub("", line, count=1)).strip()[:160]] += 1
    return {"server_log_problems": sum(kinds.values()),
            "server_log_problem_kinds": dict(kinds.most_common(5))}


class Setup:
    """Wall time of setting every stream up, and the server's CPU for it per stream."""

    def __init__(self, server_pid: int | None):
        self.meter = CpuMeter(server_pid, tree=True) if server_pid else None
        self.wall_s = 0.0

    def __enter__(self) -> Setup:
        if self.meter is not None:
            self.meter.start()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._started
        if self.meter is not None:
            self.meter.stop()

    def figures(self, result: dict[str, Any]) -> dict[str, Any]:
        streams = result["streams"]
        result["setup_s"] = self.wall_s
        result["server_ms_per_setup"] = self.meter.used_s / streams * 1e3 if self.meter and streams else None
        return result


_groups = itertools.count(1)


def next_group() -> int:
    """A fresh upstream group: what one row's streams wait in for their go."""
    return next(_groups)


async def _go(bench: Bench, group: int, streams: int) -> None:
    """Start the group's streams, once all ``streams`` of them have reached the upstream."""
    _, exchange = await asyncio.get_running_loop().create_connection(Exchange, "127.0.0.1", bench.upstream_port)
    try:
        status, _ = await exchange.request(post_request(f"127.0.0.1:{bench.upstream_port}",
                                                        f"/go/{group}/{streams}", b""))
        if status != 200:
            raise RuntimeError(f"the upstream refused the go: {status}")
    finally:
        exchange.transport.close()  # type: ignore[union-attr]


def totals_span_s(totals: Totals, window: Window) -> float:
    """Throughput is counted over the time tokens were flowing, not the set-up before."""
    first, last = totals.first_emitted_ns, totals.last_received_ns
    return (last - first) / 1e9 if first and last > first else window.wall_s


async def _all(count: int, one: Callable[[asyncio.Semaphore], Any]) -> list[Any]:
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)
    return await asyncio.gather(*(one(gate) for _ in range(count)))


async def _ended(reader: Any, tally: Tally) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(reader.ended), STREAM_TIMEOUT_S)
    except TimeoutError:
        reader.end("timeout")
    tally.close(reader.ending)


# ---- idle readers ---------------------------------------------------------------

@dataclass(frozen=True)
class Idle:
    """``readers`` connections parked on unfinished channels: memory per connection."""

    name: str
    readers: int

    async def rows(self, bench: Bench) -> AsyncIterator[dict[str, Any]]:
        for transport in bench.transports:
            # The demo model at an hour a token: channels that stay running and quiet.
            server = bench.server({"CHIME_DEMO_DELAY_MS": "3600000"})
            try:
                yield await self.parked(server, transport)
            finally:
                stop(server)

    async def parked(self, server: ServerProcess, transport: str) -> dict[str, Any]:
        pid = server.process.pid  # type: ignore[union-attr]
        reader_type, make_request = READERS[transport]
        host = f"127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            token = (await http.post("/api/users")).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            channels = [(await http.post("/api/chat", json={"message": f"idle {i}"}, headers=headers))
                        .json()["channel"] for i in range(IDLE_CHANNELS)]
        totals = Totals()
        gate = asyncio.Semaphore(IDLE_CONNECT_CONCURRENCY)
        readers: list[Any] = []

        async def park(index: int) -> None:
            tally = Tally(totals, 0)
            async with gate:
                request = make_request(host, channels[index % len(channels)], token)
                readers.append(await open_reader(server.port, reader_type, request, tally))

        before_kb = memory_kb(pid, tree=True)["VmRSS"]
        with Window(pid, None) as window:
            results = await asyncio.gather(*(park(i) for i in range(self.readers)), return_exceptions=True)
        after_kb = memory_kb(pid, tree=True)["VmRSS"]
        held = sum(1 for reader in readers if reader.attached.result() is True and not reader.ended.done())
        for reader in readers:
            reader.transport.close()
        result = row(self.name, transport, self.readers, totals, window, server)
        result.update({
            "held": held, "failed_streams": self.readers - held,
            "connect_errors": sum(1 for r in results if isinstance(r, BaseException)),
            "kb_per_connection": (after_kb - before_kb) / held if held else None,
            "server_us_per_connection": window.used_s("server") / held * 1e6 if held else None,
            "tokens_per_s": None, "server_us_per_token": None, "loop_us_per_token": None,
            "loadgen_us_per_token": None,
        })
        return result


# ---- replay ---------------------------------------------------------------------

@dataclass(frozen=True)
class Replay:
    """A finished channel of 10,000 stored events, read from id 0 and its last 10."""

    name: str
    repeats: int = REPLAY_REPEATS

    async def rows(self, bench: Bench) -> AsyncIterator[dict[str, Any]]:
        data_dir = Path(tempfile.mkdtemp(prefix="replay-", dir=bench.work_dir))
        channel, token = await _stored_channel(data_dir, REPLAY_EVENTS)
        for transport in bench.transports:
            server = bench.server({}, data_dir)
            try:
                for label, after in (("all", 0), ("last10", REPLAY_EVENTS - 10)):
                    yield await self.read(bench, server, transport, channel, token, label, after)
            finally:
                stop(server)

    async def read(self, bench: Bench, server: ServerProcess, transport: str, channel: str, token: str,
                   label: str, after: int) -> dict[str, Any]:
        reader_type, make_request = READERS[transport]
        request = make_request(f"127.0.0.1:{server.port}", channel, token, after)
        first_seq = max(0, after - 1)  # event id = seq + 2: meta is id 1
        deltas = REPLAY_EVENTS - 2 - first_seq
        totals = Totals()
        elapsed_ms: list[float] = []
        pid = server.process.pid  # type: ignore[union-attr]
        with profiled(pid, f"{self.name}-{label}-{transport}", bench.profile), Window(pid, None) as window:
            for _ in range(self.repeats):
                tally = Tally(totals, deltas, first_seq)
                started = time.monotonic_ns()
                reader = await open_reader(server.port, reader_type, request, tally)
                await _ended(reader, tally)
                elapsed_ms.append((time.monotonic_ns() - started) / 1e6)
        result = row(f"{self.name}-{label}", transport, self.repeats, totals, window, server)
        events = REPLAY_EVENTS - after
        result.update({
            "p50_ms": statistics.median(elapsed_ms), "p99_ms": max(elapsed_ms), "max_ms": max(elapsed_ms),
            "first_ms": elapsed_ms[0], "events_per_read": events, "reads": self.repeats,
            "tokens_per_s": events / (statistics.median(elapsed_ms) / 1e3),
            "server_us_per_token": window.used_s("server") / (events * self.repeats) * 1e6,
            "loop_us_per_token": window.used_s("loop") / (events * self.repeats) * 1e6,
            "loadgen_us_per_token": window.used_s("loadgen") / (events * self.repeats) * 1e6,
        })
        return result


async def _stored_channel(data_dir: Path, events: int) -> tuple[str, str]:
    """Write a finished channel of ``events`` events straight into a fresh store."""
    from channels.answers import hash_token, new_id
    from channels.sqlite import SQLiteStore

    store = SQLiteStore(data_dir / "chime.sqlite3")
    await store.open()
    try:
        user, token, conversation, channel = new_id(), new_id() + new_id(), new_id(), new_id()
        await store.create_user(user, hash_token(token))
        await store.create_conversation(conversation, user, "replay")
        await store.create_channel(channel, user, conversation, "bench")
        await store.add_turn(conversation, "replay", channel)
        await asyncio.gather(*(store.append(channel, "delta", {"content": f"~{seq}.0~ "})
                               for seq in range(events - 2)))
        await store.append(channel, "done", {"finish_reason": "stop"})
    finally:
        await store.close()
    return channel, token
