"""Limits through cgroups: memory (swap off), pids, CPU quota; and what stats() reads."""
from __future__ import annotations

import sys
import textwrap

import pytest

ALLOCATE_200M = ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]


@pytest.mark.sandbox(image="busybox", memory="64M")
def test_memory_limit_kills_a_200mb_allocation(nsbox):
    result = nsbox.run(ALLOCATE_200M, timeout=60)
    assert result.oom_killed, result
    assert result.returncode == -9
    stats = nsbox.stats()
    assert stats.memory_limit == 64 * 1024**2
    assert stats.oom_kills >= 1
    assert stats.memory_peak is not None and stats.memory_peak >= 60 * 1024**2
    small = nsbox.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=16M", "count=1"])
    assert small.returncode == 0 and not small.oom_killed


def test_oom_is_reported_in_the_failure(pytester):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.sandbox(image="busybox", memory="64M", name="hog")
        def test_hog(nsbox):
            result = nsbox.run({ALLOCATE_200M!r}, timeout=60)
            assert result.returncode == 0
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*nsbox boxes*",
        "*$ dd if=/dev/zero of=/dev/null bs=200M count=1  -> killed: out of memory in *",
        "box 'hog': memory limit 64.0 MiB reached (peak 6*MiB), * killed",
    ])


@pytest.mark.sandbox(image="busybox", pids=20)
def test_pids_limit_stops_a_fork_bomb(nsbox):
    result = nsbox.run("i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; "
                       "echo started", timeout=30)
    assert "fork" in result.stderr.lower(), result.stderr
    stats = nsbox.stats()
    assert stats.pids_current is not None and stats.pids_current <= 20
    box_pids = [p for p in nsbox.listdir("/proc") if p.isdigit()]
    assert 10 <= len(box_pids) <= 20, box_pids
    filler = [nsbox.spawn(["sleep", "30"]) for _ in range(20 - len(box_pids))]
    full = nsbox.run(["true"])
    assert full.returncode == 126 and "cannot fork" in full.stderr, (full, filler)


BUSY_LOOP = textwrap.dedent("""
    import time
    start = time.monotonic()
    while time.monotonic() - start < 2.0:
        pass
""")


@pytest.mark.sandbox(image="host", cpus=0.5)
def test_half_a_cpu_is_half_a_cpu(nsbox):
    before = nsbox.stats().cpu_seconds
    result = nsbox.run([sys.executable, "-c", BUSY_LOOP], timeout=60, check=True)
    used = nsbox.stats().cpu_seconds - before
    ratio = used / result.duration
    print(f"cpus=0.5: {used:.2f} CPU s in {result.duration:.2f} s wall = {ratio:.2f}")
    assert 0.35 <= ratio <= 0.65


@pytest.mark.sandbox(image="busybox", memory="32M", cpus=1.5, pids=50)
def test_stats_read_the_live_cgroup(nsbox):
    stats = nsbox.stats()
    assert stats.memory_limit == 32 * 1024**2
    assert stats.pids_current is not None and stats.pids_current >= 1
    assert stats.memory_current is not None and stats.memory_current > 0
    proc = nsbox.spawn(["sleep", "30"])
    assert nsbox.stats().pids_current >= 2
    proc.kill()
    assert proc.wait(timeout=10).returncode == -9


@pytest.mark.sandbox(image="busybox")
def test_no_limits_means_unlimited(nsbox):
    stats = nsbox.stats()
    assert stats.memory_limit is None
    assert stats.oom_kills == 0
