"""Teardown leaves nothing: processes, cgroups, mounts, namespaces, layers."""
from __future__ import annotations

import os
import time

import pytest

from leaks import Snapshot, nsbox_cgroups
from pytest_nsbox import Box, BoxClosed, BoxError


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_hundred_boxes_leave_the_host_as_it_was(run_dir):
    with Box(image="busybox", memory="64M", pids=64) as warm:
        warm.run(["true"])
    before = Snapshot.take()
    boxes_before = set(os.listdir(run_dir))
    started = time.monotonic()
    for i in range(200):
        with Box(image="busybox", memory="64M", cpus=1, pids=64) as box:
            if i % 20 == 0:
                box.run("sleep 100 & echo x > /tmp/x", check=True)
    elapsed = time.monotonic() - started
    print(f"200 boxes in {elapsed:.2f} s ({elapsed / 200 * 1000:.1f} ms each)")
    assert Snapshot.take() == before
    assert set(os.listdir(run_dir)) == boxes_before


def test_teardown_kills_double_forked_setsid_processes():
    box = Box(image="busybox")
    box.run("setsid sh -c 'sleep 1000 & sleep 1000 &' & (trap '' HUP; sleep 1000) &",
            check=True)
    deadline = time.monotonic() + 5
    while len(box._cgroup.pids()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = box._cgroup.pids()
    assert len(pids) >= 4, pids
    cgroup_dirs = list(box._cgroup.paths)
    box.close()
    assert not any(_alive(pid) for pid in pids)
    assert not any(os.path.exists(d) for d in cgroup_dirs)
    assert not os.path.exists(box.dirs.base)


def test_close_is_idempotent_and_the_closed_box_says_so():
    box = Box(image="busybox", memory="64M")
    box.run("true")
    box.close()
    box.close()
    with pytest.raises(BoxClosed):
        box.run("true")
    with pytest.raises(BoxClosed):
        box.read_text("/etc/passwd")
    with pytest.raises(BoxClosed):
        box.diff()
    assert box.stats().memory_limit == 64 * 1024**2


def test_a_box_that_fails_to_start_leaves_nothing(run_dir):
    Box(image="busybox").close()  # the zygote is up before counting
    before = Snapshot.take()
    cgroups = nsbox_cgroups()
    entries = set(os.listdir(run_dir)) if os.path.isdir(run_dir) else set()
    with pytest.raises(BoxError, match="failed to start"):
        Box(image="busybox", binds={"/etc/hostname": "/proc/nsbox-cannot-mount-here"})
    assert Snapshot.take() == before
    assert nsbox_cgroups() == cgroups
    assert set(os.listdir(run_dir)) == entries


def test_boxes_of_a_failed_test_are_torn_down(pytester, run_dir):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="busybox")
        def test_fails(nsbox, nsbox_factory):
            nsbox_factory(image="busybox").spawn(["sleep", "1000"])
            nsbox.spawn(["sleep", "1000"])
            raise RuntimeError("boom")
    """)
    before = set(os.listdir(run_dir))
    cgroups = nsbox_cgroups()
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(failed=1)
    assert set(os.listdir(run_dir)) == before
    assert nsbox_cgroups() == cgroups
