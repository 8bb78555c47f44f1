"""What ``/proc/<pid>`` says about a process: start time, status fields, PID-namespace init,
cgroup membership (proc(5)). Imports only the stdlib."""
from __future__ import annotations

import os


def start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot): with its pid, it names the
    process uniquely. ``None`` when there is no such process, or only its zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    try:
        if fields[0] in ("Z", "X"):  # a zombie's fds, and locks, are gone
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


_own_start: tuple[int, int] = (0, 0)


def own_start_time() -> int:
    """This process's start time (cached per pid: a forked child asks again)."""
    global _own_start
    if _own_start[0] != os.getpid():
        _own_start = (os.getpid(), start_time(os.getpid()) or 0)
    return _own_start[1]


def status_field(pid: int, name: str) -> list[str] | None:
    """The words of field ``name`` in ``/proc/<pid>/status`` (``None``: no such process or
    field)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.split()
    except OSError:
        return None
    return None


def is_namespace_init(pid: int) -> bool:
    """Whether ``pid`` is alive and PID 1 of a PID namespace below this one (a box's init)."""
    nspid = status_field(pid, "NSpid")
    state = status_field(pid, "State")
    return bool(nspid and len(nspid) > 1 and nspid[-1] == "1"
                and state and state[0] not in ("Z", "X"))


def in_cgroup(pid: int, name: str) -> bool:
    """Whether process ``pid`` is in a cgroup called ``name`` (any hierarchy)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            return any(line.rstrip("\n").endswith("/" + name) for line in f)
    except OSError:
        return False


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask's count, else the online CPUs,
    as moby ``pkg/sysinfo/numcpu_linux.go`` ``NumCPU`` counts them (the upper bound of a
    box's ``cpus``)."""
    try:
        return len(os.sched_getaffinity(0)) or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1
