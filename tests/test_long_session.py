"""Long sessions stay flat: thousands of commands and boxes leave no descriptor or thread.

Every command used to leave an epoll descriptor behind (a selector per command, never
closed, its ``Process`` kept by the box), and after about 1,000 boxes ``select()`` failed
with "filedescriptor out of range": select(2) cannot watch a descriptor numbered
FD_SETSIZE (1024) or above, which poll(2) and epoll(7) can. These tests count what the
pytest process holds (``/proc/self/fd``, ``Threads`` of ``/proc/self/status``, as proc(5)
describes them) before and after, and run boxes with every new descriptor above 1024.
"""
from __future__ import annotations

import gc
import os
import resource
import threading
import time
import urllib.request
import weakref
from collections.abc import Iterator

import pytest

from leaks import descendants
from pytest_nsbox import Box

#: What may differ after thousands of commands: a lazily made cache, a reused descriptor.
SLACK_FDS = 3
SLACK_THREADS = 1
COMMANDS = 5000
BOXES = 1000


def fd_count(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def helper_fds() -> dict[int, int]:
    """Descriptors held by each process this one started (the zygote, its spare)."""
    counts = {}
    for pid in descendants():
        try:
            counts[pid] = fd_count(pid)
        except OSError:
            continue
    return counts


def assert_flat(before: dict[str, int], after: dict[str, int]) -> None:
    assert after["fds"] <= before["fds"] + SLACK_FDS, (before, after)
    assert after["threads"] <= before["threads"] + SLACK_THREADS, (before, after)
    assert after["active"] <= before["active"] + SLACK_THREADS, (before, after)


def usage() -> dict[str, int]:
    gc.collect()
    return {"fds": fd_count(), "threads": thread_count(), "active": threading.active_count()}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_5000_commands_in_one_box_leave_fds_and_threads_flat():
    """5,000 commands (run, run with input, spawn and wait, a timed-out run) in one box:
    this process, the box's init and the zygote end with what they started with, and a
    waited ``Process`` is let go with its pipes (only its ``RunResult`` stays in history)."""
    with Box(image="busybox") as box:
        box.run(["true"], check=True)  # warm: the first command makes what stays
        before, init_before = usage(), fd_count(box.pid)
        started = time.monotonic()
        for i in range(COMMANDS):
            if i % 50 == 0:
                proc = box.spawn(["cat"], input=b"x" * 100_000)
                assert len(proc.wait(timeout=30).stdout_bytes) == 100_000
                ref = weakref.ref(proc)
                del proc
                assert ref() is None, "a waited Process is still referenced"
            elif i % 50 == 1:
                assert box.run("echo $0", input="ignored").stdout == "/bin/sh\n"
            elif i == COMMANDS // 2:
                assert box.run(["sleep", "10"], timeout=0.05).timed_out
            else:
                assert box.run(["true"]).returncode == 0
        elapsed = time.monotonic() - started
        after = usage()
        assert_flat(before, after)
        assert fd_count(box.pid) <= init_before + SLACK_FDS
        assert len(box.history) == COMMANDS + 1
    print(f"{COMMANDS} commands: {elapsed:.1f} s, {elapsed / COMMANDS * 1000:.2f} ms each; "
          f"fds {before['fds']} -> {after['fds']}, threads {before['threads']} -> "
          f"{after['threads']}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_1000_boxes_leave_fds_threads_and_processes_flat():
    """1,000 boxes, each started, used once and closed: this process's descriptors and
    threads, and the zygote's descriptors and process count, end where they started."""
    with Box(image="busybox") as warm:
        warm.run(["true"], check=True)
    before, helpers_before = usage(), helper_fds()
    started = time.monotonic()
    for i in range(BOXES):
        with Box(image="busybox") as box:
            assert box.run(["echo", str(i)]).stdout == f"{i}\n"
    elapsed = time.monotonic() - started
    after, helpers_after = usage(), helper_fds()
    assert_flat(before, after)
    assert len(helpers_after) <= len(helpers_before), (helpers_before, helpers_after)
    for pid in set(helpers_before) & set(helpers_after):  # the zygote (spares come and go)
        assert helpers_after[pid] <= helpers_before[pid] + SLACK_FDS, (pid, helpers_before,
                                                                       helpers_after)
    print(f"{BOXES} boxes: {elapsed:.1f} s, {elapsed / BOXES * 1000:.1f} ms each; "
          f"fds {before['fds']} -> {after['fds']}, threads {before['threads']} -> "
          f"{after['threads']}")


@pytest.fixture
def descriptors_above_1024() -> Iterator[int]:
    """Fill descriptor numbers up past 1100, so every new descriptor is above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    filler = [base]
    try:
        while filler[-1] < 1100:
            filler.append(os.dup(base))
        probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        os.close(probe)
        assert probe > 1024
        yield probe
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(120)
def test_boxes_work_with_descriptor_numbers_above_1024(descriptors_above_1024):
    """Starting a box, commands with and without input, spawn and wait, a timeout, reading
    files, and a forwarded port all wait on descriptors numbered above 1024: poll(2), not
    select(2) (whose FD_SETSIZE is 1024; CPython raises "filedescriptor out of range")."""
    with Box(image="busybox") as box:
        assert box.run(["echo", "hi"]).stdout == "hi\n"
        assert box.run("cat", input=b"y" * 300_000).stdout_bytes == b"y" * 300_000
        proc = box.spawn(["sh", "-c", "echo spawned; echo err >&2"])
        waited = proc.wait(timeout=30)
        assert (waited.stdout, waited.stderr) == ("spawned\n", "err\n")
        assert box.run(["sleep", "10"], timeout=0.1).timed_out
        box.run(["mkdir", "/www"], check=True)
        box.write_text("/www/index.html", "over 1024\n")
        assert box.read_text("/www/index.html") == "over 1024\n"
        box.spawn("httpd -f -p 8080 -h /www")
        box.wait_for_port(8080, timeout=10)
        host, port = box.forward(8080)
        with urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=10) as reply:
            assert reply.read() == b"over 1024\n"
    with Box(image="busybox") as second:  # the zygote's answer read above 1024 too
        assert second.run(["true"]).returncode == 0
