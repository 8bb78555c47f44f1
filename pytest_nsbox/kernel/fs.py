"""Filesystem helpers: the one safe way to delete a tree (never across a mount), and a
non-blocking probe of a lock file. Imports only the stdlib and ``libc``."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from . import libc


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
