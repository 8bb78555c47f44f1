"""Where box cgroups go on cgroup v2, what is changed to put them there, and undoing it.

A box cgroup is a leaf ``<base>/nsbox-<id>``. Its parent ``base`` must be a *domain*
cgroup whose ``cgroup.subtree_control`` enables the controllers the box's limits need,
and the kernel enables a controller there only if ``base`` holds no processes of its own
(Documentation/admin-guide/cgroup-v2.rst, "No Internal Process Constraint"; the real root
cgroup is exempt). ``base`` is, in order:

1. ``nsbox_cgroup_parent`` (relative to the mount's root), made if missing: a delegated
   subtree, or any cgroup the user picks;
2. the root of the mounted hierarchy, where this process may create cgroups: root on a
   host (in a systemd session or service too: the root cgroup is exempt from the rule),
   or a container whose cgroupfs is writable (its cgroup-namespace root, which is *not*
   exempt and usually holds the container's processes);
3. this process's own cgroup, where it is delegated to us (a systemd scope or service
   with ``Delegate=yes``, the usual rootless case): it holds our processes.

Where ``base`` is our own cgroup and holds processes, they are first moved into the leaf
``base/nsbox-owner`` (every pid of its ``cgroup.procs`` the kernel lets us move), then
the controllers are enabled: what moby's ``hack/dind`` entrypoint does with ``/init``,
BenchExec ``cgroupsv2.initialize`` with ``benchexec_process_*``, crun with
``crun-exec`` (src/libcrun/cgroup-setup.c ``enter_cgroup_v2``). A cgroup of the wrong
type is refused before anything is written, as runc's ``fs2.CreateCgroupPath`` refuses
``threaded`` / ``domain invalid`` ones for domain controllers.

Only the controllers the box's limits need are enabled, one write per level. What was
changed at a level (controllers added, processes moved, the level created) is recorded
in ``<records>/<key>.json`` before it is done, and undone when the last session holding
that level lets go: at interpreter exit, by ``release_all()``, or after a crash by
``python -m pytest_nsbox gc`` (``restore_stale``). "Holding" is a shared ``flock`` on
``<records>/<key>.lock`` for the session's life (the kernel drops it with a crashed
process); a restorer takes it exclusively, and never while anyone holds it. The records
live in this user's default run directory (``default_records``), not ``$NSBOX_RUN``, so
sessions with other run directories, xdist workers and pytester runs see each other; the
directory and its lock files are the user's alone (0700, 0600), so no other user can
block a session by holding a lock.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..errors import CgroupError
from ..state import default_run_dir
from .base import (
    FIX_READONLY,
    PARENT_SETTING,
    Mkdir,
    Rmdir,
    mkdir_error,
    read_optional,
    write_text,
)

#: The leaf our own processes are moved into before controllers are enabled above them.
OWNER_LEAF = "nsbox-owner"
#: Writes one value to a cgroupfs file (``base.write_text``; a fake tree passes its own).
Write = Callable[[str, str], None]
#: Whether this process may create cgroups in a directory and enable controllers there.
Writable = Callable[[str], bool]

#: Controllers the kernel lets a cgroup with processes enable (they become a thread
#: root): cgroup-v2.rst "Threads"; kernel/cgroup/cgroup.c ``cgrp_dfl_threaded_ss_mask``.
THREADED_CONTROLLERS = frozenset({"cpu", "cpuset", "perf_event", "pids"})
#: ``cgroup.type`` values under which a box (a process) cannot be placed.
NOT_DOMAIN = ("threaded", "domain threaded", "domain invalid")

#: How long to wait for the records lock or a level's lock (a restore takes milliseconds).
LOCK_TIMEOUT = 10.0
#: Rounds of moving processes out of a level (each round catches what forked meanwhile).
_MOVE_ROUNDS = 5
#: Retries of enabling controllers after an EBUSY (a process forked into the level, or the
#: kernel still finishing a migration: crun ``write_controller_file`` retries too).
_ENABLE_TRIES = 20

FIX_DELEGATE = (
    "run pytest as root, under a cgroup delegated to you (`systemd-run --user --scope -p "
    "Delegate=yes pytest ...`), or set " + PARENT_SETTING + " to one"
)


# -- where we are ------------------------------------------------------------------------------

def own_cgroup(mount_root: str = "/", proc_cgroup: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path relative to the mount whose root field (mountinfo's
    4th) is ``mount_root``: ``"/"`` for the mount's own root. None where the cgroup is
    outside that mount (a host cgroupfs seen from a cgroup namespace) or unknown.

    ``/proc/self/cgroup`` names it relative to our cgroup namespace's root, as mountinfo
    names the mount's root (cgroups(7), "/proc/[pid]/cgroup"; cgroup_namespaces(7)).
    """
    try:
        with open(proc_cgroup, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None or not path.startswith("/"):
        return None
    path = path.removesuffix(" (deleted)")
    if ".." in path.split("/") or ".." in mount_root.split("/"):
        return None  # outside our namespace's view (BenchExec: "out-of-tree cgroup")
    if mount_root in ("", "/"):
        return os.path.normpath(path)
    root = mount_root.rstrip("/")
    if path == root or path.startswith(root + "/"):
        return "/" + path[len(root):].strip("/")
    return None


def home_of(own: str | None) -> str | None:
    """Where our processes belong: our cgroup, or its parent if we are in ``nsbox-owner``
    (moved there by this or another session)."""
    if own is None:
        return None
    parts = [p for p in own.split("/") if p]
    if parts and parts[-1] == OWNER_LEAF:
        parts.pop()
    return "/".join(parts)


def may_create(path: str) -> bool:
    """Whether we may make child cgroups of ``path`` and enable controllers for them."""
    return (os.access(path, os.W_OK | os.X_OK)
            and os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK))


