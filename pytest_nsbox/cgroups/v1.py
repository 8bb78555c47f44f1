"""cgroup v1 backend: one directory per box in each hierarchy we use.

Hierarchies are found by controller (``memory``, ``cpu``, ``cpuacct``, ``pids``, ``freezer``);
several controllers may share one mount (``cpu,cpuacct``), and then share one directory.
Files used (Documentation/admin-guide/cgroup-v1/): ``memory.limit_in_bytes``,
``memory.memsw.limit_in_bytes``, ``memory.swappiness``, ``memory.usage_in_bytes``,
``memory.max_usage_in_bytes``, ``memory.oom_control``; ``cpu.cfs_period_us``,
``cpu.cfs_quota_us``; ``cpuacct.usage``; ``pids.max``, ``pids.current``; ``freezer.state``.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Mapping
from os import PathLike

from ..errors import CgroupError
from ..units import cpu_quota
from .base import (
    PREFIX,
    Backend,
    Cgroup,
    Limits,
    Mkdir,
    Rmdir,
    Stats,
    check_name,
    check_parent,
    makedirs,
    mkdir_or_error,
    os_error,
    parse_int,
    parse_keyed,
    read_optional,
    read_text,
    subtree_sum,
    write_text,
)

#: The controllers whose hierarchies get a directory for each box.
USED = ("memory", "cpu", "cpuacct", "pids", "freezer")
#: Which controller enforces each limit.
LIMIT_CONTROLLER = {"memory": "memory", "cpus": "cpu", "pids": "pids"}

CPU_PERIOD = 100_000
CPU_MIN_QUOTA = 1_000
#: v1 reports "no limit" as the largest page-aligned value (PAGE_COUNTER_MAX * PAGE_SIZE).
UNLIMITED_THRESHOLD = 1 << 62


def missing_controller_message(limit: str) -> str:
    """Fix-it text for a limit whose v1 controller is not mounted."""
    c = LIMIT_CONTROLLER[limit]
    return (f"cgroup v1 controller '{c}' is not mounted (no cgroup mount with option '{c}' in "
            f"/proc/self/mountinfo), so the {limit} limit cannot be enforced; mount it "
            f"(`mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup "
            f"/sys/fs/cgroup/{c}`) or drop the {limit} limit")


class V1Cgroup(Cgroup):
    """A box cgroup on cgroup v1: one directory in each used hierarchy."""

    def __init__(self, name: str, dirs: Mapping[str, str], *, rmdir: Rmdir = os.rmdir) -> None:
        """``dirs`` maps controller name to this box's directory in its hierarchy."""
        self.dirs = dict(dirs)
        super().__init__(name, self.dirs.values(), rmdir=rmdir)

    def _file(self, controller: str, name: str) -> str | None:
        d = self.dirs.get(controller)
        return os.path.join(d, name) if d else None

    @staticmethod
    def _write(path: str, value: str, fix: str | None = None) -> None:
        try:
            write_text(path, value)
        except OSError as exc:
            raise os_error(f"write {value!r} to", path, exc, fix) from exc

    def set_limits(self, limits: Limits) -> None:
        """Write each limit whose controller is mounted; a requested one that is not fails."""
        limits.check()
        for limit in limits.requested():
            if LIMIT_CONTROLLER[limit] not in self.dirs:
                raise CgroupError(missing_controller_message(limit))
        if "memory" in self.dirs:
            self._set_memory(limits.memory)
        if "cpu" in self.dirs:
            d = self.dirs["cpu"]
            quota = (-1 if limits.cpus is None
                     else max(CPU_MIN_QUOTA, cpu_quota(limits.cpus, CPU_PERIOD)))
            self._write(os.path.join(d, "cpu.cfs_period_us"), str(CPU_PERIOD))
            self._write(os.path.join(d, "cpu.cfs_quota_us"), str(quota),
                        "a parent cgroup's cpu.cfs_quota_us is lower" if limits.cpus else None)
        if "pids" in self.dirs:
            value = "max" if limits.pids is None else str(limits.pids)
            self._write(os.path.join(self.dirs["pids"], "pids.max"), value)

    def _set_memory(self, memory: int | None) -> None:
        """memory.limit_in_bytes, and memsw to the same value so the box cannot swap.

        The kernel keeps memsw >= memory limit at every step: lowering must set the memory
        limit first, raising must set memsw first. Try memory first; EINVAL means raising.
        """
        d = self.dirs["memory"]
        value = "-1" if memory is None else str(memory)
        limit = os.path.join(d, "memory.limit_in_bytes")
        memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)  # absent when swap accounting is off
        busy = "usage is above the new limit and could not be reclaimed"
        try:
            write_text(limit, value)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not has_memsw:
                fix = busy if exc.errno == errno.EBUSY else None
                raise os_error(f"write {value!r} to", limit, exc, fix) from exc
            self._write(memsw, value)
            self._write(limit, value, busy)
        else:
            if has_memsw:
                self._write(memsw, value)
        if memory is not None:
            # Without memsw (swapaccount=0) this is what keeps the box's pages out of swap.
            try:
                write_text(os.path.join(d, "memory.swappiness"), "0")
            except OSError:
                pass  # best effort: some kernels refuse it below a use_hierarchy parent

    def _read_int(self, controller: str, name: str) -> int | None:
        path = self._file(controller, name)
        return parse_int(read_optional(path)) if path else None

    def stats(self) -> Stats:
        """Read usage; controllers that are not mounted give ``None`` (cpu: 0.0)."""
        limit = self._read_int("memory", "memory.limit_in_bytes")
        if limit is not None and limit >= UNLIMITED_THRESHOLD:
            limit = None
        usage_ns = self._read_int("cpuacct", "cpuacct.usage")
        return Stats(
            memory_current=self._read_int("memory", "memory.usage_in_bytes"),
            memory_peak=self._read_int("memory", "memory.max_usage_in_bytes"),
            memory_limit=limit,
            cpu_seconds=(usage_ns or 0) / 1e9,
            pids_current=self._read_int("pids", "pids.current"),
            oom_kills=self.oom_kills(),
        )

    def oom_kills(self) -> int:
        """``oom_kill`` of memory.oom_control (4.13+; 0 where the kernel lacks it), summed
        over child cgroups.

        On v1 the count is local: the kernel's ``memcg_memory_event()`` adds a kill only
        to the victim's own cgroup (it climbs to parents on the unified hierarchy alone),
        so a kill in a child cgroup of the box shows only in the child's file.
        """
        d = self.dirs.get("memory")
        return subtree_sum(d, "memory.oom_control", "oom_kill") if d else 0

    def _stop_all(self, deadline: float) -> None:
        """With the freezer: FROZEN, SIGKILL each, THAWED, so nothing forks meanwhile."""
        state = self._file("freezer", "freezer.state")
        if state is None or not os.path.exists(state):
            return
        self._write(state, "FROZEN")
        try:
            # FREEZING can stall on tasks in uninterruptible sleep: give it half the budget.
            until = time.monotonic() + max(0.0, deadline - time.monotonic()) / 2
            while time.monotonic() < until:
                current = read_optional(state)
                if current is None or current.strip() == "FROZEN":
                    break
                time.sleep(0.005)
            self._signal(self.pids(), signal.SIGKILL)
        finally:
            try:
                write_text(state, "THAWED")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise os_error("write 'THAWED' to", state, exc) from exc


