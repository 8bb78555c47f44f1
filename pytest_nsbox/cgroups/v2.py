"""cgroup v2 backend: one directory per box in the unified hierarchy.

Files used (Documentation/admin-guide/cgroup-v2.rst): ``memory.max``, ``memory.swap.max``,
``memory.current``, ``memory.peak`` (5.19+), ``memory.events``; ``cpu.max``, ``cpu.stat``;
``pids.max``, ``pids.current``; ``cgroup.kill`` (5.14+), ``cgroup.freeze`` (5.2+). Where
the box cgroups go, and the controllers enabled for them, is ``placement.py``'s business.
"""
from __future__ import annotations

import builtins
import os
import signal
import time
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
    mkdir_or_error,
    os_error,
    parse_int,
    parse_keyed,
    read_optional,
    subtree_sum,
    write_text,
)
from .placement import (
    Placement,
    Writable,
    Write,
    choose_base,
    default_records,
    may_create,
    own_cgroup,
    restore_stale,
)

#: cpu.max period in microseconds (the kernel default); quota is ``cpus * PERIOD``, exact
#: (``units.cpu_quota``, as moby computes it from NanoCPUs).
CPU_PERIOD = 100_000
#: The kernel refuses a quota below 1 ms.
CPU_MIN_QUOTA = 1_000

#: The controllers boxes use, and which limit each one enforces.
CONTROLLERS = {"memory": "memory", "cpu": "cpus", "pids": "pids"}
_LIMIT_CONTROLLER = {v: k for k, v in CONTROLLERS.items()}


def _controllers(path: str) -> list[str]:
    """Controllers listed in ``path/cgroup.controllers`` ([] if unreadable)."""
    text = read_optional(os.path.join(path, "cgroup.controllers"))
    return text.split() if text else []


class V2Cgroup(Cgroup):
    """A box cgroup on cgroup v2: a single directory."""

    def __init__(self, name: str, path: str, *, rmdir: Rmdir = os.rmdir,
                 write: Write = write_text, local_events: bool = False) -> None:
        """``local_events``: cgroup2 is mounted with ``memory_localevents``; ``write``
        writes one value to an interface file (a fake tree passes its own)."""
        super().__init__(name, [path], rmdir=rmdir)
        self.path = path
        self.local_events = local_events
        self._write = write

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _set(self, name: str, value: str, required: bool) -> None:
        """Write one interface file; a missing file is an error only for a requested limit."""
        path = self._file(name)
        try:
            self._write(path, value)
        except FileNotFoundError as exc:
            if required:
                controller = name.split(".")[0]
                raise os_error(f"write {value!r} to", path, exc,
                               f"the {controller} controller is not enabled for this cgroup "
                               f"(not in {os.path.dirname(self.path)}/cgroup.subtree_control)"
                               ) from exc
        except OSError as exc:
            raise os_error(f"write {value!r} to", path, exc) from exc

    def set_limits(self, limits: Limits) -> None:
        """memory.max with swap off, cpu.max as quota per 100 ms, pids.max."""
        limits.check()
        if limits.memory is not None:
            self._set("memory.max", str(limits.memory), True)
            if os.path.exists(self._file("memory.swap.max")):
                self._set("memory.swap.max", "0", True)
        elif os.path.exists(self._file("memory.max")):
            self._set("memory.max", "max", False)
            if os.path.exists(self._file("memory.swap.max")):
                self._set("memory.swap.max", "max", False)
        if limits.cpus is not None:
            quota = max(CPU_MIN_QUOTA, cpu_quota(limits.cpus, CPU_PERIOD))
            self._set("cpu.max", f"{quota} {CPU_PERIOD}", True)
        elif os.path.exists(self._file("cpu.max")):
            self._set("cpu.max", f"max {CPU_PERIOD}", False)
        if limits.pids is not None:
            self._set("pids.max", str(limits.pids), True)
        elif os.path.exists(self._file("pids.max")):
            self._set("pids.max", "max", False)

    def _read_int(self, name: str) -> int | None:
        return parse_int(read_optional(self._file(name)))

    def stats(self) -> Stats:
        """Read usage; files of controllers that are not enabled give ``None``."""
        cpu = parse_keyed(read_optional(self._file("cpu.stat")) or "")
        return Stats(
            memory_current=self._read_int("memory.current"),
            memory_peak=self._read_int("memory.peak"),
            memory_limit=self._read_int("memory.max"),
            cpu_seconds=cpu.get("usage_usec", 0) / 1e6,
            pids_current=self._read_int("pids.current"),
            oom_kills=self.oom_kills(),
        )

    def oom_kills(self) -> int:
        """``oom_kill`` of memory.events, child cgroups included.

        cgroup-v2.rst: memory.events counts this cgroup and its subtree, and
        memory.events.local this cgroup alone; with the ``memory_localevents`` mount
        option memory.events is local too, and then the subtree is summed here.
        """
        if self.local_events:
            return subtree_sum(self.path, "memory.events", "oom_kill")
        text = read_optional(self._file("memory.events"))
        return parse_keyed(text).get("oom_kill", 0) if text else 0

    def _stop_all(self, deadline: float) -> None:
        if not self._kill_file():
            self._freeze_kill_thaw(deadline)

    def _kill_file(self) -> bool:
        """``cgroup.kill`` kills the whole subtree atomically, forks included (5.14+)."""
        path = self._file("cgroup.kill")
        try:
            write_text(path, "1")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise os_error("write '1' to", path, exc) from exc
        return True

    def _freeze_kill_thaw(self, deadline: float) -> None:
        """Freeze so nothing forks while we signal, SIGKILL each, thaw so they can die."""
        freeze = self._file("cgroup.freeze")
        try:
            write_text(freeze, "1")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error("write '1' to", freeze, exc) from exc
        try:
            # Freezing can stall on tasks in uninterruptible sleep: give it half the budget.
            until = time.monotonic() + max(0.0, deadline - time.monotonic()) / 2
            while time.monotonic() < until:
                events = parse_keyed(read_optional(self._file("cgroup.events")) or "")
                if events.get("frozen") == 1:
                    break
                time.sleep(0.005)
            self._signal(self.pids(), signal.SIGKILL)
        finally:
            try:
                write_text(freeze, "0")
            except FileNotFoundError:
                pass  # the cgroup went away: nothing left to thaw
            except OSError as exc:
                raise os_error("write '0' to", freeze, exc) from exc


