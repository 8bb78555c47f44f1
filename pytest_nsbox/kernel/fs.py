"""Filesystem helpers: the one safe way to delete a tree (never across a mount), the one
walk down a directory path that never follows a symlink, and a non-blocking probe of a
lock file. Imports only the stdlib and ``libc``."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from . import libc


#: Opens a directory, never through a symlink (its last component included).
OPEN_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``(dirfd, i)``: what to do about ``parts[i]`` in directory ``dirfd`` (``walk_dirs``).
StepHandler = Callable[[int, int], int]


def walk_dirs(start: int, parts: Sequence[str], *, missing: StepHandler,
              blocked: StepHandler) -> int:
    """An fd of directory ``parts`` below directory fd ``start`` (which stays the
    caller's), opened one component at a time with ``O_NOFOLLOW``, so nothing on the way
    is a symlink (as ``openat2`` ``RESOLVE_NO_SYMLINKS`` would, on any kernel).

    ``missing(fd, i)`` is called where ``parts[i]`` is absent from ``fd``, ``blocked(fd,
    i)`` where it is a symlink or not a directory (ELOOP, ENOTDIR); each returns an fd of
    ``parts[i]`` (made, or replaced) or raises the caller's own error; ``blocked`` may
    return -1, and then so does ``walk_dirs``. The fd returned is the caller's to close;
    on an error nothing stays open."""
    fd = os.dup(start)
    try:
        for i, part in enumerate(parts):
            try:
                sub = os.open(part, OPEN_DIR_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                sub = missing(fd, i)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                sub = blocked(fd, i)
                if sub < 0:
                    os.close(fd)
                    return -1
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove_tree(path: str) -> None:
    """``rm -rf path`` that never leaves the filesystem ``path`` is on.

    A bind mount forgotten inside a box directory must never turn teardown into deleting
    host files, so every directory is entered by fd with ``openat2(RESOLVE_NO_XDEV)``, which
    refuses to cross any mount point (a bind of the same filesystem too, where ``st_dev``
    alone would not tell), and nothing below a mount point is touched.

    A process that is not root first gives its own directories the owner's ``rwx`` where
    they lack it (``rm -rf`` as a user stops at them): overlayfs leaves its ``work/work``
    with mode 000, and a box may make directories read-only. Others' files still raise
    ``PermissionError``.
    """
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(path)
        return
    fd = _open_dir(-100, path, os.O_NOFOLLOW)  # AT_FDCWD
    try:
        _clear(fd, top.st_dev)
    finally:
        os.close(fd)
    os.rmdir(path)


def _open_dir(dirfd: int, name: str, flags: int = 0, resolve: int | None = None) -> int:
    """``name`` in ``dirfd`` opened as a directory to list and empty; one of this user's
    own without ``rwx`` for its owner gets them first (see ``remove_tree``)."""
    def opened(extra: int) -> int:
        if resolve is None:
            return os.open(name, extra | os.O_DIRECTORY | os.O_CLOEXEC | flags,
                           dir_fd=None if dirfd == -100 else dirfd)
        return libc.openat2(dirfd, name, extra | os.O_DIRECTORY | flags, resolve=resolve)

    try:
        fd = opened(os.O_RDONLY)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        path_fd = opened(os.O_PATH)
        try:
            _own_rwx(path_fd, f"/proc/self/fd/{path_fd}")
        finally:
            os.close(path_fd)
        fd = opened(os.O_RDONLY)
    if os.geteuid() != 0:
        _own_rwx(fd, None)
    return fd


def _own_rwx(fd: int, via: str | None) -> None:
    """Add ``u+rwx`` to the directory open as ``fd`` when this user owns it and it lacks
    them (``via``: a path to chmod instead, for an ``O_PATH`` descriptor)."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o700 == 0o700:
        return
    mode = stat.S_IMODE(st.st_mode) | 0o700
    if via is None:
        os.fchmod(fd, mode)
    else:
        os.chmod(via, mode)


def _clear(dirfd: int, dev: int) -> None:
    for entry in os.scandir(dirfd):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = _open_dir(dirfd, entry.name, os.O_NOFOLLOW,
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
