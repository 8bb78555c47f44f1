"""Where the bench works, and the guarantee that it leaves nothing behind.

The bench process first moves into a private mount namespace of its own (every mount
private, so nothing it mounts ever reaches the host's mount table, and all of it goes
when the process exits). On a hybrid cgroup host a tmpfs then covers
``/sys/fs/cgroup/unified`` in that namespace only: crun 1.8 refuses a cgroup2 mount
holding nothing but hugetlb next to the v1 hierarchies, and with the tmpfs it sees a plain
v1 host. Children (the peers, nsbox's zygote, the pytest suites) inherit the namespace.

Everything the bench makes on the host is named ``nsbox-bench-<pid>``: two directories
(layers and images on disk under ``/var/tmp``; overlay uppers, OCI bundles and runtime
state on tmpfs under ``/dev/shm``, where nsbox keeps its own uppers), the peers' cgroups,
the overlays' mount source and the crun/runc container ids. ``Workspace.close`` undoes
what was registered, then sweeps by name; ``sweep_dead`` collects what a killed bench left.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_nsbox.kernel.fs import remove_tree
from pytest_nsbox.kernel import libc

PREFIX = "nsbox-bench"
CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = "/sys/fs/cgroup/unified"
_TAG = re.compile(rf"^{PREFIX}-(\d+)(?:-|$)")


# -- mounts -------------------------------------------------------------------------------

def _mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) of every mount of this process's namespace."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append((point, fields[sep + 1], fields[sep + 2]))
    return found


def is_hybrid_cgroups() -> bool:
    """v1 hierarchies plus a cgroup2 mount at ``/sys/fs/cgroup/unified``."""
    mounts = {point: fstype for point, fstype, _src in _mountinfo()}
    return mounts.get(UNIFIED) == "cgroup2" and mounts.get(CGROUP_ROOT) != "cgroup2"


def enter_private_mount_namespace() -> str:
    """Unshare this (still single-threaded) process's mounts; returns what was done."""
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    if is_hybrid_cgroups():
        # crun still makes its unified-hierarchy directory here and writes cgroup.procs
        # into it (plain files on the tmpfs, harmless); they go with the namespace.
        libc.mount(PREFIX, UNIFIED, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                   "size=16m,mode=755")
        global _covered
        _covered = True
        return ("private mount namespace; a tmpfs covers /sys/fs/cgroup/unified in it "
                "(crun 1.8 refuses this host's hybrid layout)")
    return "private mount namespace"


_covered = False  # a tmpfs of ours covers UNIFIED: what is under it is no cgroup


def mount_overlay(lower_bottom_first: list[str], upper: str, work: str, merged: str) -> None:
    lower = ":".join(reversed(lower_bottom_first))
    libc.mount(PREFIX, merged, "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")


def umount(path: str) -> None:
    try:
        libc.umount2(path, libc.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):
            raise


# -- cgroups for the peers that do not make their own ------------------------------------

@functools.cache
def cgroup_v2() -> bool:
    return any(p == CGROUP_ROOT and t == "cgroup2" for p, t, _s in _mountinfo())


@functools.cache
def _v1_mount(controller: str) -> str | None:
    """Where the v1 hierarchy holding ``controller`` is mounted (by its super options)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-", 6)
            if fields[sep + 1] == "cgroup" and controller in fields[sep + 3].split(","):
                return fields[4]
    return None


class PeerCgroup:
    """A cgroup with a memory limit (swap off) and a pids limit, made with plain syscalls."""

    def __init__(self, name: str, memory: int, pids: int) -> None:
        self.name = name
        if cgroup_v2():
            self.dirs = [os.path.join(CGROUP_ROOT, name)]
            os.mkdir(self.dirs[0])
            _write(self.dirs[0], "memory.max", str(memory))
            _write(self.dirs[0], "memory.swap.max", "0", optional=True)
            _write(self.dirs[0], "pids.max", str(pids))
        else:
            mem, pid = _v1_mount("memory"), _v1_mount("pids")
            if mem is None or pid is None:
                raise OSError(errno.ENOENT, "no v1 memory or pids hierarchy")
            self.dirs = [os.path.join(mem, name), os.path.join(pid, name)]
            for d in self.dirs:
                os.mkdir(d)
            _write(self.dirs[0], "memory.limit_in_bytes", str(memory))
            _write(self.dirs[0], "memory.memsw.limit_in_bytes", str(memory), optional=True)
            _write(self.dirs[1], "pids.max", str(pids))

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def destroy(self) -> None:
        for d in self.dirs:
            remove_cgroup(d)


def _write(directory: str, name: str, value: str, optional: bool = False) -> None:
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if optional:
            return
        raise
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def remove_cgroup(path: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup (children first), killing what is left in it; bounded retries."""
    deadline = time.monotonic() + timeout
    for top, dirs, _files in os.walk(path, topdown=False):
        for d in dirs:
            remove_cgroup(os.path.join(top, d), timeout)
    delay = 0.0005
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        for pid in _procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def bench_cgroups() -> list[str]:
    """Every cgroup directory named ``nsbox-bench-*`` (two levels deep at most)."""
    found = []
    try:
        tops = [os.path.join(CGROUP_ROOT, d) for d in os.listdir(CGROUP_ROOT)]
    except OSError:
        return []
    for top in [CGROUP_ROOT, *tops]:
        if _covered and top == UNIFIED:
            continue
        if not os.path.isdir(top) or os.path.basename(top).startswith(PREFIX):
            if os.path.basename(top).startswith(PREFIX):
                found.append(top)
            continue
        try:
            names = os.listdir(top)
        except OSError:
            continue
        found += [os.path.join(top, n) for n in names
                  if n.startswith(PREFIX) and os.path.isdir(os.path.join(top, n))]
    return sorted(set(found))


