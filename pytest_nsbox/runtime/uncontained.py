"""A box without a cgroup of its own: what a rootless owner gets where no cgroup is
delegated to it, for a box that asks for no limit.

Such a box stays in its owner's cgroup (runc's rootless mode without a writable cgroup
does the same: "we cannot set up *any* cgroups", commit cef7834 "add support for rootless
containers"). Its processes still end with it (they live in its PID namespace, whose
init's death kills them all), so nothing is left to remove. What its ``Stats`` can say
comes from ``/proc`` (proc(5)) over the processes of its PID namespace:

- ``cpu_seconds``: ``utime + stime + cutime + cstime`` of every process still there. A
  process that ended was waited for by its parent, which is also the box's (the init reaps
  the orphans), and its times went into that parent's ``cutime``/``cstime``; so every CPU
  second its processes used is counted once;
- ``pids_current``: how many processes are there;
- memory, its peak and limit: ``None`` (not measured: without a memory cgroup nothing
  charges the box's page cache and kernel memory to it), and ``oom_kills`` 0: the kernel
  reports an OOM kill to the victim's memory cgroup only, and the box has none.
"""
from __future__ import annotations

import os

from ..cgroups.base import Limits, Stats

_TICKS = os.sysconf("SC_CLK_TCK")


def _pidns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _times(pid: int) -> int | None:
    """``utime + stime + cutime + cstime`` of ``pid`` in clock ticks (proc(5) fields 14-17)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rpartition(")")[2].split()
        return sum(int(x) for x in fields[11:15])
    except (OSError, ValueError, IndexError):
        return None


class Uncontained:
    """The stand-in for a ``cgroups.Cgroup`` of a box that has none (module docstring).

    ``track(pid)`` tells it the box's init once it runs. It joins no cgroup
    (``procs_files`` is empty), applies no limit, and its ``destroy`` has nothing to do.
    """

    def __init__(self, name: str, reason: str) -> None:
        """``reason``: why there is no cgroup (``describe`` repeats it)."""
        self.name = name
        self.reason = reason
        self.init_pid = 0
        self.paths: list[str] = []

    def __repr__(self) -> str:
        return f"Uncontained({self.name!r})"

    def track(self, pid: int) -> None:
        self.init_pid = pid

    def procs_files(self) -> list[str]:
        return []

    def set_limits(self, limits: Limits) -> None:
        if limits.requested():
            raise ValueError(f"a box without a cgroup takes no limits ({self.reason})")

    def pids(self) -> list[int]:
        """The host PIDs of the box's processes: those in its init's PID namespace."""
        if not self.init_pid:
            return []
        ns = _pidns(self.init_pid)
        if ns is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _pidns(int(entry)) == ns:
                found.append(int(entry))
        return sorted(found)

    def stats(self) -> Stats:
        ticks = 0
        pids = self.pids()
        for pid in pids:
            ticks += _times(pid) or 0
        return Stats(memory_current=None, memory_peak=None, memory_limit=None,
                     cpu_seconds=ticks / _TICKS, pids_current=len(pids), oom_kills=0)

    def oom_kills(self) -> int:
        return 0

    def destroy(self, timeout: float = 5.0) -> None:
        """Nothing to remove: the box's processes end with its PID namespace."""

    def exists(self) -> bool:
        return False
