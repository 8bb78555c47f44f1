"""Box cgroups: one interface (``Backend``/``Cgroup``), a v1 and a v2 implementation.

``detect()`` reads the mount table and picks the backend: pure cgroup v2 when
``/sys/fs/cgroup`` itself is cgroup2, else the v1 hierarchies (hybrid hosts whose unified
mount holds none of our controllers are v1). Where v2 box cgroups go and what is changed
to put them there (and undone after) is ``placement``. Imported at pytest startup: stdlib
only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import HostNotSupported
from ..kernel import mountinfo as _mountinfo
from .base import PREFIX, Backend, Cgroup, Limits, Stats, read_optional
from .placement import release_all, restore_stale
from .v1 import V1Backend, V1Cgroup
from .v2 import V2Backend, V2Cgroup

__all__ = [
    "PREFIX",
    "Backend",
    "Cgroup",
    "Limits",
    "Mount",
    "Stats",
    "V1Backend",
    "V1Cgroup",
    "V2Backend",
    "V2Cgroup",
    "box_cgroup_name",
    "detect",
    "parse_mountinfo",
    "release_all",
    "restore_stale",
]

#: Controllers that can appear in a v1 mount's super options (the rest are mount options).
V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
    "perf_event", "hugetlb", "pids", "rdma", "misc",
})
#: The cgroup2 mount option that makes memory.events count a cgroup's own events only.
LOCAL_EVENTS = "memory_localevents"
#: The controllers that enforce box limits, on either version.
_LIMITING = frozenset({"memory", "cpu", "pids"})

FIX_NO_CGROUPFS = (
    "cgroups: no cgroup filesystem is mounted (none in {mountinfo}); mount cgroup2 "
    "(`mount -t cgroup2 none /sys/fs/cgroup`) or give the container a /sys/fs/cgroup"
)
FIX_NO_CONTROLLERS = (
    "cgroups: no cgroup hierarchy here has the memory, cpu or pids controller "
    "(v1 mounts: {v1}; cgroup2 at {v2} has: '{v2c}'); boot with cgroup v2 "
    "(systemd.unified_cgroup_hierarchy=1) or mount the v1 controllers"
)


def box_cgroup_name(box_id: str) -> str:
    """The cgroup directory name of a box: ``nsbox-<id>``."""
    return PREFIX + box_id


@dataclass(frozen=True)
class Mount:
    """One cgroup line of mountinfo."""

    point: str
    fstype: str
    options: tuple[str, ...]
    """Super options: for cgroup v1 they name the controllers."""
    root: str = "/"
    """The cgroup shown at ``point`` (mountinfo's root field), relative to our cgroup
    namespace's root: ``/`` unless a subtree (or a host hierarchy seen from a cgroup
    namespace) is mounted."""

    @property
    def controllers(self) -> list[str]:
        return [o for o in self.options if o in V1_CONTROLLERS]


def parse_mountinfo(text: str) -> list[Mount]:
    """The ``cgroup`` and ``cgroup2`` mounts in a mountinfo text (proc(5) format)."""
    return _cgroup_mounts(_mountinfo.parse(text))


def _cgroup_mounts(entries: list[_mountinfo.MountEntry]) -> list[Mount]:
    return [Mount(m.point, m.fstype, m.super_options, m.root) for m in entries
            if m.fstype in ("cgroup", "cgroup2")]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def detect(root: str = "/sys/fs/cgroup", mountinfo: str = "/proc/self/mountinfo",
           parent: str | None = None) -> Backend:
    """The backend for this host; ``HostNotSupported`` with a fix-it line if none is usable.

    ``parent`` is where box cgroups go, relative to each hierarchy's root.
    """
    root = os.path.normpath(root)
    try:
        mounts = _cgroup_mounts(_mountinfo.read(mountinfo))
    except OSError as exc:
        raise HostNotSupported(f"cgroups: cannot read {mountinfo}: {exc.strerror}; "
                               "mount /proc (pytest-nsbox needs Linux)") from exc
    if not mounts:
        raise HostNotSupported(FIX_NO_CGROUPFS.format(mountinfo=mountinfo))

    # Prefer mounts under root (a host may also have bind mounts elsewhere).
    mounts.sort(key=lambda m: not _under(m.point, root))
    unified = [m for m in mounts if m.fstype == "cgroup2"]
    at_root = [m for m in unified if m.point == root]
    if at_root:
        # Pure v2: even without delegated controllers, grouping and kill still work;
        # available_limits() then says which limits are missing.
        return V2Backend(root, parent, local_events=LOCAL_EVENTS in at_root[0].options,
                         mount_root=at_root[0].root)

    v1_mounts: dict[str, str] = {}
    for m in mounts:
        if m.fstype == "cgroup":
            for c in m.controllers:
                v1_mounts.setdefault(c, m.point)
    v2_point = unified[0].point if unified else None
    v2_controllers = (read_optional(os.path.join(v2_point, "cgroup.controllers")) or ""
                      if v2_point else "").split()
    v1_useful = _LIMITING & set(v1_mounts)
    v2_useful = _LIMITING & set(v2_controllers)
    if v1_useful and len(v1_useful) >= len(v2_useful):
        return V1Backend(v1_mounts, parent)
    if v2_point and v2_useful:
        return V2Backend(v2_point, parent, local_events=LOCAL_EVENTS in unified[0].options,
                         mount_root=unified[0].root)
    raise HostNotSupported(FIX_NO_CONTROLLERS.format(
        v1=", ".join(sorted(v1_mounts)) or "none", v2=v2_point or "nowhere",
        v2c=" ".join(v2_controllers)))
