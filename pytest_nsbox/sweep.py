"""Garbage collection: remove what boxes of dead owners left behind.

Like testcontainers' reaper, without a daemon. Every box records its owner in
``<run>/boxes/<id>/owner.json``, including ``owner_lock``: a file its owner holds an
exclusive ``flock`` on for its whole life. The kernel drops that lock when the owner dies,
so whoever can take it knows the owner is gone (with no lock file, the owner's pid and its
start time must still name a live process). ``collect`` removes, for dead owners only:

- the box's cgroup (``nsbox-<id>``), killing whatever still runs in it first;
- any mount below the box's directory, then the directory (read-write and init layers);
- box cgroups (``nsbox-<hex id>``) with no box directory and no live box init in them;
- what sessions changed to place box cgroups (controllers enabled, processes moved into
  ``nsbox-owner``) that no live session holds any more (``cgroups.placement``);
- ``<run>/owners/*.lock`` files nobody holds and no box refers to;
- half-written image layers (``<store|run>/tmp/<key>.<rand>``) older than ten minutes whose
  build lock is free (in the store, while no build holds the store lock either);
- ``<run>/<kind>-<pid>-<start time>-*`` folders (``process_dir_prefix``: an isolation
  session's socket) whose process is gone;
- mounts of source ``nsbox`` in this mount namespace (boxes mount only in their own);
- what the network module collects (switch namespaces, address leases), when it exists.

It is safe to run at any time, next to running pytest sessions and next to itself: a live
owner's boxes are never touched, and collectors take ``<run>/gc.lock`` in turn.
"""
from __future__ import annotations

import errno
import fcntl
import inspect
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from .errors import NsboxError
from .state import StateDirs
from .kernel.fs import remove_tree, try_flock
from .runtime.owner import as_owner
from .kernel import mountinfo
from .kernel.proc import is_namespace_init, own_start_time, start_time
from .records import BoxInfo, age_of as _age, scan_boxes
from . import records

#: A cgroup with no box directory and nothing alive in it is garbage once this old.
ORPHAN_CGROUP_AGE = 60.0
#: Half-written layers older than this whose build lock is free are garbage.
TMP_LAYER_AGE = 600.0
#: An owner lock file younger than this may be between its creation and its flock.
OWNER_LOCK_AGE = 10.0
#: How long ``collect`` waits for another collector by default.
LOCK_TIMEOUT = 60.0
#: Killing a cgroup's processes and removing it, per box.
DESTROY_TIMEOUT = 10.0
#: The overlay mounts of boxes carry this source.
MOUNT_SOURCE = "nsbox"

_CGROUP_PREFIX = records.CGROUP_PREFIX
#: A box cgroup: ``nsbox-`` and the box id (hex); other ``nsbox-*`` names are not boxes.
_BOX_CGROUP = re.compile(r"nsbox-[0-9a-f]{6,64}\Z")


class GcBusy(NsboxError):
    """Another collector held ``<run>/gc.lock`` for longer than we would wait."""


class GcIncomplete(NsboxError):
    """Some leftovers could not be removed; ``removed`` lists what was, ``problems`` why not."""

    def __init__(self, removed: list[str], problems: list[str]) -> None:
        self.removed = removed
        self.problems = problems
        super().__init__("; ".join(problems))


def _remove_layers(path: str) -> None:
    """``remove_tree(path)`` of a box directory; rootless, what a box's non-root users
    wrote (files of subordinate IDs) is deleted by the agent (``runtime.owner.as_owner``)."""
    as_owner(partial(remove_tree, path), f"removing {path}")


# -- owners ------------------------------------------------------------------------------------

@contextmanager
def _exclusive(path: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing), waiting up to ``timeout``.

    The same lock ``filelock.FileLock`` takes on Unix, without its import cost at the
    start of every session.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise GcBusy(f"another gc holds {path}")
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)
        yield
    finally:
        os.close(fd)


# -- processes and cgroups ---------------------------------------------------------------------

def _backend(cgroup_parent: str | None) -> Any:
    from .cgroups import detect

    return detect(parent=cgroup_parent)


