"""gc: what a dead owner left behind goes; what a live owner has stays.

The first tests use real boxes owned by a helper process that is killed with SIGKILL. The
rest run ``collect`` on a state directory in tmp_path with a fake cgroup tree, so every
rule (dead, live, half-created, stale locks, half-written layers, dry run) is checked
without touching anything of other runs.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from filelock import FileLock

from pytest_nsbox import Box, records, sweep
from pytest_nsbox.cgroups import V2Backend, detect
from pytest_nsbox.errors import CgroupError
from pytest_nsbox.state import StateDirs

pytestmark = pytest.mark.timeout(120)

# A box owner: makes a box whose double-forked setsid child sleeps, says which, then waits.
OWNER = """
import sys, time
from pytest_nsbox import Box
box = Box(image="busybox", name=sys.argv[1])
box.run("setsid sh -c 'sleep 1000 &' &", check=True)
print(box.id, box.pid, flush=True)
time.sleep(1000)
"""


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def cgroup_dirs(box_id: str) -> list[str]:
    try:
        return detect().open(f"nsbox-{box_id}").paths
    except CgroupError:
        return []


def wait_for_sleeper(box_id: str, timeout: float = 10.0) -> list[int]:
    """The pids in the box's cgroup once its ``sleep 1000`` runs."""
    cgroup = detect().open(f"nsbox-{box_id}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = cgroup.pids()
        for pid in pids:
            try:
                with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                    if f.read().strip() == "sleep":
                        return pids
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"no sleep in box {box_id} after {timeout} s: {cgroup.pids()}")


def wait_dead(pids: list[int], within: float) -> list[int]:
    """The pids still alive after ``within`` seconds (polling)."""
    deadline = time.monotonic() + within
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_nsbox", *args], check=False,
                          capture_output=True, text=True, timeout=120)


