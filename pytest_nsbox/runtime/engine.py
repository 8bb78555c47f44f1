"""What this process shares across boxes: state dirs, image store, cgroup backend.

The engine makes its image store with the Containerfile builder it is given (``builder``;
by default ``images.build.default_builder()``, which ``pytest_nsbox/__init__.py`` installs):
the builder is above the runtime (its ``RUN`` steps run boxes), so it comes from above.

Also the one place that decides whether this host can run boxes at all; its answer is a
``HostNotSupported`` whose message is one fix-it line (the plugin turns it into a skip).
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import os
import secrets
import sys
import threading
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from ..cgroups import placement
from ..cgroups.base import Limits
from ..errors import CgroupError, HostNotSupported, LimitUnavailable, LimitsNotApplied
from ..images.build import ImageBuilder, default_builder
from ..images.store import ImageStore
from ..kernel import userns
from ..state import StateDirs
from .uncontained import Uncontained

#: cgroup v1 delegates nothing to a normal user by itself; root may hand over a subtree
#: (runc docs/cgroup-v2.md, "Rootless": on v2 systemd's delegation does it).
FIX_ROOTLESS_V1 = (
    "this host has cgroup v1, where a normal user gets no cgroup of its own: boot with "
    "cgroup v2 (kernel command line systemd.unified_cgroup_hierarchy=1) and run pytest "
    "under `systemd-run --user --scope -p Delegate=yes pytest ...`, or have root hand "
    "over a cgroup in each hierarchy nsbox uses (`for h in {hierarchies}; do mkdir "
    "$h/{parent} && chown -R {user} $h/{parent}; done`) and set ini nsbox_cgroup_parent = "
    "{parent}")
FIX_ROOTLESS_V2 = (
    "no cgroup is delegated to {user}: run pytest in one, `systemd-run --user --scope -p "
    "Delegate=yes pytest ...` (for the cpu controller too, a drop-in "
    "/etc/systemd/system/user@.service.d/delegate.conf holding `[Service]` and "
    "`Delegate=cpu cpuset io memory pids`, as runc's docs/cgroup-v2.md says), or set ini "
    "nsbox_cgroup_parent to a cgroup root made yours (chown -R)")


def _has_overlay() -> bool:
    try:
        with open("/proc/filesystems", encoding="utf-8") as f:
            if any(line.split()[-1] == "overlay" for line in f if line.strip()):
                return True
    except OSError:
        return False
    return os.path.isdir("/sys/module/overlay")


_host_ok = 0  # the pid that found this host fit; the answer does not change while it runs


def check_host() -> None:
    """Raise HostNotSupported with a fix-it line when boxes cannot run here.

    A normal user (``kernel.userns.rootless()``) runs boxes in a user namespace of its
    own; a sysctl that forbids one is reported here (``kernel.userns.host_block``), what
    only trying tells (Ubuntu's AppArmor restriction) when the first box starts.
    """
    global _host_ok
    if _host_ok == os.getpid():
        return
    if not sys.platform.startswith("linux"):
        raise HostNotSupported(f"nsbox needs Linux (namespaces, cgroups, overlayfs); "
                               f"this is {sys.platform}")
    if userns.rootless():
        block = userns.host_block()
        if block is not None:
            raise HostNotSupported(f"rootless boxes: {block}")
    if not _has_overlay():
        raise HostNotSupported("nsbox needs overlayfs, which this kernel lacks; "
                               "load it with `modprobe overlay`")
    if not os.path.exists("/proc/self/ns/pid"):
        raise HostNotSupported("nsbox needs PID namespaces (CONFIG_PID_NS), which this "
                               "kernel lacks")
    _host_ok = os.getpid()


@dataclass
class Engine:
    """Lazily built, per-process shared runtime objects: the image store over ``dirs``
    (built with ``builder``; None: a store that cannot build Containerfiles), the cgroup
    backend under ``cgroup_parent`` (rootless without one: the delegated cgroup it runs in,
    ``delegated_parent``), the owner lock. ``rootdir`` is the pytest rootdir that boxes of
    images based on ``host`` see; ``unavailable_limits`` what a box gets whose limits this
    host cannot apply (``box_cgroup``)."""

    dirs: StateDirs
    cgroup_parent: str | None = None
    rootdir: str | None = None
    builder: ImageBuilder | None = field(default_factory=default_builder, repr=False)
    unavailable_limits: str = LimitUnavailable.POLICIES[0]
    _store: ImageStore | None = field(default=None, repr=False)
    _cgroups: object | None = field(default=None, repr=False)
    _no_cgroup: str | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _owner_fd: int = field(default=-1, repr=False)
    _owner_path: str = field(default="", repr=False)
    _owner_pid: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.cgroup_parent is None and userns.rootless():
            # where gc looks too (plugin: collect_at_session_start(dirs, cgroup_parent))
            self.cgroup_parent = delegated_parent()

    def owner_lock(self) -> str:
        """A file this process holds an exclusive flock on for as long as it lives.

        Each box records it: whoever can take the lock knows the box's owner is dead (its
        kernel-held lock died with it), which is what ``gc`` asks. Its owner removes it at
        a clean end: a pytest session at unconfigure, the command line when done, and any
        other process (``Box`` used from a script) at interpreter exit (``atexit``).
        """
        with self._lock:
            if self._owner_fd < 0 or self._owner_pid != os.getpid():
                self.dirs.ensure_run()
                owners = os.path.join(self.dirs.run, "owners")
                os.makedirs(owners, 0o700, exist_ok=True)
                path = os.path.join(owners, f"{os.getpid()}-{secrets.token_hex(4)}.lock")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._owner_fd, self._owner_path, self._owner_pid = fd, path, os.getpid()
                atexit.register(self._release_at_exit)
            return self._owner_path

    def release_owner_lock(self) -> None:
        """At a clean exit: the lock file goes (its boxes are closed by then)."""
        with self._lock:
            if self._owner_fd >= 0 and self._owner_pid == os.getpid():
                try:
                    os.unlink(self._owner_path)
                except FileNotFoundError:
                    pass
                os.close(self._owner_fd)
                atexit.unregister(self._release_at_exit)
            self._owner_fd = -1

    def _release_at_exit(self) -> None:
        """At interpreter exit, for a process that never released its lock: first the
        zygote goes, with every box this process left open (so no box outlives the lock
        that marks it as owned), then the lock file."""
        if self._owner_fd < 0 or self._owner_pid != os.getpid():
            return
        from .client import shutdown

        try:
            shutdown()
        finally:
            self.release_owner_lock()

    @property
    def store(self) -> ImageStore:
        with self._lock:
            if self._store is None:
                self._store = ImageStore(self.dirs, builder=self.builder)
            return self._store

    @property
    def cgroups(self):  # type: ignore[no-untyped-def]
        from ..cgroups import detect

        with self._lock:
            if self._cgroups is None:
                self._cgroups = detect(parent=self.cgroup_parent)
            return self._cgroups

    def box_cgroup(self, name: str, limits: Limits) -> Any:
        """The cgroup of a new box ``name`` with ``limits``: a ``cgroups.Cgroup``, or an
        ``Uncontained`` stand-in where a rootless owner has no cgroup to make it in and
        the box asks for no limit.

        A limit this host cannot apply (a controller that is missing; rootless, no
        delegated cgroup) follows ``unavailable_limits``: ``fail`` and ``skip`` raise
        ``LimitUnavailable`` (the plugin fails or skips the test), ``warn`` warns
        (``LimitsNotApplied``) and starts the box without it. Other cgroup errors raise
        ``CgroupError`` as ever; a host without any cgroup filesystem ``HostNotSupported``
        (rootless: an ``Uncontained`` box, or a limit unavailable).
        """
        rootless = userns.rootless()
        try:
            backend = self.cgroups
        except HostNotSupported as exc:
            if not rootless:
                raise
            self._no_cgroup = str(exc)
            backend = None
        if backend is not None:
            for limit in limits.requested():
                if limit not in backend.available_limits():
                    limits = self._unavailable(limits, [limit], backend.missing_controller(limit))
        if backend is not None and self._no_cgroup is None:
            try:
                return backend.create(name, limits)
            except CgroupError as exc:
                cause = exc.__cause__
                if not (rootless and isinstance(cause, OSError)
                        and cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
                    raise
                where = f" {cause.filename}" if cause.filename else ""
                self._no_cgroup = (f"this user may not make a cgroup{where} "
                                   f"({cause.strerror}); {self._rootless_fix(backend)}")
        reason = self._no_cgroup or "no cgroup"
        if limits.requested():
            limits = self._unavailable(limits, limits.requested(), reason)
        return Uncontained(name, reason)

    def _unavailable(self, limits: Limits, names: list[str], reason: str) -> Limits:
        """``limits`` without ``names`` after a warning, or ``LimitUnavailable``."""
        keys = ", ".join(f"{n} ({getattr(limits, n)}{' bytes' if n == 'memory' else ''})"
                         for n in names)
        message = (f"cannot limit {keys} here: {reason} (ini nsbox_unavailable_limits = "
                   f"skip or warn runs such tests anyway; `{userns.DOCTOR}` shows what "
                   f"this host lacks)")
        if self.unavailable_limits != "warn":
            raise LimitUnavailable(message, policy=self.unavailable_limits)
        warnings.warn(LimitsNotApplied(f"nsbox: the box runs without them: {message}"),
                      stacklevel=4)
        return replace(limits, **{n: None for n in names})

    @staticmethod
    def _rootless_fix(backend: Any) -> str:
        """How a normal user gets a cgroup from ``backend``'s hierarchies."""
        user = userns.user_name(os.geteuid())
        if getattr(backend, "version", 2) == 1:
            hierarchies = " ".join(sorted(getattr(backend, "used", {}))) or "/sys/fs/cgroup/*"
            return FIX_ROOTLESS_V1.format(user=user, hierarchies=hierarchies,
                                          parent=f"nsbox-{user}")
        return FIX_ROOTLESS_V2.format(user=user)


