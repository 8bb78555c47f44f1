"""A store on a filesystem that cannot hold overlay layers, for real: ramfs (no xattrs at all)
mounted in a private mount namespace that dies with the run."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare(1) (util-linux) for a private "
                                       "mount namespace")


def test_a_store_on_ramfs_fails_with_the_filesystem_and_the_fix(pytester: pytest.Pytester) -> None:
    """overlayfs.rst "whiteouts and opaque directories": a layer's opaque directories need
    ``trusted.overlay.opaque``, which ramfs cannot hold. The test that wants a box fails with
    one line naming ramfs, its mount point, and ini nsbox_store_dir / NSBOX_STORE; no
    traceback from deep in the store."""
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="busybox")
        def test_box(nsbox):
            nsbox.run("true")
    """)
    mnt = pytester.path / "ramfs"
    mnt.mkdir()
    script = 'mount -t ramfs nsbox-test-ramfs "$0" && exec "$@"'
    result = pytester.run(
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(mnt),
        "env", f"NSBOX_STORE={mnt / 'store'}", sys.executable, "-m", "pytest",
        "-p", "no:cacheprovider", "-q", timeout=120)
    result.assert_outcomes(errors=1)  # the nsbox fixture fails at setup
    result.stdout.fnmatch_lines([
        f"*the image store {mnt / 'store'} is on a ramfs filesystem (mounted at {mnt}), which "
        f"cannot hold overlay image layers: it cannot hold the trusted.overlay.opaque extended "
        f"attribute overlayfs uses for opaque directories (setxattr: *). Move the store to a "
        f"local filesystem such as ext4, xfs, btrfs or tmpfs: set the ini option "
        f"nsbox_store_dir to a directory there, or the environment variable NSBOX_STORE",
    ])
    assert "Traceback" not in result.stdout.str()
    assert not any(mnt.iterdir())  # the mount went with its namespace
