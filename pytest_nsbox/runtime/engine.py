"""What this process shares across boxes: state dirs, image store, cgroup backend.

The engine makes its image store with the Containerfile builder it is given (``builder``;
by default ``images.build.default_builder()``, which ``pytest_nsbox/__init__.py`` installs):
the builder is above the runtime (its ``RUN`` steps run boxes), so it comes from above.

Also the one place that decides whether this host can run boxes at all; its answer is a
``HostNotSupported`` whose message is one fix-it line (the plugin turns it into a skip).
"""
from __future__ import annotations

import atexit
import fcntl
import os
import secrets
import sys
import threading
from dataclasses import dataclass, field

from ..errors import HostNotSupported
from ..images.build import ImageBuilder, default_builder
from ..images.store import ImageStore
from ..state import StateDirs


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
    """Raise HostNotSupported with a fix-it line when boxes cannot run here."""
    global _host_ok
    if _host_ok == os.getpid():
        return
    if not sys.platform.startswith("linux"):
        raise HostNotSupported(f"nsbox needs Linux (namespaces, cgroups, overlayfs); "
                               f"this is {sys.platform}")
    if os.geteuid() != 0:
        raise HostNotSupported("nsbox needs root (rootless boxes are not supported yet); "
                               "run pytest as root, e.g. in CI with sudo")
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
    backend under ``cgroup_parent``, the owner lock. ``rootdir`` is the pytest rootdir
    that boxes of images based on ``host`` see."""

    dirs: StateDirs
    cgroup_parent: str | None = None
    rootdir: str | None = None
    builder: ImageBuilder | None = field(default_factory=default_builder, repr=False)
    _store: ImageStore | None = field(default=None, repr=False)
    _cgroups: object | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _owner_fd: int = field(default=-1, repr=False)
    _owner_path: str = field(default="", repr=False)
    _owner_pid: int = field(default=0, repr=False)

    def owner_lock(self) -> str:
        """A file this process holds an exclusive flock on for as long as it lives.

        Each box records it: whoever can take the lock knows the box's owner is dead (its
        kernel-held lock died with it), which is what ``gc`` asks. Its owner removes it at
        a clean end: a pytest session at unconfigure, the command line when done, and any
        other process (``Box`` used from a script) at interpreter exit (``atexit``).
        """
        with self._lock:
            if self._owner_fd < 0 or self._owner_pid != os.getpid():
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