# -- the workspace ------------------------------------------------------------------------

@dataclass(frozen=True)
class RoundDirs:
    base: str

    @property
    def upper(self) -> str:
        return os.path.join(self.base, "upper")

    @property
    def work(self) -> str:
        return os.path.join(self.base, "work")

    @property
    def merged(self) -> str:
        return os.path.join(self.base, "merged")

    def make(self) -> RoundDirs:
        os.mkdir(self.base, 0o700)
        for d in (self.upper, self.work, self.merged):
            os.mkdir(d, 0o755)
        return self


def _fast_base() -> str:
    for point, fstype, _src in _mountinfo():
        if point == "/dev/shm" and fstype == "tmpfs":
            return "/dev/shm"
    return "/run"


class Workspace:
    """The bench's directories, layers and undo list."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}"
        self.fast = os.path.join(_fast_base(), self.tag)
        self.disk = os.path.join("/var/tmp", self.tag)
        self._undo: list[Callable[[], None]] = []
        self._serial = 0
        os.makedirs(self.fast, 0o700)
        os.makedirs(self.disk, 0o700)
        self.layers: list[str] = []

    def name(self, what: str) -> str:
        """A fresh host-side name: ``nsbox-bench-<pid>-<n>-<what>``."""
        self._serial += 1
        return f"{self.tag}-{self._serial}-{what}"

    def on_close(self, undo: Callable[[], None]) -> Callable[[], None]:
        self._undo.append(undo)
        return undo

    def forget(self, undo: Callable[[], None]) -> None:
        try:
            self._undo.remove(undo)
        except ValueError:
            pass

    def round_dirs(self, what: str) -> RoundDirs:
        return RoundDirs(os.path.join(self.fast, self.name(what))).make()

    def build_layers(self, busybox_layer: str) -> list[str]:
        """Layer 1: a copy of the store's busybox layer; layer 2: a small extra layer."""
        l1 = os.path.join(self.disk, "layers", "l1")
        l2 = os.path.join(self.disk, "layers", "l2")
        os.makedirs(os.path.dirname(l1))
        shutil.copytree(os.path.realpath(busybox_layer), l1, symlinks=True)
        for d in ("etc", "usr/share/nsbox-bench", "srv"):
            os.makedirs(os.path.join(l2, d), 0o755)
        with open(os.path.join(l2, "etc", "nsbox-bench"), "w", encoding="utf-8") as f:
            f.write("layer 2 of the bench image\n")
        for i in range(16):
            with open(os.path.join(l2, "usr/share/nsbox-bench", f"file{i}"), "wb") as f:
                f.write(os.urandom(4096))
        self.layers = [l1, l2]
        return self.layers

    def close(self) -> list[str]:
        """Undo everything; returns what could not be undone (empty when all is clean)."""
        problems: list[str] = []
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:  # noqa: BLE001 - keep undoing; report at the end
                problems.append(f"{type(exc).__name__}: {exc}")
        problems += sweep(self.tag)
        return problems


def sweep(tag: str) -> list[str]:
    """Remove every mount, cgroup and directory named ``tag`` (or ``tag-*``)."""
    problems: list[str] = []
    for point, _fstype, _source in reversed(_mountinfo()):
        if tag in point:
            try:
                umount(point)
            except OSError as exc:
                problems.append(f"umount {point}: {exc}")
    for path in bench_cgroups():
        name = os.path.basename(path)
        if name == tag or name.startswith(tag + "-"):
            try:
                remove_cgroup(path)
            except OSError as exc:
                problems.append(f"rmdir {path}: {exc}")
    for base in (os.path.join(_fast_base(), tag), os.path.join("/var/tmp", tag)):
        if os.path.lexists(base):
            try:
                remove_tree(base)
            except OSError as exc:
                problems.append(f"rm {base}: {exc}")
    return problems


def sweep_dead() -> list[str]:
    """What benches that died (killed, crashed) left: their cgroups and directories."""
    tags = set()
    candidates = [os.path.basename(p) for p in bench_cgroups()]
    for base in ("/dev/shm", "/run", "/var/tmp"):
        try:
            candidates += os.listdir(base)
        except OSError:
            pass
    for name in candidates:
        m = _TAG.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            tags.add(f"{PREFIX}-{m.group(1)}")
    problems = []
    for tag in sorted(tags):
        problems += sweep(tag)
    return problems


def leftovers(tag: str) -> list[str]:
    """What of ``tag`` is still on the host (for the test and the final check)."""
    found = [f"mount {p}" for p, _t, _s in _mountinfo() if tag in p]
    found += [f"cgroup {p}" for p in bench_cgroups()
              if os.path.basename(p) == tag or os.path.basename(p).startswith(tag + "-")]
    found += [f"dir {b}" for b in (os.path.join(_fast_base(), tag), os.path.join("/var/tmp", tag))
              if os.path.lexists(b)]
    return found
