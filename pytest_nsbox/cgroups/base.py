"""The cgroup interface every backend implements, and the file I/O they share.

One resources model (``Limits``) and one statistics model (``Stats``) are mapped onto
cgroup v1 files (``v1.py``) or cgroup v2 files (``v2.py``), as crun's
``cgroup-resources.c`` does. Everything here is plain ``os`` calls on cgroupfs files: no
subprocesses, no pytest, bounded waits, and every error names the path and the errno.
"""
from __future__ import annotations

import abc
import builtins
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import CgroupError
from ..kernel.io import read_all

#: Every box cgroup directory is called ``PREFIX + box id`` so leftovers can be found.
PREFIX = "nsbox-"

#: The name of the setting that moves box cgroups under another cgroup; used in fix-it text.
PARENT_SETTING = "nsbox_cgroup_parent"

#: Creates (or removes) one cgroup directory. The kernel fills a new cgroup with its
#: interface files and removes them with it; a fake tree (plain files, for tests) passes
#: functions that do the same. Everything else is the same code on fakes and cgroupfs.
Mkdir = Callable[[str], None]
Rmdir = Callable[[str], None]

FIX_PERMISSION = (
    "run pytest as root, or set " + PARENT_SETTING + " to a cgroup delegated to you "
    "(e.g. from `systemd-run --user --scope -p Delegate=yes pytest ...`)"
)
FIX_READONLY = (
    "cgroupfs is mounted read-only (typical inside a container): run the container with "
    "--privileged (GitHub Actions `container:` `options: --privileged`, GitLab runner "
    "`privileged = true`), or with --cgroupns=private and a writable /sys/fs/cgroup"
)
FIX_EXISTS = "a cgroup of that name is left over from a crashed run: run `python -m pytest_nsbox gc`"
FIX_BUSY = "processes are still in it; find them with `cat {path}/cgroup.procs` and kill them"
FIX_LIMIT_SPACE = "cgroup.max.descendants or cgroup.max.depth of an ancestor is reached"

_SLEEP_MIN = 0.001
_SLEEP_MAX = 0.05


@dataclass(frozen=True)
class Limits:
    """Resource limits of one box; ``None`` means unlimited."""

    memory: int | None = None
    """Bytes of memory (swap is turned off for the box)."""
    cpus: float | None = None
    """CPU time in cores: 0.5 is half of one core."""
    pids: int | None = None
    """Maximum number of processes and threads."""

    def requested(self) -> list[str]:
        """Names of the limits that are set, as ``available_limits()`` spells them."""
        return [n for n, v in (("memory", self.memory), ("cpus", self.cpus),
                               ("pids", self.pids)) if v is not None]

    def check(self) -> None:
        """Refuse values no kernel accepts (the spec layer reports user errors earlier)."""
        if self.memory is not None and self.memory <= 0:
            raise CgroupError(f"memory limit must be a positive number of bytes, not {self.memory!r}")
        if self.cpus is not None and not self.cpus > 0:
            raise CgroupError(f"cpus limit must be a positive number of cores, not {self.cpus!r}")
        if self.pids is not None and self.pids < 1:
            raise CgroupError(f"pids limit must be at least 1, not {self.pids!r}")


@dataclass
class Stats:
    """What a box used; the result of ``Box.stats()``. ``None`` means not measured here.

    Read from the box's cgroup (kernel cgroup docs: cgroup-v2 ``memory.current``,
    ``memory.peak``, ``cpu.stat``, ``pids.current``, ``memory.events``; v1
    ``memory.usage_in_bytes``, ``memory.max_usage_in_bytes``, ``cpuacct.usage``,
    ``pids.current``, ``memory.oom_control``).
    """

    memory_current: int | None
    """Memory charged to the box now, in bytes (page cache included)."""
    memory_peak: int | None
    """The most memory charged to the box at once since it started, in bytes; ``None``
    on a v2 kernel without ``memory.peak`` (before 5.19)."""
    memory_limit: int | None
    """The box's own memory limit in bytes; ``None`` is unlimited."""
    cpu_seconds: float
    """CPU time used by all its processes, user plus system, in seconds."""
    pids_current: int | None
    """Processes (tasks) in the box now."""
    oom_kills: int
    """Processes of the box the kernel killed for memory (its OOM killer) so far."""


