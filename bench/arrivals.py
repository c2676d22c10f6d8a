"""Arrivals: streams whose set-up is inside the measurement, as real arrivals are.

``arrivals-N``: N anonymous clients arrive spread evenly over one second. Each
sends its own ``POST /api/chat`` with no identity (the server makes the user,
answers with its token and sets the cookie) on a connection of its own, then
reads its channel over SSE or WebSocket with that token. The upstream starts
each answer when the server's request reaches it (no go), paced, so tokens of
early arrivals flow while later ones are still arriving. Tokens are checked
and timed as in every other row, except that every token's latency counts:
the client was there before its answer began, so a token the server showed it
only once its slow submission or attach was done was late, not a replay.
``submit_p50_ms``/``attach_p50_ms`` (and p99) in the JSON: an arrival's POST,
and its start until its reader attached.

The server's CPU per arrival is its process tree's CPU from the first arrival
until the last reader attached, divided by the arrivals: it includes the
connection, the submission, the reader's attach and whatever tokens were
delivered meanwhile, so under overload it is an upper bound. ``submit-N``
measures a submission alone: N anonymous submissions one after another, each
on a new connection, with the demo model paused (an hour a token), so nothing
else runs; server CPU / N.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from bench.clients import READERS, Exchange, Tally, Totals, open_reader, post_request
from bench.procstat import CpuMeter
from bench.profile import profiled
from bench.scenarios import Bench, Window, _ended, row, stop, totals_span_s
from tests.support.server import ServerProcess

SUBMIT_WARMUP = 20  # submissions before the measured ones: first requests pay one-off costs


async def _anonymous_submit(port: int, message: str) -> tuple[int, dict[str, Any]]:
    """One new client's ``POST /api/chat`` on a connection of its own: (status, body)."""
    _, exchange = await asyncio.get_running_loop().create_connection(Exchange, "127.0.0.1", port)
    try:
        status, body = await exchange.request(
            post_request(f"127.0.0.1:{port}", "/api/chat", orjson.dumps({"message": message})))
    finally:
        exchange.transport.close()  # type: ignore[union-attr]
    return status, orjson.loads(body) if body else {}


class _ArrivalTally(Tally):
    """A Tally whose stream began when its client arrived: no token is a replay."""

    __slots__ = ()

    @property
    def attached_ns(self) -> int:
        return 0

    @attached_ns.setter
    def attached_ns(self, value: int) -> None:
        pass  # the reader's attach time does not excuse a late token


