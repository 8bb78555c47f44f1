"""Suite-wide checks: nothing a box creates may outlive the suite."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Timing is ci/bench's business: a loaded machine must not fail a property test.
settings.register_profile("nsbox", deadline=None)
settings.load_profile("nsbox")

sys.path.insert(0, os.path.dirname(__file__))

from leaks import Snapshot, foreign_boxes, nsbox_cgroups, nsbox_mounts  # noqa: E402

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session", autouse=True)
def no_leaks_around_the_suite() -> Iterator[None]:
    from pytest_nsbox.state import StateDirs

    run = StateDirs.default().run
    before = Snapshot.take()
    cgroups_before = set(nsbox_cgroups())
    others = foreign_boxes(run)
    yield
    from pytest_nsbox.runtime import client

    client.shutdown()  # the zygote is ours; it may go now
    from pytest_nsbox.cgroups import release_all

    # What placing box cgroups changed (cgroup v2: controllers enabled, our processes in
    # nsbox-owner) is undone at exit; undo it now so that it is counted too.
    assert release_all() == [], "cgroup changes not undone"
    others |= foreign_boxes(run)
    after = Snapshot.take()
    leaked = [c for c in set(nsbox_cgroups()) - cgroups_before
              if not any(c.endswith(f"nsbox-{box}") for box in others)]
    assert leaked == [], "nsbox cgroups left behind"
    assert nsbox_mounts(run) == [], "nsbox mounts left in the host's mount table"
    if not others:  # counts are only meaningful when no other run shares the machine
        assert after == before, f"leaks around the suite: before {before}, after {after}"


@pytest.fixture(scope="session")
def reachable_by_others() -> Iterator[None]:
    """This Python and this checkout reachable by other users (``o+x`` on each directory
    above them that lacks it, as with a pyenv Python under a 0700 ``/root``), put back at
    the end of the session: tests that run pytest or ``doctor`` as another user need it."""
    import stat

    changed: list[tuple[Path, int]] = []
    top = Path(__file__).resolve().parents[1]
    try:
        for path in (Path(os.path.realpath(sys.executable)), Path(sys.prefix), top):
            for parent in reversed(path.parents):
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    changed.append((parent, stat.S_IMODE(mode)))
                    os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
        yield
    finally:
        for path, mode in reversed(changed):
            os.chmod(path, mode)


def user_xattr_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the filesystem of directory ``path`` cannot hold ``user.*`` extended attributes,
    or None when it can (probed by setting one on a scratch file there)."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=path, prefix=".xattr-probe.") as probe:
        try:
            os.setxattr(probe.name, "user.nsbox-probe", b"1")
        except OSError as exc:
            return (f"the filesystem of {path} holds no user.* extended attributes "
                    f"({os.strerror(exc.errno or 0)}); tmpfs before Linux 6.6 has none, set "
                    f"TMPDIR or --basetemp to a disk filesystem (ext4, xfs, btrfs)")
    return None


@pytest.fixture
def user_xattrs(tmp_path: Path) -> Path:
    """``tmp_path``, for a test that needs ``user.*`` xattrs in it; skips with the reason
    where its filesystem has none."""
    problem = user_xattr_problem(tmp_path)
    if problem is not None:
        pytest.skip(problem)
    return tmp_path


@pytest.fixture
def run_dir() -> str:
    from pytest_nsbox.runtime.engine import default_engine

    return default_engine().dirs.boxes