# -- file I/O ---------------------------------------------------------------------------------

def os_error(action: str, path: str, exc: OSError, fix: str | None = None) -> CgroupError:
    """A CgroupError naming what failed, on which path, with which errno, and the fix."""
    code = exc.errno or 0
    name = errno.errorcode.get(code, str(code))
    msg = f"cgroup: {action} {path}: {os.strerror(code)} ({name})"
    if fix:
        msg += f"; {fix}"
    err = CgroupError(msg)
    err.__cause__ = exc
    return err


def read_bytes(path: str) -> bytes:
    """Read a whole cgroupfs file (they are small, but may need more than one read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_all(fd)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """Read a cgroupfs file as text; raises ``OSError`` so callers can decide about ENOENT."""
    return read_bytes(path).decode("utf-8", "replace")


def read_optional(path: str) -> str | None:
    """Read a file that only some kernels or enabled controllers provide; ``None`` if absent."""
    try:
        return read_text(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error("read", path, exc) from exc


def write_text(path: str, value: str) -> None:
    """Write one value with one ``write()``: the kernel parses each write as a whole.

    No ``O_CREAT``: a missing interface file means the controller is absent, and creating a
    regular file in its place would hide that. ``O_TRUNC`` is accepted by cgroupfs and makes
    a fake tree (plain files) hold only the last value written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def parse_keyed(text: str) -> dict[str, int]:
    """Parse flat-keyed files (``memory.events``, ``cpu.stat``, ``memory.oom_control``)."""
    result: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return result


def parse_int(text: str | None) -> int | None:
    """A single number, ``None`` for an absent file or ``max``."""
    if text is None:
        return None
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        raise CgroupError(f"cgroup: expected a number, read {text[:40]!r}") from None


def subdirs_bottom_up(path: str) -> Iterator[str]:
    """Child cgroups of ``path`` (deepest first), then ``path``: the order rmdir needs."""
    try:
        entries = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_error("list", path, exc) from exc
    for child in entries:
        yield from subdirs_bottom_up(child)
    yield path


def subtree_sum(top: str, name: str, key: str) -> int:
    """The sum of ``key`` in the flat-keyed file ``name`` of ``top`` and of every cgroup
    below it; 0 for a cgroup that is gone or a file that is absent.

    One ``stat`` decides whether there is anything below: kernfs (cgroupfs) gives a
    directory a link count of 2 plus its subdirectories, so 2 means none. Any other count
    (a child cgroup, or a filesystem that counts links differently) walks the subtree.
    """
    try:
        alone = os.stat(top).st_nlink == 2
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise os_error("stat", top, exc) from exc
    total = 0
    for path in [top] if alone else subdirs_bottom_up(top):
        text = read_optional(os.path.join(path, name))
        if text:
            total += parse_keyed(text).get(key, 0)
    return total


