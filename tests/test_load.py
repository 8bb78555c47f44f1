"""Under load: many boxes at once, and xdist workers churning boxes, without error or leak."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from leaks import nsbox_cgroups


def test_twenty_boxes_started_at_once(nsbox_factory):
    with ThreadPoolExecutor(max_workers=20) as pool:
        boxes = list(pool.map(lambda i: nsbox_factory(image="busybox", name=f"b{i}",
                                                      memory="32M", pids=32), range(20)))
    assert len({box.pid for box in boxes}) == 20
    with ThreadPoolExecutor(max_workers=20) as pool:
        names = list(pool.map(lambda b: b.run("hostname", check=True).stdout.strip(), boxes))
    assert names == [f"b{i}" for i in range(20)]


CHURN = """
    import time
    import pytest
    from pytest_nsbox import Box

    @pytest.mark.parametrize("worker", [0, 1])
    def test_churn(worker):
        end = time.monotonic() + {seconds}
        made = 0
        while time.monotonic() < end:
            with Box(image="busybox", memory="32M", pids=32) as box:
                assert box.run(["echo", str(made)], check=True).stdout == f"{{made}}\\n"
            made += 1
        print("MADE", worker, made)
"""


@pytest.mark.timeout(300)
def test_two_xdist_workers_churning_boxes_for_a_minute(pytester, run_dir):
    pytester.makepyfile(CHURN.format(seconds=60))
    cgroups = nsbox_cgroups()
    boxes = set(os.listdir(run_dir))
    result = pytester.runpytest_subprocess("-n", "2", "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert nsbox_cgroups() == cgroups
    assert set(os.listdir(run_dir)) == boxes
