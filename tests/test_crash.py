"""``kill -9`` of pytest in the middle of a test: its box dies with it, gc takes the rest.

A pytest subprocess runs a test whose box has a double-forked ``setsid`` child sleeping;
once it runs, pytest is SIGKILLed. Within 2 s no process of the box may be alive, and after
``python -m pytest_nsbox gc`` (or the next pytest session) no cgroup, mount, network
namespace, layer or owner lock of it may be left.
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from leaks import nsbox_cgroups, nsbox_mounts

from pytest_nsbox import plugin
from pytest_nsbox.cgroups import detect
from pytest_nsbox.kernel.proc import is_namespace_init
from pytest_nsbox.state import StateDirs

pytestmark = pytest.mark.timeout(180)

HANGING_TEST = """
import os, time
import pytest

@pytest.mark.sandbox(image="busybox")
def test_hangs(nsbox):
    nsbox.run("setsid sh -c 'sleep 1000 &' &", check=True)
    marker = os.environ["NSBOX_CRASH_MARKER"]
    with open(marker + ".tmp", "w") as f:
        f.write(nsbox.id)
    os.rename(marker + ".tmp", marker)
    time.sleep(1000)
"""

SESSION_START_GC = "collect_at_session_start" in inspect.getsource(plugin)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _with_sleep(pids: list[int]) -> list[int]:
    """``pids`` once a ``sleep`` is among them, else []."""
    return pids if any(_comm(p) == "sleep" for p in pids) else []


def _holders_of_netns(inode: int) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                    found.append(int(pid))
            except OSError:
                pass
    return found


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


@pytest.mark.parametrize("cleaner", [
    "gc",
    pytest.param("next session", marks=pytest.mark.skipif(
        not SESSION_START_GC, reason="the plugin does not call gc.collect_at_session_start "
                                     "in pytest_sessionstart yet")),
])
def test_kill_9_of_pytest_leaves_nothing_behind(pytester, cleaner):
    pytester.makepyfile(test_hang=HANGING_TEST)
    marker = pytester.path / "box-running"
    env = dict(os.environ, NSBOX_CRASH_MARKER=str(marker))
    with open(pytester.path / "pytest.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                 "-q", "test_hang.py"], cwd=pytester.path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: marker.exists() or proc.poll() is not None, 60, "box running")
        assert marker.exists(), (pytester.path / "pytest.log").read_text()
        box_id = marker.read_text()
        cgroup = detect().open(f"nsbox-{box_id}")
        pids = _wait_for(lambda: _with_sleep(cgroup.pids()), 10, "sleep 1000 in the box")
        box_dir = os.path.join(StateDirs.default().boxes, box_id)
        with open(os.path.join(box_dir, "owner.json"), encoding="utf-8") as f:
            record = json.load(f)
        init = next(p for p in pids if is_namespace_init(p))
        netns = os.stat(f"/proc/{init}/ns/net").st_ino
        assert netns != os.stat("/proc/self/ns/net").st_ino

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        started = time.monotonic()
        while any(_alive(p) for p in pids) and time.monotonic() - started < 2.0:
            time.sleep(0.01)
        assert [p for p in pids if _alive(p)] == [], "box processes outlived pytest by 2 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    if cleaner == "gc":
        result = subprocess.run([sys.executable, "-m", "pytest_nsbox", "gc"], check=False,
                                capture_output=True, text=True, timeout=120)
        assert f"removed box {box_id}" in result.stdout, result.stdout + result.stderr
    else:
        # gc runs before a session's first box (a session with no box pays nothing)
        pytester.makepyfile(test_hang="def test_first_box(nsbox):\n    pass\n")
        pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)

    assert not [c for c in nsbox_cgroups() if box_id in c], "its cgroup is left"
    assert not os.path.exists(box_dir), "its layers are left"
    assert not os.path.exists(record["owner_lock"]), "the dead owner's lock is left"
    # (named network namespaces of other live runs may be mounted: only ours count)
    assert [m for m in nsbox_mounts() if " - overlay nsbox " in m or box_id in m] == [], \
        "a mount of the box is in the host's mount table"
    assert _holders_of_netns(netns) == [], "its network namespace is held"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert f"net:[{netns}]" not in f.read(), "its network namespace is bind-mounted"
    try:
        assert not [n for n in os.listdir("/run/netns") if box_id in n]
    except FileNotFoundError:
        pass
