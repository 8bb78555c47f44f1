"""``python -m pytest_nsbox``: ps, enter, gc and images as a user runs them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from pytest_nsbox import Box, records
from pytest_nsbox.cgroups import detect
from pytest_nsbox.errors import CgroupError
from pytest_nsbox.state import StateDirs, default_run_dir
from pytest_nsbox.kernel.fs import remove_tree

pytestmark = pytest.mark.timeout(120)

OWNER = """
import sys, time
from pytest_nsbox import Box
box = Box(image="busybox", name=sys.argv[1])
print(box.id, flush=True)
time.sleep(1000)
"""


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_nsbox", *args], check=False,
                          capture_output=True, text=True, input=input, timeout=120)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def cgroup_exists(box_id: str) -> bool:
    try:
        return detect().open(f"nsbox-{box_id}").exists()
    except CgroupError:
        return False


def test_ps_lists_a_live_box():
    """A live box's STATE is ``running``, the word ``docker ps --format '{{.State}}'`` shows
    for a running container (moby api/types/container/state.go, ``StateRunning``)."""
    with Box(image="busybox", name="cli-ps") as box:
        result = cli("ps")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["ID", "NAME", "IMAGE", "STATE", "OWNER", "AGE", "MEMORY",
                                    "TEST"]
        row = next(line.split() for line in lines if line.startswith(box.id))
        assert row[1:5] == ["cli-ps", "busybox", "running", str(os.getpid())]
        assert row[5].endswith("s") and row[6] != "-"  # age, memory of its cgroup
        assert row[-1] == "-"  # a running box: no kept test label (TEST)
        assert box.id in cli("ps", "-q").stdout.split()
    assert box.id not in cli("ps", "-q").stdout.split()


def test_enter_runs_a_command_inside_the_box():
    with Box(image="busybox", name="cli-enter", hostname="inside") as box:
        result = cli("enter", box.id[:8], "--", "hostname")
        assert (result.returncode, result.stdout) == (0, "inside\n"), result.stderr
        # by name, a shell reading stdin; its root, PID namespace and cgroup are the box's
        result = cli("enter", "cli-enter",
                     input="cat /etc/hostname; ls /proc/1/root/ >/dev/null && echo "
                           "pid1-visible; test -e /work && echo host-root; cat /proc/1/comm\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["inside", "pid1-visible", "nsbox-init"]
        assert cli("enter", "cli-enter", "sh", "-c", "exit 7").returncode == 7
        # what the OOM killer picks first, as the box's own commands, not the init
        score = box.run("cat /proc/self/oom_score_adj").stdout
        entered = cli("enter", "cli-enter", "cat", "/proc/self/oom_score_adj")
        with open(f"/proc/{box.pid}/oom_score_adj", encoding="ascii") as f:
            init = f.read()  # read here: around a spawn, the init takes the command's
        assert entered.stdout == score != init, (score, init)


def test_enter_gets_the_boxs_environment_and_working_directory(tmp_path):
    """Like ``docker exec``: the command gets the container's environment and runs in its
    working directory (docker/cli docs/reference/commandline/container_exec.md: "COMMAND
    runs in the default directory of the container ... WORKDIR"; moby daemon/exec.go
    starts from the container's ``Config.Env``)."""
    with Box(image="busybox", env={"FROM_MARKER": "yes"}) as box:
        result = cli("enter", box.id, "sh", "-c", "echo $FROM_MARKER $HOME $PWD")
        assert (result.returncode, result.stdout) == (0, "yes /root /\n"), result.stderr

def test_what_enter_runs_dies_with_the_box():
    box = Box(image="busybox")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pytest_nsbox", "enter", box.id,
                                 "sleep", "1000"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while box.stats().pids_current in (None, 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert box.stats().pids_current == 2  # init and the entered sleep: in its cgroup
    finally:
        box.close()
    assert proc.wait(timeout=10) == 128 + signal.SIGKILL


def test_enter_says_why_it_cannot():
    with Box(image="busybox") as box:
        result = cli("enter", box.id, "no-such-program")
        assert result.returncode == 127
        assert f"nsbox: enter {box.id}: cannot run 'no-such-program': No such file" \
               in result.stderr
    for args, message in [
        (("enter", "no-such-box"), "nsbox: no box 'no-such-box' in "),
        (("enter", ""), "nsbox: enter: BOX is empty"),
    ]:
        result = cli(*args)
        assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
        no_traceback(result)


def test_enter_on_a_kept_box_runs_in_a_new_box_over_its_layers():
    """CONTRACT.md: ``enter`` runs "in a new box over a kept box's layers"; the kept layer
    stays as it was (see tests/test_kept.py for the pytest flow)."""
    box = Box(image="busybox", name=f"cli-kept-{os.getpid()}")
    box.run("echo changed > /tmp/file", check=True)
    box.close(keep=True)
    assert box.kept_at is not None
    try:
        result = cli("enter", box.name, "--", "sh", "-c", "cat /tmp/file; echo more >> /tmp/file")
        assert (result.returncode, result.stdout) == (0, "changed\n"), result.stderr
        with open(os.path.join(box.kept_at, "tmp", "file"), encoding="utf-8") as f:
            assert f.read() == "changed\n"
    finally:
        remove_tree(os.path.dirname(box.kept_at))


def test_gc_dry_run_removes_nothing():
    owner = subprocess.Popen([sys.executable, "-c", OWNER, "cli-dry"], stdout=subprocess.PIPE,
                             text=True)
    assert owner.stdout is not None
    box_id = owner.stdout.readline().strip()
    owner.stdout.close()
    box_dir = os.path.join(StateDirs.default().boxes, box_id)
    try:
        assert box_id and os.path.isdir(box_dir)
        owner.kill()
        owner.wait()
        result = cli("gc", "--dry-run")
        assert result.returncode == 0, result.stderr
        assert f"would remove box {box_id} (cli-dry, owner pid {owner.pid} is dead)" \
               in result.stdout
        assert "removed " not in result.stdout
        assert os.path.isdir(box_dir)
        with open(os.path.join(box_dir, "owner.json"), encoding="utf-8") as f:
            assert os.path.exists(json.load(f)["owner_lock"])
        assert [b.state for b in records.scan_boxes(StateDirs.default()) if b.id == box_id] == [
            "dead"]
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        result = cli("gc")
        # (another pytest session starting on this machine may have collected it first)
        assert f"removed box {box_id}" in result.stdout or "nothing to collect" in \
            result.stdout, result.stderr
    assert not os.path.exists(box_dir)
    assert not cgroup_exists(box_id)


def test_usage_errors_exit_2():
    for args in ([], ["enter"], ["frobnicate"], ["gc", "--bogus"]):
        result = cli(*args)
        assert result.returncode == 2, args
        assert "usage: python -m pytest_nsbox" in result.stderr
        no_traceback(result)


def test_images_build_list_rm_prune(tmp_path):
    run = tempfile.mkdtemp(prefix="nsbox-clitest-", dir=os.path.dirname(default_run_dir()))
    where = ("--store", str(tmp_path / "store"), "--run", run)  # a store of its own
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Containerfile").write_text("FROM busybox\nRUN echo hi > /hello\n")
    try:
        result = cli(*where, "images", "build", str(tmp_path / "app"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("built app sha256:")
        lines = cli(*where, "images").stdout.splitlines()
        assert lines[0].split() == ["REF", "ID", "BASE", "LAYERS", "SIZE", "CREATED"]
        assert [(row[0], row[3]) for row in map(str.split, lines[1:])] == [("app", "2")]
        assert cli(*where, "images", "rm", "app").stdout.startswith("removed app\n")
        result = cli(*where, "images", "rm", "app")
        assert result.returncode == 1 and "no such tag or image" in result.stderr
        no_traceback(result)
        assert cli(*where, "images", "prune").stdout.startswith("removed layer ")
        assert cli(*where, "images", "prune").stdout == "nothing to prune\n"
        assert os.listdir(os.path.join(run, "owners")) == []  # the build's owner lock went
    finally:
        remove_tree(run)
