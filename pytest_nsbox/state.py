"""Where pytest-nsbox keeps things on the host, and the one safe way to delete them.

Two roots: the *store* (persistent layers and images, default ``/var/lib/nsbox``) and the
*run* directory (boxes' read-write and init layers, on tmpfs when the host has one:
``/dev/shm/nsbox``). Both carry ``nsbox`` in their names so leftovers are easy to find.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .kernel import libc

DEFAULT_STORE = "/var/lib/nsbox"


def _tmpfs(path: str) -> bool:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[4] == path and fields[sep + 1] == "tmpfs":
                    return True
    except (OSError, ValueError):
        pass
    return False


def default_run_dir() -> str:
    """Upper layers on tmpfs: mounting and deleting them costs a third of ext4's."""
    return "/dev/shm/nsbox" if _tmpfs("/dev/shm") else "/run/nsbox"


@dataclass(frozen=True)
class StateDirs:
    store: str
    run: str

    @classmethod
    def default(cls, store: str | None = None, run: str | None = None) -> StateDirs:
        return cls(store=os.path.abspath(store or os.environ.get("NSBOX_STORE") or DEFAULT_STORE),
                   run=os.path.abspath(run or os.environ.get("NSBOX_RUN") or default_run_dir()))

    @property
    def locks(self) -> str:
        return os.path.join(self.store, "locks")

    @property
    def boxes(self) -> str:
        return os.path.join(self.run, "boxes")

    @property
    def kept(self) -> str:
        return os.path.join(self.run, "kept")


def remove_tree(path: str) -> None:
    """``rm -rf path`` that never leaves the filesystem ``path`` is on.

    A bind mount forgotten inside a box directory must never turn teardown into deleting
    host files, so every directory is entered by fd with ``openat2(RESOLVE_NO_XDEV)``, which
    refuses to cross any mount point (a bind of the same filesystem too, where ``st_dev``
    alone would not tell), and nothing below a mount point is touched.
    """
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _clear(fd, top.st_dev)
    finally:
        os.close(fd)
    os.rmdir(path)


def _clear(dirfd: int, dev: int) -> None:
    for entry in os.scandir(dirfd):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = libc.openat2(dirfd, entry.name,
                                   os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                   resolve=libc.RESOLVE_NO_XDEV | libc.RESOLVE_BENEATH)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                raise OSError(errno.EBUSY, "refusing to delete across a mount point",
                              entry.name) from None
            try:
                if os.fstat(sub).st_dev != dev:
                    raise OSError(errno.EBUSY, "refusing to delete across a mount point",
                                  entry.name)
                _clear(sub, dev)
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=dirfd)
        else:
            os.unlink(entry.name, dir_fd=dirfd)


def start_time(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot): with its pid, it names the
    process uniquely. ``None`` when there is no such process, or only its zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    try:
        if fields[0] in ("Z", "X"):  # a zombie's fds, and locks, are gone
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@contextmanager
def try_flock(path: str) -> Iterator[bool | None]:
    """Try an exclusive flock on an existing lock file without waiting; hold it for the block.

    Yields True (taken: nobody else holds it, e.g. an owner lock whose owner is dead),
    False (someone holds it), None (no such file). Never creates the file, never blocks.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, or not a plain file we may open: it tells us nothing
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)
