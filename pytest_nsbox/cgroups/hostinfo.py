"""What ``python -m pytest_nsbox doctor`` says about cgroups: the version, where box
cgroups would go, whether this process may create them there, and which limits
(controllers) boxes could have; for what is missing, what to change.

Reads only: nothing is created, enabled or moved (the placement does that when a box is
made, ``placement.py``).
"""
from __future__ import annotations

import os

from ..errors import HostNotSupported
from ..kernel.hostcheck import Finding
from . import detect
from .base import FIX_PERMISSION, PARENT_SETTING, Backend
from .placement import NOT_DOMAIN, OWNER_LEAF, cgroup_type, pids_in, words_of
from .v1 import LIMIT_CONTROLLER, V1Backend
from .v2 import V2Backend

#: The limits boxes take, in the order doctor lists them.
LIMITS = ("memory", "cpus", "pids")


def _nearest(path: str, top: str) -> str:
    while not os.path.isdir(path) and len(path) > len(top):
        path = os.path.dirname(path)
    return path


def _limits_line(backend: Backend) -> tuple[str, list[str]]:
    have = backend.available_limits()
    usable = [n for n in LIMITS if n in have]
    missing = [backend.missing_controller(n) for n in LIMITS if n not in have]
    return ("limits: " + (", ".join(usable) or "none")), missing


def _v1(backend: V1Backend, root: bool) -> Finding:
    where = []
    blocked = []
    for limit in LIMITS:
        controller = LIMIT_CONTROLLER[limit]
        mount = backend.mounts.get(controller)
        if mount is None:
            continue
        parent = os.path.join(mount, backend.parent_rel) if backend.parent_rel else mount
        writable = os.access(_nearest(parent, mount), os.W_OK | os.X_OK)
        where.append(f"{controller} at {parent}{'' if writable else ' (not writable)'}")
        if not writable:
            blocked.append(parent)
    limits, missing = _limits_line(backend)
    if blocked:
        limits = "limits: none (no cgroup this user may create)"
    detail = f"v1 (hybrid): {', '.join(where) or 'no controller boxes use'}; {limits}"
    if blocked:
        fix = (f"this user may not create cgroups in {', '.join(blocked)}; cgroup v1 has no "
               "delegation to normal users: run pytest as root, or use a cgroup v2 host")
        return Finding("cgroups", False, detail, fix, required=root)
    return Finding("cgroups", True, detail, " | ".join(missing) or None, required=root)


def _v2(backend: V2Backend, root: bool) -> Finding:
    base = backend.parent
    level = _nearest(base, backend.root)
    placed = f"box cgroups under {base} ({backend.placed_by})"
    limits, missing = _limits_line(backend)
    enabled = words_of(os.path.join(level, "cgroup.subtree_control"))
    kind = cgroup_type(level)
    pids = pids_in(level)
    notes = [f"enabled there: {' '.join(enabled) or 'none'}"]
    problem = None
    if not backend.writable(level):
        problem = f"this user may not create cgroups in {level}: {FIX_PERMISSION}"
        limits = "limits: none (no cgroup this user may create)"
    elif kind in NOT_DOMAIN:
        problem = (f"{level} is a '{kind}' cgroup, which holds threads, not processes: set "
                   f"{PARENT_SETTING} to a cgroup of type 'domain'")
    elif kind is not None and pids:
        home = backend.placement.is_home(level)
        if home:
            notes.append(f"our processes move into {level}/{OWNER_LEAF} when a limit needs a "
                         "controller there, and back at the end")
        elif set(LIMITS) & backend.available_limits():
            problem = (f"{level} holds processes of other programs, so no controller can be "
                       f"enabled there for boxes: set {PARENT_SETTING} to a cgroup without "
                       "processes")
    detail = f"v2 at {backend.root}: {placed}; {limits}; " + "; ".join(notes)
    if problem:
        return Finding("cgroups", False, detail, problem, required=root)
    return Finding("cgroups", True, detail, " | ".join(missing) or None, required=root)


def finding(parent: str | None = None, *, backend: Backend | None = None,
            euid: int | None = None) -> Finding:
    """The cgroups line of ``doctor`` for boxes under ``parent`` (``nsbox_cgroup_parent``;
    ``backend``: the one to describe, default ``detect(parent=parent)``). Box cgroups are
    required as root; for a normal user they carry only the limits."""
    root = (os.geteuid() if euid is None else euid) == 0
    if backend is None:
        try:
            backend = detect(parent=parent)
        except HostNotSupported as exc:
            return Finding("cgroups", False, "no usable cgroup hierarchy", str(exc),
                           required=root)
    if isinstance(backend, V2Backend):
        return _v2(backend, root)
    if isinstance(backend, V1Backend):
        return _v1(backend, root)
    limits, missing = _limits_line(backend)
    return Finding("cgroups", True, f"v{backend.version}; {limits}", " | ".join(missing) or None)