class V1Backend(Backend):
    """Box cgroups as ``<mount>/<parent>/nsbox-<id>`` in each used v1 hierarchy."""

    version = 1

    def __init__(self, mounts: Mapping[str, str | PathLike[str]], parent: str | None = None,
                 *, mkdir: Mkdir = os.mkdir, rmdir: Rmdir = os.rmdir) -> None:
        """``mounts`` maps each mounted controller to its hierarchy's mount point."""
        self.mounts = {c: os.fspath(p) for c, p in mounts.items()}
        self.parent_rel = check_parent(parent)
        self._mkdir = mkdir
        self._rmdir = rmdir
        # mount point -> every controller on it (incl. ones we do not use, e.g. cpuset)
        self.hierarchies: dict[str, list[str]] = {}
        for controller, mount in self.mounts.items():
            self.hierarchies.setdefault(mount, []).append(controller)
        self.used = {m: cs for m, cs in self.hierarchies.items() if set(cs) & set(USED)}

    def __repr__(self) -> str:
        return f"V1Backend(mounts={self.mounts!r}, parent={self.parent_rel!r})"

    def _parent(self, mount: str) -> str:
        return os.path.join(mount, self.parent_rel) if self.parent_rel else mount

    def available_limits(self) -> frozenset[str]:
        return frozenset(limit for limit, c in LIMIT_CONTROLLER.items() if c in self.mounts)

    def missing_controller(self, limit: str) -> str:
        return missing_controller_message(limit)

    @staticmethod
    def _init_cpuset(path: str) -> None:
        """A new cpuset cgroup has empty cpus/mems and accepts no process: inherit them."""
        parent = os.path.dirname(path)
        for name in ("cpuset.cpus", "cpuset.mems"):
            mine = os.path.join(path, name)
            current = read_optional(mine)
            if current is not None and not current.strip():
                value = read_text(os.path.join(parent, name)).strip()
                try:
                    write_text(mine, value)
                except OSError as exc:
                    raise os_error(f"write {value!r} to", mine, exc) from exc

    def create(self, name: str, limits: Limits) -> V1Cgroup:
        """mkdir in each hierarchy (parents made if missing), then set limits; undo on error."""
        check_name(name)
        self.check_limits(limits)
        dirs: dict[str, str] = {}
        created: list[str] = []
        try:
            for mount, controllers in self.used.items():
                setup = self._init_cpuset if "cpuset" in controllers else None
                parent = makedirs(self._mkdir, mount, self.parent_rel, on_created=setup)
                path = os.path.join(parent, name)
                mkdir_or_error(self._mkdir, path)
                created.append(path)
                if setup:
                    setup(path)
                for c in controllers:
                    dirs[c] = path
            cgroup = V1Cgroup(name, dirs, rmdir=self._rmdir)
            cgroup.set_limits(limits)
        except BaseException:
            for path in reversed(created):
                try:
                    self._rmdir(path)
                except OSError:
                    pass
            raise
        return cgroup

    def open(self, name: str) -> V1Cgroup:
        check_name(name)
        dirs: dict[str, str] = {}
        for mount, controllers in self.used.items():
            path = os.path.join(self._parent(mount), name)
            if os.path.isdir(path):
                dirs.update((c, path) for c in controllers)
        if not dirs:
            raise CgroupError(f"cgroup: no cgroup {name!r} under any of "
                              f"{sorted(self._parent(m) for m in self.used)}")
        return V1Cgroup(name, dirs, rmdir=self._rmdir)

    def list(self, prefix: str = PREFIX) -> list[str]:
        names: set[str] = set()
        for mount in self.used:
            parent = self._parent(mount)
            try:
                entries = list(os.scandir(parent))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise os_error("list", parent, exc) from exc
            names.update(e.name for e in entries
                         if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False))
        return sorted(names)
