"""Limits are cgroups: the kernel enforces them, the result tells what happened."""
import pytest


@pytest.mark.sandbox(image="busybox", memory="64M")
def test_memory_limit(nsbox):
    hog = nsbox.run(["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"])
    assert hog.oom_killed  # the kernel killed it at 64 MiB
    assert nsbox.stats().memory_limit == 64 * 1024 * 1024


@pytest.mark.sandbox(image="busybox", pids=16)
def test_pids_limit(nsbox):
    bomb = nsbox.run("for i in $(seq 50); do sleep 5 & done")
    assert "can't fork" in bomb.stderr
    assert nsbox.stats().pids_current <= 16


@pytest.mark.sandbox(image="busybox", timeout=1)
def test_a_hung_command_times_out(nsbox):
    result = nsbox.run(["sleep", "60"])
    assert result.timed_out and result.returncode == -9