def choose_base(root: str, parent: str, own: str | None,
                writable: Writable = may_create) -> tuple[str, str]:
    """``(relative path of base, why)``: the explicit parent, else the mount's root where
    we may write it, else our own (delegated) cgroup; else the root, where creating a box
    cgroup fails naming the fix."""
    if parent:
        return parent, f"{PARENT_SETTING}={parent}"
    if writable(root):
        return "", "the root of the cgroup hierarchy (writable)"
    home = home_of(own)
    if home and writable(os.path.join(root, home)):
        return home, "this process's own cgroup (delegated to this user)"
    return "", "the root of the cgroup hierarchy (not writable here: " + FIX_DELEGATE + ")"


def pids_in(level: str) -> list[int]:
    """The processes of cgroup ``level`` (its ``cgroup.procs``; none if it is gone)."""
    text = read_optional(os.path.join(level, "cgroup.procs")) or ""
    return [int(p) for p in text.split() if p.isdigit()]


def words_of(path: str) -> list[str]:
    """The words of a cgroupfs file (``cgroup.controllers``...); none if it is absent."""
    return (read_optional(path) or "").split()


def cgroup_type(level: str) -> str | None:
    """``cgroup.type``; None on the real root cgroup, which has no such file."""
    text = read_optional(os.path.join(level, "cgroup.type"))
    return text.strip() if text is not None else None


