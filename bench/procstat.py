"""CPU time and memory of a process, from /proc (Linux)."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    return sum(cpu_split_s(pid))


def cpu_split_s(pid: int, tree: bool = False) -> tuple[float, float]:
    """(user, system) CPU seconds of the process; with ``tree``, of its children too.

    A child's share is counted while it runs and, once reaped, through the
    parent's cutime/cstime (fields 16 and 17).
    """
    fields = _stat(pid)
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    user: float = int(fields[11])
    system: float = int(fields[12])
    if tree:
        user, system = user + int(fields[13]), system + int(fields[14])
        for child in children(pid):
            child_user, child_system = cpu_split_s(child, tree=True)
            user, system = user + child_user * CLOCK_TICKS_PER_S, system + child_system * CLOCK_TICKS_PER_S
    return user / CLOCK_TICKS_PER_S, system / CLOCK_TICKS_PER_S


def started_ticks(pid: int) -> int:
    """When the process started (field 22, clock ticks since boot): with the pid, names one process; 0 if gone."""
    return int(_stat(pid)[19])


def _stat(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:  # a child that exited between listing and reading
        return [b"0"] * 22


def children(pid: int) -> list[int]:
    """The live child processes (the server's database writer)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listed:
                found += [int(child) for child in listed.read().split()]
    except FileNotFoundError:
        pass
    return found


def memory_kb(pid: int, tree: bool = False) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) in KiB, from /proc/<pid>/status; with ``tree``, summed over children."""
    found: dict[str, int] = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in found:
                    found[name] = int(value.split()[0])
    except FileNotFoundError:
        pass
    if tree:
        for child in children(pid):
            for name, kb in memory_kb(child, tree=True).items():
                found[name] += kb
    return found


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU seconds a process spent between ``start`` and ``stop``; pid None means this process."""

    pid: int | None
    tree: bool = False  # with the process's children
    started: tuple[float, float] = (0.0, 0.0)
    used_s: float = 0.0
    system_s: float = 0.0  # the part spent in the kernel (syscalls, loopback TCP)

    def read(self) -> tuple[float, float]:
        if self.pid is None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime, usage.ru_stime
        return cpu_split_s(self.pid, self.tree)

    def start(self) -> CpuMeter:
        self.started = self.read()
        return self

    def stop(self) -> float:
        user, system = self.read()
        self.system_s = system - self.started[1]
        self.used_s = user - self.started[0] + self.system_s
        return self.used_s


def tree_pids(pid: int) -> list[int]:
    """The process and every live descendant (with ``CHIME_WORKERS``: the main process and its workers)."""
    found = [pid]
    for child in children(pid):
        found += tree_pids(child)
    return found


@dataclass
class TreeMeter:
    """CPU seconds of each process of a tree between ``start`` and ``stop``, by pid.

    A process born in between counts from zero; one that exited in between is left
    out (its CPU is still in ``CpuMeter(pid, tree=True)``, through its parent).
    """

    pid: int
    started: dict[int, float] = field(default_factory=dict)
    used_s: dict[int, float] = field(default_factory=dict)

    def read(self) -> dict[int, float]:
        return {each: cpu_s(each) for each in tree_pids(self.pid)}

    def start(self) -> TreeMeter:
        self.started = self.read()
        return self

    def stop(self) -> dict[int, float]:
        self.used_s = {each: used - self.started.get(each, 0.0) for each, used in self.read().items()}
        return self.used_s


def machine_ticks() -> tuple[int, int, int, int]:
    """(processes, interrupts, idle, stolen) clock ticks of every CPU since boot, from /proc/stat.

    ``processes`` is user, nice and system time: what the processes' own counters add up to.
    ``interrupts`` (irq and softirq) is accounted to no process: on loopback, much of TCP's
    receive path runs there.
    """
    with open("/proc/stat", "rb") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user and nice)
    fields += [0] * (8 - len(fields))
    return fields[0] + fields[1] + fields[2], fields[5] + fields[6], fields[3] + fields[4], fields[7]


@dataclass
class MachineMeter:
    """CPU seconds of the whole machine over a window: processes (all of them), interrupts, idle
    (no work on a CPU: what was left to absorb a burst), stolen by the host."""

    started: tuple[int, int, int, int] = (0, 0, 0, 0)
    processes_s: float = 0.0
    interrupts_s: float = 0.0
    idle_s: float = 0.0
    stolen_s: float = 0.0

    def start(self) -> MachineMeter:
        self.started = machine_ticks()
        return self

    def stop(self) -> None:
        processes, interrupts, idle, stolen = (now - then for now, then in zip(machine_ticks(), self.started,
                                                                                strict=True))
        self.processes_s = processes / CLOCK_TICKS_PER_S
        self.interrupts_s = interrupts / CLOCK_TICKS_PER_S
        self.idle_s = idle / CLOCK_TICKS_PER_S
        self.stolen_s = stolen / CLOCK_TICKS_PER_S


def open_sockets(pid: int) -> int:
    """How many sockets the process holds (its clients' connections, and its own to Redis or the model)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return 0
    count = 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count
