"""The benchmark's own parts: its token accounting, and one tiny run through the real server."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from bench.arrivals import Arrivals, Submissions
from bench.clients import Tally, Totals
from bench.procstat import CLOCK_TICKS_PER_S, MachineMeter
from bench.run import UpstreamProcess, parse
from bench.scenarios import SQLITE, Bench, Replay, Store, Streams, log_problems, stop


def feed(tally: Tally, seqs: list[int], emitted_ns: int = 1_000, received_ns: int = 3_000) -> None:
    tally.tokens(b"".join(b'data: {"content":"~%d.%d~"}\n\n' % (seq, emitted_ns) for seq in seqs), received_ns)


def test_the_tally_counts_lost_duplicated_and_out_of_order_tokens() -> None:
    totals = Totals()
    in_order = Tally(totals, expected=3)
    feed(in_order, [0, 1, 2])
    in_order.close("done")
    messy = Tally(totals, expected=6)
    feed(messy, [0, 2, 1, 1, 3])  # 2 before 1, then 1 again; 4 and 5 never come
    messy.close("done")
    assert (totals.delivered, totals.lost, totals.duplicated, totals.out_of_order) == (7, 2, 1, 2)
    assert list(totals.latencies_ns) == [2_000] * 8 and totals.failed_streams == 0


def test_tokens_emitted_before_the_reader_attached_are_replays_not_latencies() -> None:
    totals = Totals()
    tally = Tally(totals, expected=2)
    tally.attached_ns = 2_000
    feed(tally, [0], emitted_ns=1_000)
    feed(tally, [1], emitted_ns=2_500)
    tally.close("error")
    assert (totals.replayed, list(totals.latencies_ns), totals.failed_streams) == (1, [500], 1)


def test_an_ending_is_timed_from_the_last_live_tokens_emission_to_the_terminal_event() -> None:
    totals = Totals()
    replayed_only = Tally(totals, expected=1)
    replayed_only.attached_ns = 5_000
    feed(replayed_only, [0], emitted_ns=1_000)
    replayed_only.ended(9_000)  # nothing live: no ending to time
    live = Tally(totals, expected=2)
    feed(live, [0], emitted_ns=1_000)
    feed(live, [1], emitted_ns=4_000, received_ns=6_000)
    live.ended(10_000)
    assert list(totals.end_latencies_ns) == [6_000]


async def test_a_tiny_run_measures_every_token_through_the_real_server() -> None:
    with UpstreamProcess() as upstream, tempfile.TemporaryDirectory() as work:
        bench = Bench(upstream.port, upstream.process.pid, Path(work))  # type: ignore[union-attr]
        rows = [row async for row in Streams("tiny", 3, 20, 200, 300).rows(bench)]
        rows += [row async for row in Replay("replay", repeats=1).rows(bench)]
    assert [(r["scenario"], r["transport"]) for r in rows] == [
        ("tiny", "direct"), ("tiny", "sse"), ("tiny", "ws"), ("replay-all", "sse"), ("replay-last10", "sse"),
        ("replay-all", "ws"), ("replay-last10", "ws")]
    for row in rows[:3]:  # every token of every stream, in order, once, with a latency
        assert (row["delivered"], row["lost"], row["duplicated"], row["out_of_order"]) == (60, 0, 0, 0)
        assert row["failed_streams"] == 0 and row["p50_ms"] is not None and row["max_ms"] >= row["p50_ms"]
        assert row["end_p99_ms"] > 0  # every stream's terminal event, timed
    for row in rows[1:3]:
        assert row["server_us_per_token"] is not None and row["server_peak_rss_mb"] > 0
    for row in rows[3:]:
        assert row["lost"] == 0 and row["failed_streams"] == 0 and row["endings"] == {"done": 1}


async def test_arrivals_submit_anonymously_inside_the_measurement_and_count_every_token() -> None:
    with UpstreamProcess() as upstream, tempfile.TemporaryDirectory() as work:
        bench = Bench(upstream.port, upstream.process.pid, Path(work))  # type: ignore[union-attr]
        rows = [row async for row in Arrivals("tiny-arrivals", 4, 10, 100, 20, spread_s=0.1).rows(bench)]
        rows += [row async for row in Submissions("tiny-submit", 5).rows(bench)]
    assert [(r["scenario"], r["transport"]) for r in rows] == [
        ("tiny-arrivals", "sse"), ("tiny-arrivals", "ws"), ("tiny-submit", "http")]
    for row in rows[:2]:  # every answer made its own user, and every token came, in order, once
        assert (row["delivered"], row["lost"], row["duplicated"], row["out_of_order"]) == (40, 0, 0, 0)
        assert row["failed_streams"] == 0 and row["refused_count"] == 0 and row["endings"] == {"done": 4}
        assert row["p99_ms"] is not None
        # (CPU is counted in clock ticks: four arrivals may cost less than one)
        assert row["server_ms_per_setup"] >= 0 and row["setup_s"] > 0 and row["arrival_lag_max_ms"] is not None
        assert row["submit_p50_ms"] is not None and row["attach_p99_ms"] >= row["submit_p50_ms"] - 1e-9
        assert row["replayed"] == 0  # the client was there first: a late token is late, never a replay
    submit = rows[2]
    assert submit["failed_streams"] == 0 and submit["server_ms_per_setup"] is not None  # 5 may round to 0 ticks
    assert submit["p50_ms"] is not None and submit["submissions_per_s"] > 0


async def test_the_aiohttp_switch_streams_through_the_sdk_client_and_still_ends_a_stall() -> None:
    with UpstreamProcess() as upstream, tempfile.TemporaryDirectory() as work:
        bench = Bench(upstream.port, upstream.process.pid, Path(work), ("sse",), http_client="aiohttp")  # type: ignore[union-attr]
        rows = [row async for row in Streams("tiny", 3, 20, 200, 300).rows(bench)]
        assert [(r["delivered"], r["lost"], r["failed_streams"]) for r in rows] == [(60, 0, 0)] * 2
        server = bench.model_server({"CHIME_MODEL_STALL_S": "1"})
        try:
            assert "bench.serve" in " ".join(server.process.args)  # type: ignore[union-attr, arg-type]
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                submitted = (await http.post("/api/chat", json={"message": "bench hold=1"})).json()
                started = time.monotonic()
                events = await http.get(submitted["events_url"],
                                        headers={"Authorization": f"Bearer {submitted['token']}"})
        finally:
            stop(server)
    assert "model_stalled" in events.text and time.monotonic() - started < 10


async def test_the_v1_responses_stream_is_a_row_of_its_own_with_every_token() -> None:
    with UpstreamProcess() as upstream, tempfile.TemporaryDirectory() as work:
        bench = Bench(upstream.port, upstream.process.pid, Path(work), transports=("v1",))  # type: ignore[union-attr]
        rows = [row async for row in Streams("tiny", 3, 20, 200, 300).rows(bench)]
        rows += [row async for row in Replay("replay", repeats=1).rows(bench)]
    assert [(r["scenario"], r["transport"]) for r in rows] == [
        ("tiny", "direct"), ("tiny", "v1"), ("replay-all", "v1"), ("replay-last10", "v1")]
    assert (rows[1]["delivered"], rows[1]["lost"], rows[1]["duplicated"], rows[1]["out_of_order"]) == (60, 0, 0, 0)
    assert rows[1]["failed_streams"] == 0 and rows[1]["endings"] == {"done": 3} and rows[1]["end_p99_ms"] > 0
    for row in rows[2:]:  # a resume by sequence number gets exactly the rest
        assert row["lost"] == 0 and row["duplicated"] == 0 and row["failed_streams"] == 0
        assert row["endings"] == {"done": 1}


def test_log_problems_counts_warnings_and_errors_by_kind_without_ids_or_tracebacks() -> None:
    log = "\n".join([
        "2026-11-30 06:30:28,212 WARNING chime.limits: could not give back a running slot of 81JoiP8L59lRVo67huHjdA",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "redis.exceptions.MaxConnectionsError: Too many connections",
        "2026-11-30 06:30:28,213 WARNING chime.limits: could not give back a running slot of m5YamgfSFZUpl-Jk-pij1g",
        "2026-11-30 06:30:28,214 ERROR chime.push: pushing the end of 1tK17GCZK-j4VkBMRw0y-w failed",
        "2026-11-30 06:30:28,215 INFO chime: a WARNING word inside an INFO line is not one",
        "Srv 0 2026-11-30 06:30:21 +0000 ERROR: Sanic's own format counts too",
    ])
    found = log_problems(log)
    assert found["server_log_problems"] == 4
    assert found["server_log_problem_kinds"]["WARNING chime.limits: could not give back a running slot of …"] == 2


def test_the_store_options_name_one_row_per_store_and_process_count() -> None:
    assert parse([]).stores == (SQLITE,)
    args = parse(["--store", "sqlite", "--store", "redis", "--processes", "1,2,4"])
    assert [store.label for store in args.stores] == ["sqlite", "redis×1", "redis×2", "redis×4"]
    assert parse(["--store", "redis"]).stores == (Store("redis", 1),)
    with pytest.raises(SystemExit):
        parse(["--processes", "2"])  # SQLite is one process
    with pytest.raises(SystemExit):
        parse(["--store", "redis", "--processes", "0"])


async def test_redis_rows_with_one_and_two_processes_count_every_token_and_redis_on_its_own() -> None:
    stores = (SQLITE, Store("redis", 1), Store("redis", 2))
    with UpstreamProcess() as upstream, tempfile.TemporaryDirectory() as work:
        bench = Bench(upstream.port, upstream.process.pid, Path(work), ("sse",), stores=stores)  # type: ignore[union-attr]
        rows = [row async for row in Streams("tiny", 4, 20, 200, 300).rows(bench)]
        assert not list(Path(work).glob("redis-*"))  # each row's Redis stopped and its files gone
    assert [(r["scenario"], r["transport"], r["store"], r["processes"]) for r in rows] == [
        ("tiny", "direct", "sqlite", 1), ("tiny sqlite", "sse", "sqlite", 1), ("tiny redis×1", "sse", "redis", 1),
        ("tiny redis×2", "sse", "redis", 2)]
    for row in rows:  # every token of every stream, in order, once, whichever process served it
        assert (row["delivered"], row["lost"], row["duplicated"], row["out_of_order"]) == (80, 0, 0, 0)
        assert row["failed_streams"] == 0 and row["endings"] == {"done": 4} and row["p99_ms"] is not None
        assert {"p99_head_ms", "p99_mid_ms", "p99_tail_ms", "other_cpu_pct", "interrupts_cpu_pct",
                "idle_cpu_pct"} <= row.keys()
    for row in rows[1:]:
        assert isinstance(row["server_log_problems"], int) and "server_log_problem_kinds" in row
    sqlite, redis1, redis2 = rows[1:]
    assert sqlite["redis_us_per_token"] is None and sqlite["redis_peak_rss_mb"] is None
    for row in (redis1, redis2):
        assert row["redis_us_per_token"] is not None and row["redis_peak_rss_mb"] > 0
        assert row["redis_cpu_pct"] is not None and row["server_us_per_token"] is not None
        assert row["server_peak_rss_mb"] > 0 and row["server_busiest_cpu_pct"] is not None
    assert redis1["loop_us_per_token"] is not None and len(redis1["server_process_cpu_pct"]) == 1
    # Two workers and their main process are all the server's: its CPU is every process of the tree.
    assert redis2["loop_us_per_token"] is None and len(redis2["server_process_cpu_pct"]) >= 3
    assert len(redis2["server_process_sockets"]) >= 3 and sum(redis2["server_process_sockets"]) >= 4  # 4 readers


def test_the_machine_meter_accounts_for_every_core_busy_or_idle() -> None:
    """Processes, interrupts, idle and stolen time add up to the window on every core, so a
    row's ``idle CPU%`` near 0 means the machine had nothing left to give."""
    cores = len(os.sched_getaffinity(0))
    with open("/proc/stat") as stat:
        online = sum(1 for line in stat if line.startswith("cpu") and line[3].isdigit())
    meter = MachineMeter().start()
    started = time.monotonic()
    while time.monotonic() - started < 0.5:  # this process keeps one core busy
        pass
    meter.stop()
    wall_s = time.monotonic() - started
    accounted_s = meter.processes_s + meter.interrupts_s + meter.idle_s + meter.stolen_s
    tick_s = 1 / CLOCK_TICKS_PER_S
    assert abs(accounted_s - online * wall_s) <= online * (3 * tick_s) + 0.1 * online * wall_s
    assert meter.processes_s >= 0.5 * wall_s  # the busy core shows as busy, not idle
    assert meter.idle_s <= (online - 0.5) * wall_s + cores * tick_s