@contextmanager
def box_owner(name: str) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """A helper process owning one box: (process, box id, init pid). Cleaned up after."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, name], stdout=subprocess.PIPE,
                            text=True)
    box_id = ""
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert len(line) == 2, f"the owner died before its box ran (status {proc.wait()})"
        box_id, pid = line[0], int(line[1])
        yield proc, box_id, pid
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if box_id:
            try:
                sweep.collect(StateDirs.default())
            except sweep.GcIncomplete:
                pass  # something of another run; ours is checked below
            assert not cgroup_dirs(box_id)


def test_gc_removes_a_box_whose_owner_was_killed(run_dir):
    with box_owner("gc-killed") as (owner, box_id, init):
        pids = wait_for_sleeper(box_id)
        assert init in pids and len(pids) >= 2
        box_dir = os.path.join(run_dir, box_id)
        with open(os.path.join(box_dir, "owner.json"), encoding="utf-8") as f:
            lock = json.load(f)["owner_lock"]
        assert os.path.exists(lock)

        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        assert wait_dead(pids, within=2.0) == [], "box processes outlived their owner"

        result = cli("gc")
        assert result.returncode == 0, result.stderr
        removed = f"removed box {box_id} (gc-killed, owner pid {owner.pid} is dead)"
        # (another pytest session starting on this machine may have collected it first)
        assert removed in result.stdout or "nothing to collect" in result.stdout
        assert "Traceback" not in result.stderr
        assert not os.path.exists(box_dir)
        assert cgroup_dirs(box_id) == []
        assert not os.path.exists(lock)


def test_gc_leaves_a_live_owners_boxes_alone(run_dir):
    with box_owner("gc-live") as (owner, other_id, _init), Box(image="busybox") as mine:
        other_pids = wait_for_sleeper(other_id)
        result = cli("gc")
        assert result.returncode == 0, result.stderr
        for box_id in (other_id, mine.id):
            assert box_id not in result.stdout
            assert os.path.isdir(os.path.join(run_dir, box_id))
            assert cgroup_dirs(box_id)
        assert all(alive(p) for p in other_pids)
        assert owner.poll() is None
        assert mine.run("echo still here").stdout == "still here\n"


def test_a_box_is_live_while_its_owner_lock_is_held_whatever_its_pid_says(tmp_path):
    lock = tmp_path / "owner.lock"
    lock.touch()
    record = records.BoxRecord(id="0" * 12, owner_pid=999_999_999, owner_start=1,
                               owner_lock=str(lock))
    with open(lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert records.owner_alive(record)
    assert not records.owner_alive(record)
    lock.unlink()  # no lock file: the pid and its start time decide
    assert not records.owner_alive(record)
    me = records.BoxRecord(id="0" * 12, owner_pid=os.getpid(),
                           owner_start=sweep.start_time(os.getpid()), owner_lock=str(lock))
    assert records.owner_alive(me)
    assert me.owner_start is not None
    pid_reused = dataclasses.replace(me, owner_start=me.owner_start + 1)
    assert not records.owner_alive(pid_reused)


# -- collect() on a state directory of its own ----------------------------------------------------

class Fixture:
    """A state dir and a fake cgroup tree; boxes, locks and layers made to order."""

    def __init__(self, tmp: str) -> None:
        self.dirs = StateDirs(store=os.path.join(tmp, "store"), run=os.path.join(tmp, "run"))
        self.cgroot = os.path.join(tmp, "cgroup")
        os.makedirs(self.cgroot)
        self.backend = V2Backend(self.cgroot)
        self.held: list[int] = []
        self.dead_pid = 999_999_999  # above pid_max: surely no process

    def lock(self, name: str, held: bool) -> str:
        path = os.path.join(self.dirs.run, "owners", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if held:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.held.append(fd)
        else:
            os.close(fd)
        return path

    def box(self, box_id: str, lock: str | None, record: bool = True) -> str:
        path = os.path.join(self.dirs.boxes, box_id)
        os.makedirs(os.path.join(path, "upper", "etc"))
        (open(os.path.join(path, "upper", "etc", "x"), "w")).close()
        os.mkdir(os.path.join(self.cgroot, f"nsbox-{box_id}"))
        if record:
            with open(os.path.join(path, "owner.json"), "w", encoding="utf-8") as f:
                json.dump({"id": box_id, "owner_pid": self.dead_pid, "owner_start": 1,
                           "owner_lock": lock, "cgroup": f"nsbox-{box_id}",
                           "name": f"name-{box_id}", "image": "busybox"}, f)
        return path

    def tmp_layer(self, base: str, key: str, building: bool) -> str:
        path = os.path.join(base, "tmp", f"{key}.0a1b2c3d")
        os.makedirs(os.path.join(path, "bin"))
        lock = os.path.join(self.dirs.locks, f"layer-{key}.lock")
        os.makedirs(self.dirs.locks, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if building:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.held.append(fd)
        else:
            os.close(fd)
        return path

    def cgroup(self, box_id: str) -> str:
        return os.path.join(self.cgroot, f"nsbox-{box_id}")

    def collect(self, **kwargs: object) -> list[str]:
        return sweep.collect(self.dirs, cgroups=self.backend, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        for fd in self.held:
            os.close(fd)


@pytest.fixture
def state(tmp_path) -> Iterator[Fixture]:
    fixture = Fixture(str(tmp_path))
    yield fixture
    fixture.close()


@pytest.fixture
def old(monkeypatch) -> None:
    """Everything counts as old enough to be garbage."""
    monkeypatch.setattr(records, "HALF_CREATED_AGE", -1.0)
    for name in ("ORPHAN_CGROUP_AGE", "TMP_LAYER_AGE", "OWNER_LOCK_AGE"):
        monkeypatch.setattr(sweep, name, -1.0)


def test_collect_removes_exactly_what_dead_owners_left(state, old):
    dead_lock = state.lock("1-dead.lock", held=False)
    live_lock = state.lock("2-live.lock", held=True)
    stale_lock = state.lock("3-stale.lock", held=False)
    dead = state.box("dead", dead_lock)
    live = state.box("live", live_lock)
    abandoned = state.box("abandoned", None, record=False)
    os.mkdir(state.cgroup("0bad0bad0bad"))  # an orphan: a box id, no box directory
    os.mkdir(state.cgroup("bench-1"))  # not a box's cgroup at all
    stale = state.tmp_layer(state.dirs.store, "stale", building=False)
    building = state.tmp_layer(state.dirs.store, "building", building=True)
    volatile = state.tmp_layer(state.dirs.run, "volatile", building=False)
    state.collect(dry_run=True)
    before = sorted(os.walk(str(state.dirs.run)))
    lines = [line for line in state.collect(dry_run=True)
             if not line.startswith("network leftovers: not listed")]
    assert lines and all(line.startswith("would remove ") for line in lines)
    assert sorted(os.walk(str(state.dirs.run))) == before  # a dry run removes nothing
    assert os.path.isdir(state.cgroup("dead"))

    removed = state.collect()
    assert [line.replace("would remove", "removed") for line in lines] == removed
    text = "\n".join(removed)
    assert "box dead (name-dead, owner pid 999999999 is dead)" in text
    assert "box abandoned (?, no owner.json" in text
    assert "cgroup nsbox-0bad0bad0bad (no box directory)" in text
    for gone in (dead, abandoned, state.cgroup("dead"), state.cgroup("abandoned"),
                 state.cgroup("0bad0bad0bad"), dead_lock, stale_lock, stale, volatile):
        assert not os.path.exists(gone), gone
    for kept in (live, state.cgroup("live"), state.cgroup("bench-1"), live_lock, building):
        assert os.path.exists(kept), kept
    assert state.collect() == []  # nothing left to do


def test_young_leftovers_may_still_be_in_the_making(state):
    starting = state.box("starting", None, record=False)
    young_tmp = state.tmp_layer(state.dirs.store, "young", building=False)
    os.mkdir(state.cgroup("00young00"))
    # Named after a live pid (ours): its owner may be between creating and locking it.
    young_lock = state.lock(f"{os.getpid()}-young.lock", held=False)
    gone_owner_lock = state.lock(f"{999_999_999}-gone.lock", held=False)
    assert state.collect() == [f"removed owner lock {gone_owner_lock} (its process is gone)"]
    for kept in (starting, young_tmp, state.cgroup("00young00"), young_lock):
        assert os.path.exists(kept), kept
    assert [b.state for b in records.scan_boxes(state.dirs)] == ["starting"]


def test_a_killed_sessions_isolation_folder_goes_a_live_ones_stays(state):
    """``<run>/isolate-<pid>-<start time>-*`` (an isolation session's socket folder,
    ``sweep.process_dir_prefix``) is removed once its pytest is gone, killed or crashed:
    that pid no longer lives with that start time. This process's folder, another
    kind of name, and a file of that name stay."""
    os.makedirs(state.dirs.run)
    ours = tempfile.mkdtemp(prefix=sweep.process_dir_prefix("isolate"), dir=state.dirs.run)
    reused = os.path.join(state.dirs.run, f"isolate-{os.getpid()}-1-abc")  # pid reused
    killed = os.path.join(state.dirs.run, f"isolate-{state.dead_pid}-12345-k1ll3d")
    other = os.path.join(state.dirs.run, f"isolated-{state.dead_pid}-1-x")
    for folder in (reused, killed, other):
        os.mkdir(folder)
    for folder in (ours, reused, killed):
        open(os.path.join(folder, "sock"), "w").close()  # a socket there, in real runs
    plain = os.path.join(state.dirs.run, f"isolate-{state.dead_pid}-1-file")
    open(plain, "w").close()
    removed = state.collect()
    assert removed == [f"removed run folder {path} (its process is gone)"
                       for path in sorted((reused, killed))]
    assert not os.path.exists(reused) and not os.path.exists(killed)
    for kept in (ours, other, plain):
        assert os.path.exists(kept), kept
    with pytest.raises(ValueError, match="kind='box': not a kind of process folder gc knows"):
        sweep.process_dir_prefix("box")


def test_store_tmp_dirs_stay_while_a_build_holds_the_store(state, old):
    made = state.tmp_layer(state.dirs.store, "step", building=False)
    with FileLock(os.path.join(state.dirs.locks, "store.lock")):  # prune's lock, as builds
        assert state.collect() == []
    assert os.path.isdir(made)
    assert state.collect() == [f"removed half-written layer {made}"]


def test_kept_boxes_go_only_when_asked(state):
    kept = os.path.join(state.dirs.kept, "test_x-abc123")
    os.makedirs(os.path.join(kept, "upper"))
    assert state.collect() == []
    assert os.path.isdir(kept)
    assert state.collect(kept=True) == [f"removed kept box abc123 (?): {kept}"]
    assert not os.path.exists(kept)


def test_collectors_take_turns(state):
    os.makedirs(state.dirs.run)
    with FileLock(os.path.join(state.dirs.run, "gc.lock")):
        with pytest.raises(sweep.GcBusy):
            state.collect(lock_timeout=0.1)
        started = time.monotonic()
        sweep.collect_at_session_start(state.dirs)  # another collector is at work: skip
        assert time.monotonic() - started < 5


def test_collect_at_session_start_never_raises(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    dirs = StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "file" / "run"))
    sweep.collect_at_session_start(dirs)
    err = capsys.readouterr().err
    assert err.startswith("nsbox gc: skipped: ") and err.count("\n") == 1


def test_a_failure_is_reported_and_the_rest_still_collected(state, old, monkeypatch):
    state.box("dead1", state.lock("1-a.lock", held=False))
    state.box("dead2", state.lock("1-b.lock", held=False))
    real = sweep.remove_tree

    def remove_tree(path: str) -> None:
        if path.endswith("dead1"):
            raise PermissionError(13, "Permission denied", path)
        real(path)

    monkeypatch.setattr(sweep, "remove_tree", remove_tree)
    with pytest.raises(sweep.GcIncomplete) as info:
        state.collect()
    assert len(info.value.problems) == 1 and "dead1" in info.value.problems[0]
    assert any("box dead2" in line for line in info.value.removed)
    assert os.path.isdir(os.path.join(state.dirs.boxes, "dead1"))
    assert not os.path.exists(os.path.join(state.dirs.boxes, "dead2"))
    # the lock of the box that stays is kept: the next gc still knows its owner is dead
    assert os.path.exists(os.path.join(state.dirs.run, "owners", "1-a.lock"))
