"""images.storefs: a store on a filesystem that cannot hold overlay layers is named as such."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images import storefs
from pytest_nsbox.images.store import ImageStore
from pytest_nsbox.state import StateDirs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, trusted.* xattrs)")


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storefs, "_checked", set())


def fake_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str,
                   point: str) -> None:
    """A mountinfo whose line for tmp_path's device says ``fstype`` at ``point``."""
    dev = os.stat(tmp_path).st_dev
    line = (f"99 65 {os.major(dev)}:{os.minor(dev)} / {point} rw,relatime shared:1 - {fstype} "
            f"hostshare rw\n")
    other = "20 1 0:999 / / rw - ext4 /dev/vda rw\n"
    path = tmp_path / "mountinfo"
    path.write_text(other + line)
    monkeypatch.setattr(storefs, "MOUNTINFO", str(path))


def store_in(tmp_path: Path) -> ImageStore:
    return ImageStore(StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "run")))


@needs_root
def test_a_whiteout_failure_names_the_filesystem_and_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """overlayfs.rst "whiteouts and opaque directories": a layer needs 0:0 character
    devices. A 9p store (as WSL and VM shares are) where mknod fails gets one message
    naming 9p, where it is mounted, what failed, and ini nsbox_store_dir / NSBOX_STORE."""
    fake_mountinfo(tmp_path, monkeypatch, "9p", str(tmp_path))

    def no_mknod(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "mknod", no_mknod)
    with pytest.raises(ImageError) as info:
        store_in(tmp_path).new_tmp("import")
    text = str(info.value)
    assert text.startswith(f"the image store {tmp_path / 'store'} is on a 9p filesystem "
                           f"(mounted at {tmp_path}), which cannot hold overlay image layers: ")
    assert "0:0 character devices overlayfs uses as whiteouts (mknod: EPERM" in text
    assert "nsbox_store_dir" in text and "NSBOX_STORE" in text
    assert os.listdir(tmp_path / "store" / "tmp") == []  # the probe cleaned up


@needs_root
def test_an_xattr_failure_names_the_filesystem(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """overlayfs.rst: an opaque directory carries trusted.overlay.opaque; NFS and many
    FUSE filesystems refuse trusted.* xattrs (EOPNOTSUPP)."""
    fake_mountinfo(tmp_path, monkeypatch, "fuse.sshfs", "/mnt/remote")

    def no_xattr(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattr)
    with pytest.raises(ImageError, match=r"on a fuse\.sshfs filesystem \(mounted at "
                                         r"/mnt/remote\).*trusted\.overlay\.opaque extended "
                                         r"attribute .*\(setxattr: (ENOTSUP|EOPNOTSUPP)"):
        store_in(tmp_path).layer("k", lambda d: None)
    assert not (tmp_path / "store" / "layers" / "k").exists()


@needs_root
def test_a_fit_filesystem_is_probed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_in(tmp_path)
    first = store.new_tmp("a")
    calls: list[str] = []
    monkeypatch.setattr(storefs, "problem", lambda path: calls.append(path))
    second = store.new_tmp("b")
    assert calls == [] and os.path.isdir(first) and os.path.isdir(second)


def test_filesystem_of_picks_the_device_and_the_deepest_mount(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """proc(5) /proc/self/mountinfo: field 3 is the device (major:minor), field 5 the mount
    point (octal escapes), the type follows the '-' separator."""
    dev = os.stat(tmp_path).st_dev
    mm = f"{os.major(dev)}:{os.minor(dev)}"
    path = tmp_path / "mountinfo"
    path.write_text(f"1 0 {mm} / / rw - ext4 /dev/vda rw\n"
                    f"2 1 {mm} /x {tmp_path} rw shared:2 master:1 - nfs4 srv:/x rw\n"
                    f"3 1 {mm} /y /elsewhere\\040dir rw - xfs /dev/vdb rw\n")
    monkeypatch.setattr(storefs, "MOUNTINFO", str(path))
    assert storefs.filesystem_of(str(tmp_path)) == ("nfs4", str(tmp_path))
    monkeypatch.setattr(storefs, "MOUNTINFO", str(tmp_path / "missing"))
    assert storefs.filesystem_of(str(tmp_path)) == ("unknown", "?")
