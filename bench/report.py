"""The results: one row per (scenario, transport, store), printed as a table and saved as JSON.

CPU% columns are of one core (100 = one core busy for the whole row): ``srv CPU%`` the
server's whole process tree, ``busiest%`` its busiest process (the event loop, or the
busiest worker), ``redis CPU%`` the Redis of the row, ``irq CPU%`` the machine's
interrupt and softirq time (accounted to no process; loopback TCP's receive path runs
there), ``other CPU%`` every other process on the machine (another job's load, which
makes the row's figures suspect), ``idle CPU%`` what the machine's CPUs left unused (of
all its cores: near 0, every hop of a token waits for a core, and latency follows the
host's noise). ``p99 1st s``/``mid``/``last s``: p99 of the tokens
emitted in the first second, the last second and between (the stream rows start and end
every stream together: a stall at the start or the end shows apart from the steady
state). ``log warn``: warnings and errors in the server's log over its life. The JSON
also has each server process's CPU% and sockets (``server_process_cpu_pct``,
``server_process_sockets``: how the kernel spread the connections over the workers).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# (key, heading, format) in the order printed.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scenario", "scenario", "{}"),
    ("transport", "via", "{}"),
    ("streams", "conns", "{:,}"),
    ("delivered", "delivered", "{:,}"),
    ("lost", "lost", "{:,}"),
    ("duplicated", "dup", "{:,}"),
    ("out_of_order", "ooo", "{:,}"),
    ("failed_streams", "failed", "{:,}"),
    ("replayed", "replay", "{:,}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("max_ms", "max ms", "{:.2f}"),
    ("p99_head_ms", "p99 1st s", "{:.1f}"),
    ("p99_mid_ms", "p99 mid", "{:.1f}"),
    ("p99_tail_ms", "p99 last s", "{:.1f}"),
    ("end_p99_ms", "end p99", "{:.1f}"),
    ("tokens_per_s", "tok/s", "{:,.0f}"),
    ("server_us_per_token", "srv µs/tok", "{:.1f}"),
    ("loop_us_per_token", "loop µs/tok", "{:.1f}"),
    ("server_system_pct", "srv sys%", "{:.0f}"),
    ("server_cpu_pct", "srv CPU%", "{:.0f}"),
    ("server_busiest_cpu_pct", "busiest%", "{:.0f}"),
    ("server_peak_rss_mb", "srv peak MB", "{:.1f}"),
    ("kb_per_connection", "KB/conn", "{:.1f}"),
    ("upstream_us_per_token", "up µs/tok", "{:.1f}"),
    ("redis_us_per_token", "redis µs/tok", "{:.1f}"),
    ("redis_cpu_pct", "redis CPU%", "{:.0f}"),
    ("redis_peak_rss_mb", "redis MB", "{:.1f}"),
    ("loadgen_us_per_token", "gen µs/tok", "{:.1f}"),
    ("loadgen_cpu_pct", "gen CPU%", "{:.0f}"),
    ("interrupts_cpu_pct", "irq CPU%", "{:.0f}"),
    ("other_cpu_pct", "other CPU%", "{:.0f}"),
    ("idle_cpu_pct", "idle CPU%", "{:.0f}"),
    ("server_log_problems", "log warn", "{:,}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("setup_s", "setup s", "{:.1f}"),
    ("server_ms_per_setup", "srv ms/setup", "{:.2f}"),
    ("attach_p99_ms", "attach p99 ms", "{:.0f}"),
    ("arrival_lag_max_ms", "lag ms", "{:.1f}"),
)


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "—" if value is None else fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[heading for _, heading, _ in COLUMNS]]
    cells += [[cell(row, key, fmt) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = [" | ".join(text.rjust(width) if i > 1 else text.ljust(width)
                        for i, (text, width) in enumerate(zip(line, widths, strict=True))) for line in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def save(rows: list[dict[str, Any]], options: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = RESULTS_DIR / f"bench-{stamp}.json"
    document = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "options": options,
                "machine": {"python": platform.python_version(), "cpus": _cpus(), "system": platform.platform()},
                "rows": rows}
    path.write_text(json.dumps(document, indent=2))
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
