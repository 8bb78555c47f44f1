"""Where pytest-nsbox keeps things on the host (deleting them: ``kernel.fs.remove_tree``).

Two roots: the *store* (persistent layers and images) and the *run* directory (boxes'
read-write and init layers). Both carry ``nsbox`` in their names so leftovers are easy to
find. ``NSBOX_STORE`` and ``NSBOX_RUN`` (and the ini options the plugin reads) move them;
the defaults depend on who runs:

- root: ``/var/lib/nsbox`` and ``/dev/shm/nsbox`` (on tmpfs when the host has one,
  else ``/run/nsbox``);
- a normal user (rootless boxes, ``kernel.userns.rootless()``), per user as the XDG base
  directory spec places them and as rootless podman and BuildKit do: the store in
  ``$XDG_DATA_HOME/nsbox`` (``~/.local/share/nsbox``), the run directory in
  ``$XDG_RUNTIME_DIR/nsbox``, else ``/dev/shm/nsbox-<uid>`` or ``/tmp/nsbox-<uid>``
  (``default_run_dir``), which must then be this user's own directory, writable by nobody
  else (``private_dir``).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .errors import HostNotSupported
from .kernel import mountinfo, userns

DEFAULT_STORE = "/var/lib/nsbox"


def _tmpfs(path: str) -> bool:
    try:
        return any(m.point == path and m.fstype == "tmpfs" for m in mountinfo.read())
    except OSError:
        return False


def default_run_dir() -> str:
    """Upper layers on tmpfs: mounting and deleting them costs a third of ext4's, and a
    ``host`` image box, whose bottom layer is the host's ``/``, needs its read-write layer
    off the root filesystem (overlayfs refuses an upper directory inside a lower one).
    Rootless: ``$XDG_RUNTIME_DIR/nsbox``, else ``/dev/shm/nsbox-<uid>`` where ``/dev/shm``
    is a tmpfs that holds ``user.*`` xattrs (overlayfs with ``userxattr`` keeps its
    markers there; tmpfs has them since Linux 6.6), else ``/tmp/nsbox-<uid>``."""
    if userns.rootless():
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if runtime and os.path.isabs(runtime) and _owned(runtime):
            return os.path.join(runtime, "nsbox")
        if _tmpfs("/dev/shm") and _user_xattrs("/dev/shm"):
            return f"/dev/shm/nsbox-{os.geteuid()}"
        return f"/tmp/nsbox-{os.geteuid()}"
    return "/dev/shm/nsbox" if _tmpfs("/dev/shm") else "/run/nsbox"


def _user_xattrs(directory: str) -> bool:
    """Whether the filesystem of ``directory`` keeps a ``user.*`` xattr (a scratch file
    there, removed again)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".nsbox-xattr-") as probe:
            os.setxattr(probe.name, "user.nsbox-probe", b"1")
            return os.getxattr(probe.name, "user.nsbox-probe") == b"1"
    except OSError:
        return False


def default_store() -> str:
    """The image store: ``DEFAULT_STORE`` for root, ``$XDG_DATA_HOME/nsbox`` (default
    ``~/.local/share/nsbox``) for a normal user."""
    if not userns.rootless():
        return DEFAULT_STORE
    data = os.environ.get("XDG_DATA_HOME", "")
    if not data or not os.path.isabs(data):  # the spec: a relative path is to be ignored
        data = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "nsbox")


def _owned(path: str) -> bool:
    """``path`` is a real directory of this user that nobody else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def private_dir(path: str) -> None:
    """Make sure ``path`` (a run directory in a shared place such as ``/tmp``) is this
    user's own: created with mode 0700 when missing; ``HostNotSupported`` naming the fix
    when it is a symlink, another user's, or writable by others (someone could put
    their files where our boxes' layers go)."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    if not _owned(path):
        raise HostNotSupported(
            f"the run directory {path} is not this user's own directory writable by it "
            f"alone (another user's, a symlink, or group/world-writable): remove it, or set "
            f"NSBOX_RUN (ini nsbox_run_dir) to a directory of yours")


@dataclass(frozen=True)
class StateDirs:
    store: str
    run: str

    @classmethod
    def default(cls, store: str | None = None, run: str | None = None) -> StateDirs:
        return cls(store=os.path.abspath(store or os.environ.get("NSBOX_STORE")
                                         or default_store()),
                   run=os.path.abspath(run or os.environ.get("NSBOX_RUN")
                                       or default_run_dir()))

    @property
    def locks(self) -> str:
        return os.path.join(self.store, "locks")

    @property
    def boxes(self) -> str:
        return os.path.join(self.run, "boxes")

    @property
    def kept(self) -> str:
        return os.path.join(self.run, "kept")

    def ensure_run(self) -> None:
        """Create the run directory if missing; in a directory others may write (``/tmp``)
        only as ``private_dir`` allows."""
        parent = os.path.dirname(self.run)
        try:
            shared = bool(os.stat(parent).st_mode & stat.S_IWOTH)
        except OSError:
            shared = False
        if shared:
            private_dir(self.run)
        else:
            os.makedirs(self.run, 0o755 if not userns.rootless() else 0o700, exist_ok=True)