def check_name(name: str) -> None:
    """A box cgroup name is one path component; anything else could escape the parent."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise CgroupError(f"cgroup name {name!r} must be a single directory name")


def check_parent(parent: str | None) -> str:
    """Normalise a parent given relative to the hierarchy root ('' is the root itself)."""
    if not parent:
        return ""
    parts = [p for p in parent.strip("/").split("/") if p and p != "."]
    if ".." in parts or "\0" in parent:
        raise CgroupError(f"{PARENT_SETTING}={parent!r}: must be a path below the cgroup root, "
                          "without '..'; use e.g. 'nsbox' or 'mygroup/sub'")
    return "/".join(parts)


def _backoff(delay: float, deadline: float) -> float:
    """Sleep a little (growing), never past the deadline; returns the next delay."""
    time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
    return min(delay * 2, _SLEEP_MAX)


# -- the interface ----------------------------------------------------------------------------

class Cgroup(abc.ABC):
    """One box's cgroup: one directory on v2, one directory per hierarchy on v1."""

    def __init__(self, name: str, paths: Iterable[str], *, rmdir: Rmdir = os.rmdir) -> None:
        self.name = name
        self.paths: list[str] = list(dict.fromkeys(paths))
        self._rmdir = rmdir

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, paths={self.paths!r})"

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes ``0`` into to join this cgroup.

        Plain data, so the box's init can join after fork without importing anything.
        """
        return [os.path.join(p, "cgroup.procs") for p in self.paths]

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (with its threads) into this cgroup."""
        for procs in self.procs_files():
            try:
                write_text(procs, str(pid))
            except OSError as exc:
                fix = "the process has exited" if exc.errno == errno.ESRCH else None
                raise os_error(f"move pid {pid} into", procs, exc, fix) from exc

    def pids(self) -> list[int]:
        """Every process in this cgroup and its children, in every hierarchy."""
        found: set[int] = set()
        for top in self.paths:
            for path in subdirs_bottom_up(top):
                text = read_optional(os.path.join(path, "cgroup.procs"))
                if text:
                    found.update(int(x) for x in text.split())
        return sorted(found)

    @abc.abstractmethod
    def set_limits(self, limits: Limits) -> None:
        """Apply ``limits``; a ``None`` field is written as unlimited where it can be."""

    @abc.abstractmethod
    def stats(self) -> Stats:
        """Current usage, read from the kernel."""

    @abc.abstractmethod
    def oom_kills(self) -> int:
        """How many processes of this cgroup and its children the kernel killed for memory.

        Cheap (one stat and one read without child cgroups): read before and after every
        command. Counts kills of child cgroups' processes too, on either version.
        """

    @abc.abstractmethod
    def _stop_all(self, deadline: float) -> None:
        """The backend's fast way to kill everything (cgroup.kill, freezer); may leave some."""

    def kill_all(self, timeout: float = 5.0) -> None:
        """Kill every process in the cgroup and wait until it is empty.

        The backend's fast way first, then SIGKILL whatever ``cgroup.procs`` still lists
        until it is empty; raises ``CgroupError`` if processes remain after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        pids = self.pids()
        if not pids:
            return
        if os.getpid() in pids:  # freezing or killing would take this process with it
            raise CgroupError(f"cgroup: refusing to kill {self.paths[0]}: this process is in it")
        self._stop_all(deadline)
        self._kill_listed(deadline)

    def _kill_listed(self, deadline: float) -> None:
        """SIGKILL every listed pid until none is listed (processes may fork meanwhile)."""
        delay = _SLEEP_MIN
        while True:
            remaining = self.pids()
            if not remaining:
                return
            if time.monotonic() >= deadline:
                raise CgroupError(f"cgroup: processes {remaining} still in {self.paths[0]} "
                                  "after SIGKILL (stuck in uninterruptible sleep?)")
            self._signal(remaining, signal.SIGKILL)
            delay = _backoff(delay, deadline)

    @staticmethod
    def _signal(pids: Iterable[int], sig: int) -> None:
        """Signal each pid; one that is already gone is fine."""
        me = os.getpid()
        for pid in pids:
            if pid == me:
                raise CgroupError(f"cgroup: refusing to kill pid {pid}: it is this process")
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def destroy(self, timeout: float = 5.0) -> None:
        """Remove every directory of this cgroup (children first), killing what holds it.

        EBUSY with an empty ``cgroup.procs`` is normal right after a kill (tasks are still
        exiting), so it is retried with short sleeps; EBUSY with processes listed means they
        live on, so they are killed first. Bounded by ``timeout``; directories already gone
        are fine, so this is idempotent.
        """
        deadline = time.monotonic() + timeout
        delay = _SLEEP_MIN
        while True:
            busy = self._rmdir_all()
            if busy is None:
                return
            if time.monotonic() >= deadline:
                path, exc = busy
                raise os_error("remove", path, exc, FIX_BUSY.format(path=path)) from exc
            if self.pids():
                try:
                    self.kill_all(max(0.0, deadline - time.monotonic()))
                except CgroupError:
                    pass  # the EBUSY at the deadline names the path
            delay = _backoff(delay, deadline)

    def _rmdir_all(self) -> tuple[str, OSError] | None:
        busy: tuple[str, OSError] | None = None
        for top in self.paths:
            for path in subdirs_bottom_up(top):
                try:
                    self._rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        fix = FIX_PERMISSION if exc.errno in (errno.EACCES, errno.EPERM) else None
                        raise os_error("remove", path, exc, fix) from exc
                    busy = busy or (path, exc)
        return busy

    def exists(self) -> bool:
        """Whether any of its directories is still there."""
        return any(os.path.isdir(p) for p in self.paths)


class Backend(abc.ABC):
    """Creates and finds box cgroups on one cgroup version."""

    version: int

    @abc.abstractmethod
    def create(self, name: str, limits: Limits) -> Cgroup:
        """Make cgroup ``name`` under the parent with ``limits``; nothing is left on failure."""

    @abc.abstractmethod
    def open(self, name: str) -> Cgroup:
        """An existing cgroup ``name`` (for gc); CgroupError if it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = PREFIX) -> list[str]:
        """Names of the existing cgroups under the parent that start with ``prefix``."""

    @abc.abstractmethod
    def available_limits(self) -> frozenset[str]:
        """Which of ``memory``, ``cpus``, ``pids`` this host can enforce."""

    def check_limits(self, limits: Limits) -> None:
        """Raise a CgroupError with a fix-it line if a requested limit cannot be enforced."""
        limits.check()
        available = self.available_limits()
        for name in limits.requested():
            if name not in available:
                raise CgroupError(self.missing_controller(name))

    @abc.abstractmethod
    def missing_controller(self, limit: str) -> str:
        """The message for a limit this host cannot enforce: which controller, how to fix."""

    def close(self) -> builtins.list[str]:
        """Undo what this backend changed on the host to place box cgroups (v2: see
        ``placement.py``); returns the problems, one line each. v1 changes nothing."""
        return []

    def restore_stale(self, dry_run: bool = False) -> tuple[builtins.list[str],
                                                            builtins.list[str]]:
        """For ``gc``: undo what crashed sessions changed to place box cgroups and no live
        one holds any more; ``(lines done, problems)``. v1 changes nothing."""
        return [], []


