"""Suite-wide checks: nothing a box creates may outlive the suite."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator

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
    others |= foreign_boxes(run)
    after = Snapshot.take()
    leaked = [c for c in set(nsbox_cgroups()) - cgroups_before
              if not any(c.endswith(f"nsbox-{box}") for box in others)]
    assert leaked == [], "nsbox cgroups left behind"
    assert nsbox_mounts(run) == [], "nsbox mounts left in the host's mount table"
    if not others:  # counts are only meaningful when no other run shares the machine
        assert after == before, f"leaks around the suite: before {before}, after {after}"


@pytest.fixture
def run_dir() -> str:
    from pytest_nsbox.runtime.host import default_host

    return default_host().dirs.boxes
