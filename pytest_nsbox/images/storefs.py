"""Can the image store's filesystem hold overlay layers? One probe per process, before the
first layer is written.

A layer directory is an overlayfs lower layer in overlay form (overlayfs.rst, "whiteouts and
opaque directories"): a deletion is a 0:0 character device, a directory that hides the
layers below carries the ``trusted.overlay.opaque`` xattr (``user.overlay.opaque`` in a
rootless owner's store; a normal user may make 0:0 devices too, since Linux 5.8). Some
filesystems hold neither: 9p (WSL, VM shares), many FUSE filesystems, NFS, CIFS, ramfs. A store there fails deep in a
build or an import with EPERM or EOPNOTSUPP; this probe says so first, naming the
filesystem (from ``/proc/self/mountinfo``, which also names FUSE's subtype, e.g.
``fuse.sshfs``) and how to move the store: ini ``nsbox_store_dir`` or ``NSBOX_STORE``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from ..errors import ImageError
from ..kernel import mountinfo, userns

#: The xattr overlayfs reads for an opaque directory: ``trusted.`` for root's mounts,
#: ``user.`` for a rootless owner's (``kernel.userns.overlay_xattr``).
OPAQUE_XATTR = userns.overlay_xattr("opaque")
MOUNTINFO = "/proc/self/mountinfo"

_checked: set[tuple[str, int]] = set()  # (directory, st_dev) found fit in this process


def filesystem_of(path: str) -> tuple[str, str]:
    """``(filesystem type, mount point)`` of the existing directory ``path``.

    The mount whose device is ``path``'s (``st_dev``), the longest mount point that holds
    ``path`` among several (bind mounts); ``("unknown", "?")`` when mountinfo says nothing.
    """
    dev = os.stat(path).st_dev
    want = f"{os.major(dev)}:{os.minor(dev)}"
    real = os.path.realpath(path)
    best: tuple[int, str, str] | None = None
    try:
        mounts = mountinfo.read(MOUNTINFO)
    except OSError:
        mounts = []
    for m in mounts:
        if m.device != want:
            continue
        inside = real == m.point or real.startswith(m.point.rstrip("/") + "/")
        rank = len(m.point) if inside else -1
        if best is None or rank > best[0]:
            best = (rank, m.fstype, m.point)
    return (best[1], best[2]) if best else ("unknown", "?")


def problem(path: str) -> str | None:
    """What the filesystem of directory ``path`` cannot do that a layer needs, or None.

    Makes (and removes) a private probe directory in ``path``: a 0:0 character device
    (a whiteout) must come back as one, and a directory must keep ``OPAQUE_XATTR``.
    """
    probe = os.path.join(path, f".nsbox-fs-probe.{secrets.token_hex(4)}")
    os.mkdir(probe, 0o700)
    try:
        whiteout = os.path.join(probe, "whiteout")
        try:
            os.mknod(whiteout, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            st = os.lstat(whiteout)
        except OSError as exc:
            return (f"it cannot make the 0:0 character devices overlayfs uses as whiteouts "
                    f"(mknod: {_reason(exc)})")
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != 0:
            return ("it does not keep a 0:0 character device as one (overlayfs uses them as "
                    "whiteouts)")
        opaque = os.path.join(probe, "opaque")
        os.mkdir(opaque, 0o700)
        try:
            os.setxattr(opaque, OPAQUE_XATTR, b"y")
            kept = os.getxattr(opaque, OPAQUE_XATTR)
        except OSError as exc:
            return (f"it cannot hold the {OPAQUE_XATTR} extended attribute overlayfs uses for "
                    f"opaque directories (setxattr: {_reason(exc)})")
        if kept != b"y":
            return f"it does not keep the {OPAQUE_XATTR} extended attribute"
        return None
    finally:
        for name, remove in (("whiteout", os.unlink), ("opaque", os.rmdir)):
            with contextlib.suppress(FileNotFoundError):
                remove(os.path.join(probe, name))
        os.rmdir(probe)


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}, {os.strerror(exc.errno)}" if exc.errno else str(exc)


def check(path: str, store: str) -> None:
    """Raise ``ImageError`` when the store ``store`` (its directory ``path``, existing)
    cannot hold overlay layers; once per directory and device in each process.

    The message names the filesystem, its mount point, what failed, and the two ways to
    move the store: ini ``nsbox_store_dir`` and the environment variable ``NSBOX_STORE``.
    """
    key = (os.path.realpath(path), os.stat(path).st_dev)
    if key in _checked:
        return
    what = problem(path)
    if what is not None:
        fstype, point = filesystem_of(path)
        raise ImageError(
            f"the image store {store} is on a {fstype} filesystem (mounted at {point}), which "
            f"cannot hold overlay image layers: {what}. Move the store to a local filesystem "
            f"such as ext4, xfs, btrfs or tmpfs: set the ini option nsbox_store_dir to a "
            f"directory there, or the environment variable NSBOX_STORE")
    _checked.add(key)