_MKDIR_FIXES = {errno.EACCES: FIX_PERMISSION, errno.EPERM: FIX_PERMISSION,
                errno.EROFS: FIX_READONLY, errno.EEXIST: FIX_EXISTS,
                errno.ENOSPC: FIX_LIMIT_SPACE, errno.EAGAIN: FIX_LIMIT_SPACE}


def mkdir_error(path: str, exc: OSError) -> CgroupError:
    """A failed cgroup mkdir as a CgroupError with the fix for its errno."""
    return os_error("create", path, exc, _MKDIR_FIXES.get(exc.errno or 0))


def mkdir_or_error(mkdir: Mkdir, path: str) -> None:
    """mkdir with the errno turned into a fix-it CgroupError."""
    try:
        mkdir(path)
    except OSError as exc:
        raise mkdir_error(path, exc) from exc


def makedirs(mkdir: Mkdir, root: str, rel: str,
             on_created: Callable[[str], None] | None = None) -> str:
    """Create ``root/rel`` one level at a time (each level is a cgroup, so each gets set up:
    ``on_created`` runs for each level this call created). Another process creating the
    same level at the same time is fine."""
    path = root
    for part in [p for p in rel.split("/") if p]:
        path = os.path.join(path, part)
        if os.path.isdir(path):
            continue
        try:
            mkdir(path)
        except FileExistsError:
            continue
        except OSError as exc:
            raise mkdir_error(path, exc) from exc
        if on_created:
            on_created(path)
    return path