@dataclass(frozen=True)
class Arrivals:
    """``streams`` anonymous arrivals over ``spread_s``; each answer ``tokens`` tokens at ``rate`` tokens/s."""

    name: str
    streams: int
    tokens: int
    rate: int
    delay_ms: int  # from the upstream request to the first token (the model's time to first token)
    spread_s: float = 1.0

    def message(self) -> str:
        return f"bench n={self.tokens} rate={self.rate} delay_ms={self.delay_ms}"

    async def rows(self, bench: Bench) -> AsyncIterator[dict[str, Any]]:
        for transport in bench.transports:
            server = bench.model_server()
            try:
                yield await self.arrive(bench, server, transport)
            finally:
                stop(server)

    async def arrive(self, bench: Bench, server: ServerProcess, transport: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        reader_type, make_request = READERS[transport]
        host = f"127.0.0.1:{server.port}"
        pid = server.process.pid  # type: ignore[union-attr]
        totals = Totals()
        lags_ms: list[float] = []
        submit_ms: list[float] = []
        attach_ms: list[float] = []
        refused: list[str] = []
        attached = 0
        all_attached = loop.create_future()
        arrival_meter = CpuMeter(pid, tree=True)
        arrivals_wall_s = 0.0

        def one_attached() -> None:
            nonlocal attached
            attached += 1
            if attached == self.streams and not all_attached.done():
                all_attached.set_result(None)

        async def arrival(index: int, due: float) -> None:
            await asyncio.sleep(max(0.0, due - loop.time()))
            lags_ms.append((loop.time() - due) * 1e3)
            tally = _ArrivalTally(totals, self.tokens)
            try:
                started = time.monotonic_ns()
                status, body = await _anonymous_submit(server.port, self.message())
                submit_ms.append((time.monotonic_ns() - started) / 1e6)
                if status != 201 or "token" not in body:
                    refused.append(f"{status}: {str(body)[:120]}")
                    tally.close(f"http_{status}")
                    return
                request = make_request(host, body["channel"], body["token"])
                reader = await open_reader(server.port, reader_type, request, tally)
                attach_ms.append((time.monotonic_ns() - started) / 1e6)
            except (OSError, TimeoutError) as exc:
                refused.append(type(exc).__name__)
                tally.close("connect_error")
                return
            finally:
                one_attached()
            await _ended(reader, tally)

        with profiled(pid, f"{self.name}-{transport}", bench.profile), \
                Window(pid, bench.upstream_pid) as window:
            arrival_meter.start()
            start = loop.time() + 0.05
            step = self.spread_s / self.streams
            tasks = [loop.create_task(arrival(i, start + i * step)) for i in range(self.streams)]
            await all_attached
            arrival_meter.stop()
            arrivals_wall_s = loop.time() - start
            tokens_during_arrivals = len(totals.latencies_ns)
            await asyncio.gather(*tasks)
        result = row(self.name, transport, self.streams, totals, window, server, totals_span_s(totals, window))
        result.update({
            "setup_s": arrivals_wall_s,
            "server_ms_per_setup": arrival_meter.used_s / self.streams * 1e3,
            "tokens_during_arrivals": tokens_during_arrivals,
            "arrival_lag_max_ms": max(lags_ms, default=None),
            "submit_p50_ms": statistics.median(submit_ms) if submit_ms else None,
            "submit_p99_ms": _quantile(submit_ms, 0.99),
            "attach_p50_ms": statistics.median(attach_ms) if attach_ms else None,
            "attach_p99_ms": _quantile(attach_ms, 0.99),
            "refused": refused[:10], "refused_count": len(refused),
        })
        return result


@dataclass(frozen=True)
class Submissions:
    """``count`` anonymous submissions one after another, nothing else running: server CPU per submission."""

    name: str
    count: int

    async def rows(self, bench: Bench) -> AsyncIterator[dict[str, Any]]:
        # The demo model at an hour a token: every answer starts and then costs nothing.
        server = bench.server({"CHIME_DEMO_DELAY_MS": "3600000"})
        try:
            yield await self.submit(bench, server)
        finally:
            stop(server)

    async def submit(self, bench: Bench, server: ServerProcess) -> dict[str, Any]:
        pid = server.process.pid  # type: ignore[union-attr]
        for index in range(SUBMIT_WARMUP):
            await _anonymous_submit(server.port, f"warm-up {index}")
        elapsed_ms: list[float] = []
        failed = 0
        with profiled(pid, f"{self.name}-http", bench.profile), Window(pid, None) as window:
            for index in range(self.count):
                started = time.monotonic_ns()
                status, body = await _anonymous_submit(server.port, f"question {index}")
                elapsed_ms.append((time.monotonic_ns() - started) / 1e6)
                failed += status != 201 or "token" not in body
        result = row(self.name, "http", self.count, Totals(), window, server)
        server_s = window.used_s("server")
        loop_s = window.used_s("loop")
        result.update({
            "failed_streams": failed, "delivered": None, "lost": None, "duplicated": None, "out_of_order": None,
            "p50_ms": statistics.median(elapsed_ms), "p99_ms": _quantile(elapsed_ms, 0.99),
            "max_ms": max(elapsed_ms), "tokens_per_s": None,
            "submissions_per_s": self.count / window.wall_s if window.wall_s else None,
            "server_ms_per_setup": server_s / self.count * 1e3,
            "loop_ms_per_submission": loop_s / self.count * 1e3,
        })
        return result


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