def _threaded_children(level: str) -> bool:
    try:
        children = [e.path for e in os.scandir(level) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return False
    return any(cgroup_type(child) == "threaded" for child in children)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _who(pids: Iterable[int], limit: int = 5) -> str:
    listed = list(pids)
    text = ", ".join(f"{p} ({_comm(p)})" for p in listed[:limit])
    return text + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


# -- records -----------------------------------------------------------------------------------

@dataclass
class LevelRecord:
    """What nsbox changed at one cgroup, still to be undone."""

    path: str
    added: list[str] = field(default_factory=list)
    """Controllers we wrote ``+c`` for into its ``cgroup.subtree_control``."""
    owner: bool = False
    """We made ``<path>/nsbox-owner`` and moved processes into it."""
    created: bool = False
    """We made the directory itself (a level of ``nsbox_cgroup_parent``)."""

    def empty(self) -> bool:
        return not (self.added or self.owner or self.created)


def default_records() -> str:
    """Where changes are recorded: ``<state.default_run_dir()>/cgroups`` (this user's
    default run directory, whatever ``$NSBOX_RUN`` says: every session sharing a cgroup
    must find what another one changed there)."""
    return os.path.join(default_run_dir(), "cgroups")


def _key(level: str) -> str:
    return hashlib.sha256(os.fsencode(os.path.normpath(level))).hexdigest()[:16]


def record_file(records: str, level: str) -> str:
    """``<records>/<sha256 of the level's path, 16 hex digits>.json``."""
    return os.path.join(records, _key(level) + ".json")


def lock_file(records: str, level: str) -> str:
    """``<records>/<key>.lock``: shared by every session relying on ``level``, exclusive
    for one restoring it. Never removed (a removed lock file could be held by one process
    and re-created for another)."""
    return os.path.join(records, _key(level) + ".lock")


def open_lock(path: str) -> int:
    """An fd of lock file ``path`` (made, mode 0600, with its directory, 0700)."""
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def load_record(path: str) -> LevelRecord | None:
    """A record file's content; None if missing or unreadable (a half-written one is never
    seen: records are replaced by rename)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return LevelRecord(path=str(data["path"]), added=[str(c) for c in data["added"]],
                           owner=bool(data["owner"]), created=bool(data["created"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_record(records: str, rec: LevelRecord) -> None:
    """Write (or, once empty, remove) the record of ``rec.path``, atomically."""
    path = record_file(records, rec.path)
    if rec.empty():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(rec), f)
    os.replace(tmp, path)


def list_records(records: str) -> list[LevelRecord]:
    """Every record in ``records``, deepest level first (the order they are undone in)."""
    try:
        names = sorted(n for n in os.listdir(records) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    found = [r for r in (load_record(os.path.join(records, n)) for n in names) if r]
    return sorted(found, key=lambda r: -r.path.count("/"))


@contextmanager
def records_lock(records: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """The exclusive ``flock`` on ``<records>/lock`` every change of a record is made under."""
    try:
        fd = open_lock(os.path.join(records, "lock"))
    except OSError as exc:
        raise CgroupError(
            f"cgroup: cannot record cgroup changes in {records}: {exc.strerror}; it is in "
            "this user's default run directory: make that writable for them") from exc
    try:
        _flock(fd, fcntl.LOCK_EX, timeout, os.path.join(records, "lock"))
        yield
    finally:
        os.close(fd)


def _flock(fd: int, how: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            raise CgroupError(f"cgroup: {what} stayed locked for {timeout:g} s (another "
                              "pytest-nsbox session restoring it?); try again")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _try_exclusive(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


# -- undoing -----------------------------------------------------------------------------------

def restore(rec: LevelRecord, write: Write = write_text, rmdir: Rmdir = os.rmdir) -> list[str]:
    """Undo ``rec`` (its level held exclusively by the caller); returns what could not be
    undone, one line each, and leaves only that in ``rec``.

    Order: controllers off first (a cgroup with domain controllers enabled takes no
    processes back), then every process of ``nsbox-owner`` back to the level and the leaf
    removed, then the level itself if we made it.
    """
    problems: list[str] = []
    level = rec.path
    if not os.path.isdir(level):
        rec.added, rec.owner, rec.created = [], False, False
        return problems
    control = os.path.join(level, "cgroup.subtree_control")
    if rec.added:
        try:
            write(control, " ".join("-" + c for c in rec.added))
            rec.added = []
        except OSError as exc:
            why = ("a child cgroup still enables it for its own children"
                   if exc.errno == errno.EBUSY else os.strerror(exc.errno or 0))
            problems.append(f"cannot disable {', '.join(rec.added)} again in {control}: {why}")
    if rec.owner:
        leaf = os.path.join(level, OWNER_LEAF)
        left: list[int] = []
        for pid in pids_in(leaf):
            try:
                write(os.path.join(level, "cgroup.procs"), str(pid))
            except ProcessLookupError:
                continue
            except OSError:
                left.append(pid)
        failed = _remove(rmdir, leaf)
        rec.owner = failed is not None
        if failed is not None:
            still = pids_in(leaf) or left
            why = (f"processes {_who(still)} could not be moved back to {level}" if still
                   else os.strerror(failed.errno or 0))
            problems.append(f"cannot remove {leaf}: {why}")
    if rec.created and not rec.owner:
        failed = _remove(rmdir, level)
        # EBUSY: someone else's cgroups or processes are in it now; it stays, theirs.
        if failed is not None and failed.errno != errno.EBUSY:
            problems.append(f"cannot remove {level}: {os.strerror(failed.errno or 0)}")
        else:
            rec.created = False
    return problems


def _remove(rmdir: Rmdir, path: str) -> OSError | None:
    """``rmdir(path)``; None when it is gone (already, too), else the error."""
    try:
        rmdir(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    return None


def restore_stale(records: str, *, dry_run: bool = False, write: Write = write_text,
                  rmdir: Rmdir = os.rmdir) -> tuple[list[str], list[str]]:
    """Undo every recorded change whose level no live session holds (``gc``).

    Returns ``(done, problems)``: one line per level restored (``would restore`` in a dry
    run), one per change that could not be undone.
    """
    done: list[str] = []
    problems: list[str] = []
    if not os.path.isdir(records):
        return done, problems
    with records_lock(records):
        for rec in list_records(records):
            line, trouble = _restore_if_free(records, rec, dry_run, write, rmdir)
            done.extend(line)
            problems.extend(trouble)
    return done, problems


def _describe(rec: LevelRecord) -> str:
    what = []
    if rec.added:
        what.append("disabled " + " ".join(rec.added) + " in its cgroup.subtree_control")
    if rec.owner:
        what.append(f"moved the processes of {OWNER_LEAF} back")
    if rec.created:
        what.append("removed it")
    return f"cgroup {rec.path}: " + ", ".join(what)


def _restore_if_free(records: str, rec: LevelRecord, dry_run: bool, write: Write,
                     rmdir: Rmdir) -> tuple[list[str], list[str]]:
    if not os.path.isdir(rec.path):
        if not dry_run:
            save_record(records, LevelRecord(rec.path))  # the cgroup is gone: nothing to undo
        return [], []
    try:
        fd = open_lock(lock_file(records, rec.path))
    except OSError as exc:
        return [], [f"cannot open {lock_file(records, rec.path)}: {exc.strerror}"]
    try:
        if not _try_exclusive(fd):
            return [], []  # a live session holds it: its change is still in use
        if dry_run:
            return ["would restore " + _describe(rec)], []
        before = _describe(rec)
        problems = restore(rec, write, rmdir)
        save_record(records, rec)
        return ([] if problems else ["restored " + before]), problems
    finally:
        os.close(fd)


# -- a placement -------------------------------------------------------------------------------

class Placement:
    """Where one backend's box cgroups go, made ready for the controllers boxes need.

    ``root`` is the cgroup2 mount point; ``base`` a path relative to it (``choose_base``),
    ``explicit`` when it is ``nsbox_cgroup_parent``; ``own`` our cgroup relative to the
    mount (``own_cgroup``), which decides whether a level's processes are ours to move.
    ``write``/``mkdir``/``rmdir`` are the kernel's part (a fake tree passes its own),
    ``records`` the directory changes are recorded in.
    """

    def __init__(self, root: str, base: str, *, explicit: bool, own: str | None, records: str,
                 write: Write = write_text, mkdir: Mkdir = os.mkdir, rmdir: Rmdir = os.rmdir,
                 lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.root = root
        self.base_rel = base
        self.base = os.path.join(root, base) if base else root
        self.explicit = explicit
        self.own = own
        self.records = records
        self._write = write
        self._mkdir = mkdir
        self._rmdir = rmdir
        self._timeout = lock_timeout
        self._mutex = threading.Lock()
        self._held: dict[str, int] = {}  # level -> fd holding a shared flock on it
        self._ready: set[str] | None = None  # controllers every level enables, once prepared
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Placement(base={self.base!r}, held={sorted(self._held)!r})"

    def levels(self) -> list[str]:
        """The cgroups we may have to change, top down to ``base``: with an explicit parent
        every level from the mount's root (each enables the controllers for the next),
        else ``base`` alone (the root, or our delegated cgroup: nothing above it is ours)."""
        if not self.explicit:
            return [self.base]
        out = [self.root]
        for part in [p for p in self.base_rel.split("/") if p]:
            out.append(os.path.join(out[-1], part))
        return out

    def deepest_existing(self) -> str:
        """``base`` if it exists, else its nearest existing ancestor."""
        path = self.base
        while not os.path.isdir(path) and len(path) > len(self.root):
            path = os.path.dirname(path)
        return path

    def prepare(self, needed: Iterable[str]) -> str:
        """Make ``base`` ready for a box whose limits need the ``needed`` controllers;
        returns its path.

        Creates missing levels, moves our processes out of a level that must enable
        controllers, enables the missing ones (one write per level) and holds every level;
        each change is recorded before it is made. Raises ``CgroupError`` with one fix-it
        line where that is impossible. Cheap once a level set is ready.
        """
        want = set(needed)
        with self._mutex:
            if self._pid != os.getpid():  # a forked child: the locks are its parent's
                self._held, self._ready, self._pid = {}, None, os.getpid()
            if self._ready is not None and want <= self._ready:
                return self.base
            _register(self)  # first: what a failing step below changed is undone too
            for level in self.levels():
                if os.path.isdir(level):
                    self._hold(level)
                else:
                    with records_lock(self.records, self._timeout):
                        self._create(level)
                        self._hold(level)  # before any restorer could take it
                move = self._check_type(level)
                if move or self._missing(level, want):
                    with records_lock(self.records, self._timeout):
                        self._enable(level, want)
            self._ready = (self._ready or set()) | want
        return self.base

    def release(self) -> list[str]:
        """Let go of every level; undo the recorded changes of those nobody else holds.
        Returns the problems (one line each); never raises."""
        with self._mutex:
            self._ready = None
            if not self._held or self._pid != os.getpid():
                return []
            problems: list[str] = []
            try:
                with records_lock(self.records, self._timeout):
                    for level in sorted(self._held, key=lambda p: -p.count("/")):
                        problems.extend(self._let_go(level))
            except CgroupError as exc:
                problems.append(str(exc))
            finally:
                for fd in self._held.values():
                    os.close(fd)
                self._held.clear()
            return problems

    # -- steps -----------------------------------------------------------------------------

    def is_home(self, level: str) -> bool:
        """Whether our processes live in ``level`` (or in its ``nsbox-owner``): then they
        are ours to move."""
        home = home_of(self.own)
        if home is None:
            return False
        return os.path.normpath(level) == os.path.normpath(
            os.path.join(self.root, home) if home else self.root)

    @staticmethod
    def _missing(level: str, want: set[str]) -> list[str]:
        return sorted(want - set(words_of(os.path.join(level, "cgroup.subtree_control"))))

    def _record(self, level: str) -> LevelRecord:
        return load_record(record_file(self.records, level)) or LevelRecord(level)

    def _create(self, level: str) -> None:
        rec = self._record(level)
        was, rec.created = rec.created, True
        save_record(self.records, rec)
        try:
            self._mkdir(level)
        except OSError as exc:
            rec.created = was
            save_record(self.records, rec)
            if isinstance(exc, FileExistsError):
                return  # another process made it meanwhile: theirs
            raise mkdir_error(level, exc) from exc

    def _hold(self, level: str) -> None:
        """A shared flock on the level's lock file for as long as we rely on it. Where the
        records cannot be written nothing can be recorded for the level either (so nobody
        restores it): then it is relied on unheld, and changing it fails naming why."""
        if level in self._held:
            return
        try:
            fd = open_lock(lock_file(self.records, level))
        except OSError:
            return
        try:
            _flock(fd, fcntl.LOCK_SH, self._timeout, lock_file(self.records, level))
        except BaseException:
            os.close(fd)
            raise
        self._held[level] = fd

    def _check_type(self, level: str) -> bool:
        """Refuse a level no box can live under; True where our processes must move first:
        a ``domain threaded`` level that is one only because they are in it with threaded
        controllers enabled and no threaded child (kernel/cgroup/cgroup.c
        ``cgroup_is_thread_root``), as the old one-controller-at-a-time fallback left it."""
        kind = cgroup_type(level)
        if kind not in NOT_DOMAIN:
            return False
        if kind == "domain threaded" and self.is_home(level) and pids_in(level) \
                and not _threaded_children(level):
            return True
        extra = (f", or remove the threaded cgroups below it (see {level}/*/cgroup.type)"
                 if kind == "domain threaded" else "")
        raise CgroupError(
            f"cgroup v2: box cgroups cannot be made under {level}: its cgroup.type is "
            f"'{kind}', part of a threaded subtree, which holds threads, not processes "
            f"(cgroup-v2.rst, \"Threads\"); set {PARENT_SETTING} to a cgroup of type "
            f"'domain'{extra}")

    def _enable(self, level: str, want: set[str]) -> None:
        """Move our processes out of a non-root level that has some, then write ``+c`` for
        each controller of ``want`` it lacks, in one write. Runs under the records lock."""
        missing = self._missing(level, want)
        available = set(words_of(os.path.join(level, "cgroup.controllers")))
        absent = [c for c in missing if c not in available]
        if absent:
            raise CgroupError(
                f"cgroup v2: the {' and '.join(absent)} controller is not available in "
                f"{level} (cgroup.controllers: '{' '.join(sorted(available))}'), so boxes "
                f"under it cannot have that limit; enable it in the cgroup.subtree_control "
                f"of its parent ({FIX_DELEGATE})")
        rec = self._record(level)
        exempt = cgroup_type(level) is None  # the real root cgroup may hold processes
        if not exempt:
            self._clear(level, missing, rec)
            missing = self._missing(level, want)  # a repaired thread root enables less now
        if not missing:
            return
        control = os.path.join(level, "cgroup.subtree_control")
        rec.added = sorted(set(rec.added) | set(missing))
        save_record(self.records, rec)  # first: a crash right after the write is undone too
        try:
            self._write_controllers(level, control, missing, exempt, rec)
        except BaseException:
            enabled = set(words_of(control))
            rec.added = [c for c in rec.added if c not in missing or c in enabled]
            save_record(self.records, rec)
            raise

    def _clear(self, level: str, missing: list[str], rec: LevelRecord) -> None:
        """Empty a non-root level of processes before it enables anything, threaded
        controllers included: ``+cpu`` or ``+pids`` succeeds in a cgroup with processes but
        makes it a thread root, and then no box can join a child of it (EOPNOTSUPP)."""
        pids = pids_in(level)
        if not pids:
            return
        if not self.is_home(level):
            raise CgroupError(self._busy_message(level, missing, pids))
        if cgroup_type(level) == "domain threaded":
            self._unthread(level)
        self._evacuate(level, rec)
        left = pids_in(level)
        if left:
            raise CgroupError(self._busy_message(level, missing, left))

    def _write_controllers(self, level: str, control: str, missing: list[str], exempt: bool,
                           rec: LevelRecord) -> None:
        value = " ".join("+" + c for c in missing)
        for attempt in range(_ENABLE_TRIES):
            try:
                self._write(control, value)
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or exempt or attempt + 1 == _ENABLE_TRIES:
                    raise CgroupError(self._enable_message(level, missing, exc)) from None
            # EBUSY: a process forked into the level meanwhile, or a migration the kernel
            # is still finishing (crun's write_controller_file retries for the same reason).
            self._clear(level, missing, rec)
            time.sleep(0.001 * (attempt + 1))

    def _unthread(self, level: str) -> None:
        """Turn off the threaded controllers that make our own cgroup a thread root while
        our processes are in it (no child of a thread root can take a process: the issue's
        errno 95). Not undone at the end: that state is the old fallback's fault."""
        control = os.path.join(level, "cgroup.subtree_control")
        threaded = [c for c in words_of(control) if c in THREADED_CONTROLLERS]
        try:
            self._write(control, " ".join("-" + c for c in threaded))
        except OSError as exc:
            raise CgroupError(
                f"cgroup v2: {level} is a thread root (cgroup.type 'domain threaded': our "
                f"processes are in it with {' '.join(threaded)} enabled for its children) "
                f"and turning those off failed ({os.strerror(exc.errno or 0)}); turn them "
                f"off (`echo '{' '.join('-' + c for c in threaded)}' > {control}`), or set "
                f"{PARENT_SETTING} to a cgroup of type 'domain'") from None

    def _evacuate(self, level: str, rec: LevelRecord) -> None:
        """Move every process of ``level`` the kernel lets us move into its ``nsbox-owner``
        (one pid per write, as cgroup.procs takes them; what forks meanwhile is caught by
        the next round)."""
        leaf = os.path.join(level, OWNER_LEAF)
        if not rec.owner:
            rec.owner = True
            save_record(self.records, rec)
        try:
            self._mkdir(leaf)
        except FileExistsError:
            pass
        except OSError as exc:
            raise mkdir_error(leaf, exc) from exc
        procs = os.path.join(leaf, "cgroup.procs")
        for _ in range(_MOVE_ROUNDS):
            moved = False
            for pid in pids_in(level):
                try:
                    self._write(procs, str(pid))
                    moved = True
                except OSError:
                    continue  # gone (ESRCH), a kernel thread (EINVAL), or not ours (EACCES)
            if not moved:
                return

    def _busy_message(self, level: str, missing: list[str], pids: list[int]) -> str:
        enable = " ".join("+" + c for c in missing) or "controllers"
        if self.is_home(level):
            what = (f"it holds processes that could not be moved into {level}/{OWNER_LEAF}: "
                    f"{_who(pids)}")
        else:
            what = f"it holds processes of other programs: {_who(pids)}"
        return (f"cgroup v2: cannot enable {enable} for the box cgroups under {level}: {what}, "
                f"and the kernel enables controllers only in a cgroup without processes of "
                f"its own (cgroup-v2.rst, \"No Internal Process Constraint\"); move them into "
                f"a child cgroup (as docker-in-docker's entrypoint does: `mkdir {level}/init; "
                f"for p in $(cat {level}/cgroup.procs); do echo $p > {level}/init/cgroup.procs;"
                f" done`), or set {PARENT_SETTING} to a cgroup without processes")

    def _enable_message(self, level: str, missing: list[str], exc: OSError) -> str:
        enable = " ".join("+" + c for c in missing)
        code = exc.errno
        where = f"cgroup v2: cannot enable {enable} for the box cgroups under {level}"
        if code == errno.EOPNOTSUPP:
            return (f"{where}: it is part of a threaded subtree (cgroup.type "
                    f"'{cgroup_type(level)}'); set {PARENT_SETTING} to a cgroup of type "
                    f"'domain'")
        if code in (errno.EACCES, errno.EPERM):
            return (f"{where}: this user may not change its cgroup.subtree_control; "
                    f"{FIX_DELEGATE}")
        if code == errno.EROFS:
            return f"{where}: {FIX_READONLY}"
        if code == errno.EINVAL and "cpu" in missing:
            return (f"{where}: the kernel refuses the cpu controller while real-time "
                    f"(SCHED_FIFO/SCHED_RR) processes run outside the root cgroup; drop the "
                    f"cpus limit, or move those processes to the root cgroup")
        if code == errno.EBUSY:
            return self._busy_message(level, missing, pids_in(level))
        if code == errno.ENOENT:
            have = " ".join(words_of(os.path.join(level, "cgroup.controllers")))
            return (f"{where}: not in its cgroup.controllers ('{have}'); enable it in the "
                    f"cgroup.subtree_control of its parent ({FIX_DELEGATE})")
        return f"{where}: {os.strerror(code or 0)}"

    def _let_go(self, level: str) -> list[str]:
        fd = self._held.pop(level)
        try:
            if not _try_exclusive(fd):
                return []  # another session holds it: the last one restores
            rec = load_record(record_file(self.records, level))
            if rec is None:
                return []
            problems = restore(rec, self._write, self._rmdir)
            save_record(self.records, rec)
            return problems
        except OSError as exc:
            return [f"cannot restore {level}: {exc.strerror or exc}"]
        finally:
            os.close(fd)


# -- every placement of this process -----------------------------------------------------------

_live: list[Placement] = []
_live_lock = threading.Lock()
_registered_pid = 0


def _register(placement: Placement) -> None:
    global _registered_pid
    with _live_lock:
        if placement not in _live:
            _live.append(placement)
        if _registered_pid != os.getpid():
            atexit.register(_release_at_exit)
            _registered_pid = os.getpid()


def release_all() -> list[str]:
    """Release every placement this process holds (see ``Placement.release``); returns the
    problems. Sessions call it at their end; it also runs at interpreter exit."""
    with _live_lock:
        held = [p for p in _live if p._pid == os.getpid()]
        _live.clear()
    problems: list[str] = []
    for placement in held:
        problems.extend(placement.release())
    return problems


def _release_at_exit() -> None:
    if _registered_pid != os.getpid():
        return
    for problem in release_all():
        sys.stderr.write(f"nsbox: cgroups: {problem}; `python -m pytest_nsbox gc` retries\n")
