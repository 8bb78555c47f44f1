"""Exact unit conversions seen from a real box's cgroup: what the kernel is given."""
from __future__ import annotations

import os

import pytest
from test_images import _can_run  # the suite's "can boxes run here" probe

import pytest_nsbox

pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")


def _quota(box: pytest_nsbox.Box) -> str:
    """The CFS quota the kernel holds for the box: cpu.cfs_quota_us (v1) or cpu.max (v2)."""
    for path in box._cgroup.paths:  # the box's own cgroup directories on the host
        for name in ("cpu.cfs_quota_us", "cpu.max"):
            file = os.path.join(path, name)
            if os.path.exists(file):
                with open(file, encoding="ascii") as f:
                    return f.read().split()[0]
    pytest.skip("this host has no cpu controller for boxes")


@pytest.mark.parametrize(("cpus", "quota"), [(0.29, "29000"), ("0.57", "57000"), (1.13, "113000")])
def test_a_box_gets_the_exact_cpu_quota(cpus: object, quota: str) -> None:
    """moby daemon/daemon_unix.go ``getCPUResources``: quota = NanoCPUs * 100000 / 1e9, with
    NanoCPUs the exact rational docker/cli ``opts.ParseCPUs`` reads from ``--cpus``
    (``docker run --cpus 0.29`` gives 29000; ``int(0.29 * 100000)`` is 28999)."""
    with pytest_nsbox.Box(image="busybox", cpus=cpus) as box:
        assert box.run("true").returncode == 0
        assert _quota(box) == quota
