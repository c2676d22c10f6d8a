"""CPU time and memory of a process, from /proc (Linux)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    return sum(cpu_split_s(pid))


def cpu_split_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the process."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    return int(fields[11]) / CLOCK_TICKS_PER_S, int(fields[12]) / CLOCK_TICKS_PER_S


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) in KiB, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU seconds a process spent between ``start`` and ``stop``; pid None means this process."""

    pid: int | None
    started: tuple[float, float] = (0.0, 0.0)
    used_s: float = 0.0
    system_s: float = 0.0  # the part spent in the kernel (syscalls, loopback TCP)

    def read(self) -> tuple[float, float]:
        if self.pid is None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime, usage.ru_stime
        return cpu_split_s(self.pid)

    def start(self) -> "CpuMeter":
        self.started = self.read()
        return self

    def stop(self) -> float:
        user, system = self.read()
        self.system_s = system - self.started[1]
        self.used_s = user - self.started[0] + self.system_s
        return self.used_s