def delegated_parent(proc_cgroup: str = "/proc/self/cgroup",
                     root: str = "/sys/fs/cgroup") -> str | None:
    """Where a rootless owner's box cgroups go without ``nsbox_cgroup_parent``: on cgroup
    v2, the cgroup this process runs in when it is the user's to write (a systemd scope or
    service with ``Delegate=yes`` hands the user its directory, as ``systemd-run --user
    --scope -p Delegate=yes`` makes one), relative to the hierarchy root; None otherwise
    (the backend's own place, which a normal user cannot write: ``box_cgroup`` then says
    how to get one). ``root``: the cgroup2 mount (a fake tree in tests).

    A process already moved into that cgroup's ``nsbox-owner`` leaf (by an outer session:
    a pytester run, an xdist worker) gets the same cgroup, not the leaf
    (``placement.home_of``): the leaf holds processes and can enable nothing."""
    own = placement.own_cgroup(proc_cgroup=proc_cgroup)
    home = placement.home_of(own)
    if not home or not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return None  # pure cgroup v2 only: a hybrid host's v2 mount holds no controllers
    path = os.path.join(root, home)
    if all(os.access(os.path.join(path, f), os.W_OK)
           for f in ("", "cgroup.procs", "cgroup.subtree_control")):
        return home
    return None


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    """The ``Engine`` that ``Box(...)`` uses when none is given (the plugin configures it)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine(dirs=StateDirs.default())
        return _default


def configure(engine: Engine) -> None:
    global _default
    with _default_lock:
        _default = engine