def _cgroup_age(cgroup: Any, now: float) -> float:
    ages = []
    for path in cgroup.paths:
        try:
            ages.append(_age(os.stat(path), now))
        except OSError:
            continue
    return min(ages) if ages else 0.0


# -- mounts ------------------------------------------------------------------------------------

def _mounts() -> list[tuple[str, str]]:
    """(mount point, source) of every mount in this mount namespace."""
    try:
        return [(m.point, m.source) for m in mountinfo.read()]
    except OSError:
        return []


def _unmount(point: str) -> None:
    from .kernel import libc

    libc.umount2(point, libc.MNT_DETACH | libc.UMOUNT_NOFOLLOW)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


# -- the collector -----------------------------------------------------------------------------

class _Collector:
    def __init__(self, dirs: StateDirs, dry_run: bool, backend: Any) -> None:
        self.dirs = dirs
        self.dry_run = dry_run
        self.backend = backend
        self.removed: list[str] = []
        self.problems: list[str] = []
        self.held_locks: set[str] = set()
        self.seen_cgroups: set[str] = set()
        self.now = time.time()

    def did(self, what: str) -> None:
        self.removed.append(("would remove " if self.dry_run else "removed ") + what)

    def act(self, what: str, action: Any, *args: Any) -> bool:
        """Run ``action(*args)`` unless dry-running; record success or the problem."""
        if self.dry_run:
            self.did(what)
            return True
        try:
            action(*args)
        except (OSError, NsboxError) as exc:
            self.problems.append(f"cannot remove {what}: {exc}")
            return False
        self.did(what)
        return True

    # boxes
    def boxes(self) -> set[str]:
        """Collect dead boxes; returns the ids whose directories remain."""
        remaining: set[str] = set()
        for box in scan_boxes(self.dirs):
            # A record-less box with a live init is someone's, however old it looks.
            unsure = box.state == "abandoned" and self._has_live_init(box.cgroup)
            if box.garbage and not unsure and self.box(box):
                continue
            remaining.add(box.id)
            if box.owner_lock:
                self.held_locks.add(os.path.abspath(box.owner_lock))
        return remaining

    def _has_live_init(self, name: str) -> bool:
        if self.backend is None:
            return False
        try:
            cgroup = self.backend.open(name)
            return any(is_namespace_init(pid) for pid in cgroup.pids())
        except NsboxError:
            return False

    def box(self, box: BoxInfo) -> bool:
        why = (f"owner pid {box.owner_pid} is dead" if box.state == "dead"
               else "no owner.json: abandoned while being created")
        ok = self.cgroup(box.cgroup, f"of box {box.id}")
        for point, _source in sorted(_mounts(), key=lambda m: -len(m[0])):
            if _under(point, box.path):
                ok = self.act(f"mount {point} (unmounted)", _unmount, point) and ok
        if not ok and not self.dry_run:
            return False  # its directory stays, so the next gc finds the box again
        return self.act(f"box {box.id} ({box.name or '?'}, {why}): {box.path}",
                        _remove_layers, box.path)

    def cgroup(self, name: str, whose: str) -> bool:
        self.seen_cgroups.add(name)
        if self.backend is None:
            return True
        try:
            cgroup = self.backend.open(name)
        except NsboxError:
            return True  # already gone
        try:
            pids = cgroup.pids()
        except NsboxError as exc:
            self.problems.append(f"cannot read cgroup {name}: {exc}")
            return False
        what = f"cgroup {name} {whose}"
        if pids:
            what += f" (killing {len(pids)} process{'es' if len(pids) != 1 else ''}: " \
                    f"{' '.join(map(str, pids[:10]))}{' ...' if len(pids) > 10 else ''})"
        return self.act(what, cgroup.destroy, DESTROY_TIMEOUT)

    def orphan_cgroups(self, box_ids: set[str]) -> None:
        """``nsbox-*`` cgroups with no box directory: a crash between teardown steps, or a
        box of another run directory. Only those with no live box init in them go."""
        if self.backend is None:
            return
        try:
            names = self.backend.list(_CGROUP_PREFIX)
        except NsboxError as exc:
            self.problems.append(f"cannot list cgroups: {exc}")
            return
        for name in names:
            if name[len(_CGROUP_PREFIX):] in box_ids or name in self.seen_cgroups:
                continue
            if not _BOX_CGROUP.match(name):
                continue  # not a box's (e.g. a benchmark's ``nsbox-bench-...``): not ours

            try:
                cgroup = self.backend.open(name)
                pids = cgroup.pids()
            except NsboxError:
                continue
            if any(is_namespace_init(pid) for pid in pids):
                continue  # a running box (of another run directory, or being torn down)
            if not pids and _cgroup_age(cgroup, self.now) < ORPHAN_CGROUP_AGE:
                continue  # maybe a box being created right now, its init not yet inside
            self.cgroup(name, "(no box directory)")

    # cgroup placements
    def placements(self) -> None:
        """What sessions changed to place box cgroups (controllers enabled, their processes
        moved into ``nsbox-owner``) that no live session holds: undone (cgroups.placement)."""
        restore = getattr(self.backend, "restore_stale", None)
        if restore is None:
            return
        done, problems = restore(self.dry_run)
        self.removed.extend(done)
        self.problems.extend(problems)

    # folders of one process
    def process_dirs(self) -> None:
        """``<run>/<kind>-<pid>-<start time>-*`` folders whose process is gone (that pid
        is not alive with that start time): removed, never below a mount."""
        try:
            entries = sorted(os.scandir(self.dirs.run), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            match = _PROCESS_DIR.match(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            if start_time(int(match[2])) == int(match[3]):
                continue
            self.act(f"run folder {entry.path} (its process is gone)", remove_tree, entry.path)

    # owner locks
    def owner_locks(self, referenced: set[str]) -> None:
        owners = os.path.join(self.dirs.run, "owners")
        try:
            entries = sorted(os.scandir(owners), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for entry in entries:
            if not entry.name.endswith(".lock") or os.path.abspath(entry.path) in referenced:
                continue
            # Named <pid>-<rand>.lock: while that pid lives and the file is young, its
            # owner may be between creating the file and locking it.
            pid = entry.name.partition("-")[0]
            try:
                young = _age(entry.stat(follow_symlinks=False), self.now) < OWNER_LOCK_AGE
            except OSError:
                continue
            if young and (not pid.isdigit() or start_time(int(pid)) is not None):
                continue
            with try_flock(entry.path) as taken:
                if taken:
                    self.act(f"owner lock {entry.path} (its process is gone)",
                             os.unlink, entry.path)

    # half-written layers
    def tmp_layers(self) -> None:
        # Builds and imports hold the store lock shared while they run (``prune`` takes it
        # exclusively, as we do here): a store tmp dir is only garbage when no build runs.
        with try_flock(os.path.join(self.dirs.locks, "store.lock")) as store_free:
            if store_free is not False:
                self._tmp_layers(self.dirs.store)
        if self.dirs.run != self.dirs.store:
            self._tmp_layers(self.dirs.run)

    def _tmp_layers(self, base: str) -> None:
        """``<base>/tmp/<key>.<rand>``: old, and no build holds ``locks/layer-<key>.lock``."""
        tmp = os.path.join(base, "tmp")
        try:
            entries = sorted(os.scandir(tmp), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.problems.append(f"cannot list {tmp}: {exc.strerror}")
            return
        for entry in entries:
            try:
                if _age(entry.stat(follow_symlinks=False), self.now) < TMP_LAYER_AGE:
                    continue
            except OSError:
                continue
            key = entry.name.rpartition(".")[0] or entry.name
            with try_flock(os.path.join(self.dirs.locks, f"layer-{key}.lock")) as taken:
                if taken is not False:  # False: being built right now
                    self.act(f"half-written layer {entry.path}", remove_tree, entry.path)

    # kept boxes
    def kept(self) -> None:
        for box in scan_boxes(self.dirs, kept=True):
            if box.state == "kept":
                self.act(f"kept box {box.id} ({box.name or '?'}): {box.path}",
                         _remove_layers, box.path)

    # mounts
    def mounts(self) -> None:
        for point, source in sorted(_mounts(), key=lambda m: -len(m[0])):
            if source == MOUNT_SOURCE:
                self.act(f"mount {point} of source {MOUNT_SOURCE} (unmounted)", _unmount, point)

    # network
    def network(self) -> None:
        """The network module's leftovers (switch namespaces, leases), when it exists."""
        package = f"{__package__}.network"
        try:
            from . import network
        except ImportError as exc:
            # No network module: nothing of it to collect. One that exists but cannot load
            # (a missing dependency) is a problem to report.
            if exc.name is not None and exc.name not in (package, __package__):
                self.problems.append(f"network leftovers not checked: {exc}")
            return
        collect_garbage: Any = getattr(network, "collect_garbage", None)
        if collect_garbage is None:
            return
        try:
            accepts_dry_run = "dry_run" in inspect.signature(collect_garbage).parameters
        except (TypeError, ValueError):
            accepts_dry_run = False
        try:
            if accepts_dry_run:
                lines = collect_garbage(self.dirs, dry_run=self.dry_run)
            elif self.dry_run:
                self.removed.append("network leftovers: not listed in a dry run")
                return
            else:
                lines = [f"removed {line}" for line in collect_garbage(self.dirs) or []]
        except (OSError, NsboxError) as exc:
            self.problems.append(f"network leftovers: {exc}")
            return
        self.removed.extend(str(line) for line in lines or [])


#: ``process_dir_prefix``'s folders: kind, pid, start time, mkdtemp's random part.
_PROCESS_DIR = re.compile(r"^(isolate)-(\d+)-(\d+)-[a-z0-9_]+$")


def process_dir_prefix(kind: str) -> str:
    """The name prefix of a ``<run>`` folder that belongs to this process alone (for
    ``tempfile.mkdtemp(prefix=...)``): ``collect`` removes it once this process is gone,
    killed or crashed. ``kind`` is one ``_PROCESS_DIR`` knows (``isolate``)."""
    if _PROCESS_DIR.match(f"{kind}-1-1-x") is None:
        raise ValueError(f"kind={kind!r}: not a kind of process folder gc knows")
    return f"{kind}-{os.getpid()}-{own_start_time()}-"


def collect(dirs: StateDirs, *, dry_run: bool = False, cgroup_parent: str | None = None,
            cgroups: Any = None, lock_timeout: float = LOCK_TIMEOUT,
            kept: bool = False) -> list[str]:
    """Remove everything whose owner is dead; returns one line per thing removed.

    With ``dry_run`` nothing is removed and the lines say ``would remove``; with ``kept``
    the boxes kept for inspection (``--nsbox-keep``) go too. ``cgroups`` is
    the cgroup backend (default: ``detect(parent=cgroup_parent)``). Waits up to
    ``lock_timeout`` seconds for another collector (``GcBusy`` after that). Raises
    ``GcIncomplete`` (with ``removed`` and ``problems``) when something could not be removed.
    """
    from .errors import HostNotSupported

    backend = cgroups
    problems: list[str] = []
    if backend is None:
        try:
            backend = _backend(cgroup_parent)
        except HostNotSupported as exc:
            problems.append(f"cgroups not checked: {exc}")
    os.makedirs(dirs.run, 0o755, exist_ok=True)
    with _exclusive(os.path.join(dirs.run, "gc.lock"), lock_timeout):
        c = _Collector(dirs, dry_run, backend)
        c.problems.extend(problems)
        remaining = c.boxes()
        c.orphan_cgroups(remaining)
        c.placements()
        c.mounts()
        c.owner_locks(c.held_locks)
        c.process_dirs()
        c.tmp_layers()
        c.network()
        if kept:
            c.kept()
    if c.problems:
        raise GcIncomplete(c.removed, c.problems)
    return c.removed


def collect_at_session_start(dirs: StateDirs, cgroup_parent: str | None = None) -> None:
    """``collect`` for the start of a pytest session: quick, quiet, never raises.

    Skipped when another collector holds the lock (it is doing the same work); problems go
    to stderr as one line each.
    """
    try:
        collect(dirs, cgroup_parent=cgroup_parent, lock_timeout=0)
    except GcBusy:
        return
    except GcIncomplete as exc:
        for problem in exc.problems:
            print(f"nsbox gc: {problem}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a session must start whatever gc meets
        print(f"nsbox gc: skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