class V2Backend(Backend):
    """Box cgroups as ``<base>/nsbox-<id>`` in a cgroup2 hierarchy mounted at ``root``.

    ``base`` is ``parent`` (``nsbox_cgroup_parent``) when given, else chosen by
    ``placement.choose_base``: the mount's root where we may write it, else our own
    delegated cgroup. ``own`` is our cgroup relative to the mount (default: read from
    ``/proc/self/cgroup`` for a mount whose mountinfo root is ``mount_root``); ``records``
    the directory changes to the hierarchy are recorded in (default
    ``placement.default_records()``). ``mkdir``, ``rmdir``, ``write`` and
    ``writable`` are the kernel's part: a fake tree (plain files) passes its own.
    """

    version = 2

    def __init__(self, root: str | PathLike[str] = "/sys/fs/cgroup", parent: str | None = None,
                 *, mkdir: Mkdir = os.mkdir, rmdir: Rmdir = os.rmdir, write: Write = write_text,
                 writable: Writable = may_create, local_events: bool = False,
                 own: str | None = None, mount_root: str = "/",
                 records: str | None = None) -> None:
        """``local_events``: the mount has ``memory_localevents`` (see ``oom_kills``)."""
        self.root = os.fspath(root)
        self.local_events = local_events
        explicit = check_parent(parent)
        self.own = own if own is not None else own_cgroup(mount_root)
        self.writable = writable
        self.parent_rel, self.placed_by = choose_base(self.root, explicit, self.own, writable)
        self.parent = os.path.join(self.root, self.parent_rel) if self.parent_rel else self.root
        self._mkdir = mkdir
        self._rmdir = rmdir
        self._write = write
        self.placement = Placement(
            self.root, self.parent_rel, explicit=bool(explicit), own=self.own,
            records=records or default_records(),
            write=write, mkdir=mkdir, rmdir=rmdir)

    def __repr__(self) -> str:
        return f"V2Backend(root={self.root!r}, parent={self.parent_rel!r})"

    def available_limits(self) -> frozenset[str]:
        """Limits whose controller the parent has (it enables them for its children)."""
        have = _controllers(self.placement.deepest_existing())
        return frozenset(CONTROLLERS[c] for c in have if c in CONTROLLERS)

    def missing_controller(self, limit: str) -> str:
        controller = _LIMIT_CONTROLLER[limit]
        where = self.placement.deepest_existing()
        have = " ".join(_controllers(where))
        return (f"cgroup v2 controller '{controller}' is not available in {where} "
                f"(cgroup.controllers: '{have}'), so the {limit} limit cannot be enforced; "
                f"enable +{controller} in the cgroup.subtree_control of its parents "
                f"(systemd: Delegate=yes) or drop the {limit} limit")

    def create(self, name: str, limits: Limits) -> V2Cgroup:
        """mkdir under the parent, made ready for the controllers ``limits`` need (only
        those: ``placement.Placement.prepare``), then set the limits."""
        check_name(name)
        self.check_limits(limits)
        parent = self.placement.prepare(_LIMIT_CONTROLLER[n] for n in limits.requested())
        path = os.path.join(parent, name)
        mkdir_or_error(self._mkdir, path)
        cgroup = self._cgroup(name, path)
        try:
            cgroup.set_limits(limits)
        except BaseException:
            try:
                cgroup.destroy(1.0)
            except CgroupError:
                pass
            raise
        return cgroup

    def _cgroup(self, name: str, path: str) -> V2Cgroup:
        return V2Cgroup(name, path, rmdir=self._rmdir, write=self._write,
                        local_events=self.local_events)

    def open(self, name: str) -> V2Cgroup:
        check_name(name)
        path = os.path.join(self.parent, name)
        if not os.path.isdir(path):
            raise CgroupError(f"cgroup: no cgroup {path}")
        return self._cgroup(name, path)

    def list(self, prefix: str = PREFIX) -> list[str]:
        try:
            entries = list(os.scandir(self.parent))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise os_error("list", self.parent, exc) from exc
        return sorted(e.name for e in entries
                      if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False))

    def close(self) -> builtins.list[str]:
        """Undo what was changed to place boxes here, unless another session still relies
        on it (``Placement.release``); returns the problems, one line each."""
        return self.placement.release()

    def restore_stale(self, dry_run: bool = False) -> tuple[builtins.list[str],
                                                            builtins.list[str]]:
        """``placement.restore_stale`` over this backend's records."""
        return restore_stale(self.placement.records, dry_run=dry_run, write=self._write,
                             rmdir=self._rmdir)
