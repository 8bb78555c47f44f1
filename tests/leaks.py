"""Counting what boxes could leave behind on the host, to compare before and after."""
from __future__ import annotations

import os
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"


def nsbox_cgroups() -> list[str]:
    found = []
    for top, dirs, _files in os.walk(CGROUP_ROOT):
        depth = top[len(CGROUP_ROOT):].count("/")
        for d in dirs:
            if "nsbox" in d:
                found.append(os.path.join(top, d))
        if depth >= 4:
            dirs[:] = []
        else:
            dirs[:] = [d for d in dirs if "nsbox" not in d]
    return sorted(found)


def mount_lines() -> int:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return sum(1 for _ in f)


def nsbox_mounts(run_dir: str | None = None) -> list[str]:
    """Mounts naming nsbox, less the switch namespaces other live runs hold."""
    foreign: set[str] = set()
    if run_dir is not None:
        from pytest_nsbox.network.leases import Leases, owner_alive

        foreign = {lease.netns for lease in Leases(run_dir).held()
                   if lease.owner_pid != os.getpid() and owner_alive(lease.owner_lock)}
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line for line in f
                if "nsbox" in line and not any(f"/{name} " in line for name in foreign)]


def net_namespaces() -> set[int]:
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.add(os.stat(f"/proc/{pid}/ns/net").st_ino)
            except OSError:
                pass
    return found


def named_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def descendants(root: int | None = None) -> set[int]:
    root = root or os.getpid()
    children: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@dataclass(frozen=True)
class Snapshot:
    cgroups: int
    mounts: int
    netns: int
    named_netns: int
    processes: int

    @classmethod
    def take(cls) -> Snapshot:
        return cls(cgroups=len(nsbox_cgroups()), mounts=mount_lines(),
                   netns=len(net_namespaces()), named_netns=len(named_netns()),
                   processes=len(descendants()))


def foreign_boxes(run_dir: str) -> set[str]:
    """Box ids owned by other live processes (another pytest run on this machine)."""
    import json

    found = set()
    boxes = os.path.join(run_dir, "boxes")
    for box_id in os.listdir(boxes) if os.path.isdir(boxes) else []:
        try:
            with open(os.path.join(boxes, box_id, "owner.json"), encoding="utf-8") as f:
                owner = json.load(f)["owner_pid"]
        except (OSError, ValueError, KeyError):
            continue
        if owner != os.getpid() and os.path.exists(f"/proc/{owner}"):
            found.add(box_id)
    return found
