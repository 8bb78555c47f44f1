"""cgroup v2 backend and detect().

Most tests run against a fake cgroupfs: plain files in tmp_path. The fake cannot enforce
anything, so they check what the backend writes and how it parses what it reads. What the
kernel does on mkdir, rmdir and writes to cgroup.subtree_control and cgroup.procs is played
by ``tests/cgroupfs.py``, passed to the backend as its ``mkdir``/``rmdir``/``write``;
everything else is the same code that runs on the real cgroupfs. Where box cgroups go, and
the controllers enabled for them, is tested in ``test_cgroup_placement.py``.

Tests marked ``real`` use a real cgroup2 mount (on this hybrid host ``/sys/fs/cgroup/unified``,
which has no controllers but does have cgroup.procs, cgroup.kill and cgroup.freeze) to check
joining, kill_all and destroy against the kernel. They need root.
"""
from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroupfs import FakeCgroupfs

from pytest_nsbox.cgroups import (
    Limits,
    Stats,
    V1Backend,
    V2Backend,
    V2Cgroup,
    detect,
    parse_mountinfo,
)
from pytest_nsbox.errors import CgroupError, HostNotSupported

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024



def fake(tmp_path: Path, controllers: str = "cpuset cpu io memory pids", enabled: str = "",
         omit: tuple[str, ...] = ()) -> FakeCgroupfs:
    """A fake real root cgroup (no limit files of its own) holding pid 1."""
    fs = FakeCgroupfs(tmp_path / "cgroup", controllers, enabled=enabled, procs=[1], omit=omit)
    (fs.root / "cpu.stat").write_text("usage_usec 99\n")
    return fs


@pytest.fixture
def fs(tmp_path: Path) -> FakeCgroupfs:
    return fake(tmp_path)


@pytest.fixture
def root(fs: FakeCgroupfs) -> Path:
    return fs.root


def backend(fs: FakeCgroupfs, parent: str | None = None) -> V2Backend:
    """The backend over the fake tree, its changes recorded next to it."""
    return V2Backend(root=fs.root, parent=parent, mkdir=fs.mkdir, rmdir=fs.rmdir,
                     write=fs.write, own="/", records=str(fs.root.parent / "records"))


def read(path: Path) -> str:
    return path.read_text().strip()


# -- limits -----------------------------------------------------------------------------------

def test_create_writes_limits(root: Path, fs: FakeCgroupfs) -> None:
    cg = backend(fs).create("nsbox-x", Limits(memory=64 * MiB, cpus=0.5, pids=20))
    box = root / "nsbox-x"
    assert cg.name == "nsbox-x"
    assert cg.paths == [str(box)]
    assert cg.procs_files() == [str(box / "cgroup.procs")]
    assert fs.subtree(root) == ["cpu", "memory", "pids"]
    assert read(box / "memory.max") == str(64 * MiB)
    assert read(box / "memory.swap.max") == "0"
    assert read(box / "cpu.max") == "50000 100000"
    assert read(box / "pids.max") == "20"


def test_no_limits_means_unlimited(tmp_path: Path) -> None:
    """Where the controllers are enabled anyway (a systemd host's root), a box without
    limits has their files, written unlimited."""
    fs = fake(tmp_path, enabled="cpu memory pids")
    backend(fs).create("nsbox-x", Limits())
    box = fs.root / "nsbox-x"
    assert read(box / "memory.max") == "max"
    assert read(box / "memory.swap.max") == "max"
    assert read(box / "cpu.max") == "max 100000"
    assert read(box / "pids.max") == "max"


@pytest.mark.parametrize("cpus, expected", [(2, "200000 100000"), (0.25, "25000 100000"),
                                            (0.001, "1000 100000")])
def test_cpu_quota(root: Path, fs: FakeCgroupfs, cpus: float, expected: str) -> None:
    backend(fs).create("nsbox-x", Limits(cpus=cpus))
    assert read(root / "nsbox-x" / "cpu.max") == expected


@pytest.mark.parametrize("cpus, expected", [
    (0.29, "29000 100000"), (0.57, "57000 100000"), (1.13, "113000 100000"),
    (2.01, "201000 100000"), (1.1, "110000 100000"), (2.3, "230000 100000")])
def test_cpu_max_quota_is_exact(root: Path, fs: FakeCgroupfs, cpus: float,
                                expected: str) -> None:
    """moby daemon/daemon_unix.go ``getCPUResources``: quota = NanoCPUs * 100000 / 1e9, with
    NanoCPUs the exact value docker/cli ``ParseCPUs`` reads (``int(0.29 * 100000)`` would
    be 28999)."""
    backend(fs).create("nsbox-x", Limits(cpus=cpus))
    assert read(root / "nsbox-x" / "cpu.max") == expected


def test_set_limits_changes_them(root: Path, fs: FakeCgroupfs) -> None:
    cg = backend(fs).create("nsbox-x", Limits(memory=64 * MiB, pids=3))
    cg.set_limits(Limits(memory=128 * MiB, pids=5))
    assert read(root / "nsbox-x" / "memory.max") == str(128 * MiB)
    assert read(root / "nsbox-x" / "pids.max") == "5"


def test_no_swap_file_is_fine(tmp_path: Path) -> None:
    fs = fake(tmp_path, omit=("memory.swap.max",))  # CONFIG_SWAP off / swapaccount=0
    root = fs.root
    backend(fs).create("nsbox-x", Limits(memory=64 * MiB))
    assert read(root / "nsbox-x" / "memory.max") == str(64 * MiB)
    assert not (root / "nsbox-x" / "memory.swap.max").exists()


@pytest.mark.parametrize("limits", [Limits(memory=0), Limits(cpus=0), Limits(pids=0),
                                    Limits(cpus=-1.0)])
def test_invalid_limits_refused_before_mkdir(root: Path, fs: FakeCgroupfs,
                                             limits: Limits) -> None:
    with pytest.raises(CgroupError):
        backend(fs).create("nsbox-x", limits)
    assert not (root / "nsbox-x").exists()


# -- controllers and parents ------------------------------------------------------------------

def test_missing_controller_names_it_and_creates_nothing(tmp_path: Path) -> None:
    fs = fake(tmp_path, controllers="cpu pids")
    root = fs.root
    b = backend(fs)
    assert b.available_limits() == {"cpus", "pids"}
    with pytest.raises(CgroupError, match=r"controller 'memory'.*memory limit"):
        b.create("nsbox-x", Limits(memory=64 * MiB))
    assert not (root / "nsbox-x").exists()
    cg = b.create("nsbox-y", Limits(cpus=1, pids=3))  # the others still work
    assert cg.stats().memory_current is None


def test_missing_limit_file_rolls_back(tmp_path: Path) -> None:
    fs = fake(tmp_path, omit=("pids.max",))
    root = fs.root
    with pytest.raises(CgroupError, match=r"pids\.max.*not enabled"):
        backend(fs).create("nsbox-x", Limits(pids=5))
    assert not (root / "nsbox-x").exists()


def test_parent_made_with_controllers_enabled_down_the_path(root: Path,
                                                            fs: FakeCgroupfs) -> None:
    b = backend(fs, parent="mygroup/sub")
    cg = b.create("nsbox-x", Limits(memory=32 * MiB))
    box = root / "mygroup" / "sub" / "nsbox-x"
    assert cg.paths == [str(box)]
    for level in (root, root / "mygroup", root / "mygroup" / "sub"):
        assert fs.subtree(level) == ["memory"]  # only what the limits need
    assert read(box / "memory.max") == str(32 * MiB)
    assert read(box / "cgroup.controllers") == "memory"
    # A second box reuses the parent and enables nothing twice.
    b.create("nsbox-y", Limits())
    assert b.list() == ["nsbox-x", "nsbox-y"]
    assert len(fs.writes_to("cgroup.subtree_control")) == 3


def test_parent_already_enabled_is_not_rewritten(root: Path, fs: FakeCgroupfs) -> None:
    (root / "cgroup.subtree_control").write_text("cpu memory pids io\n")
    backend(fs).create("nsbox-x", Limits(memory=MiB, cpus=1, pids=3))
    assert read(root / "cgroup.subtree_control") == "cpu memory pids io"
    assert fs.writes_to("cgroup.subtree_control") == []


@pytest.mark.parametrize("bad", ["", "..", "a/b", "."])
def test_bad_names(root: Path, fs: FakeCgroupfs, bad: str) -> None:
    with pytest.raises(CgroupError):
        backend(fs).create(bad, Limits())


def test_parent_cannot_escape(root: Path) -> None:
    with pytest.raises(CgroupError, match="nsbox_cgroup_parent"):
        V2Backend(root=root, parent="../etc")


def test_existing_cgroup_points_to_gc(root: Path, fs: FakeCgroupfs) -> None:
    b = backend(fs)
    b.create("nsbox-x", Limits())
    with pytest.raises(CgroupError, match=r"nsbox-x: File exists \(EEXIST\).*gc"):
        b.create("nsbox-x", Limits())


def test_list_open_destroy(root: Path, fs: FakeCgroupfs) -> None:
    b = backend(fs)
    b.create("nsbox-a", Limits())
    b.create("nsbox-b", Limits())
    (root / "system.slice").mkdir()
    (root / "nsbox-file").write_text("")  # not a directory: not a cgroup
    assert b.list() == ["nsbox-a", "nsbox-b"]
    assert b.list(prefix="nsbox-b") == ["nsbox-b"]
    cg = b.open("nsbox-a")
    assert isinstance(cg, V2Cgroup) and cg.paths == [str(root / "nsbox-a")]
    cg.destroy(1.0)
    cg.destroy(1.0)  # idempotent
    assert b.list() == ["nsbox-b"]
    with pytest.raises(CgroupError, match="no cgroup"):
        b.open("nsbox-a")


def test_list_without_parent_dir(root: Path, fs: FakeCgroupfs) -> None:
    assert backend(fs, parent="not/yet").list() == []


def test_destroy_removes_child_cgroups_first(root: Path, fs: FakeCgroupfs) -> None:
    cg = backend(fs).create("nsbox-x", Limits())
    fs.mkdir(str(root / "nsbox-x" / "inner"))
    fs.mkdir(str(root / "nsbox-x" / "inner" / "deeper"))
    cg.destroy(1.0)
    assert not (root / "nsbox-x").exists()


def test_destroy_busy_names_path_and_errno(root: Path, fs: FakeCgroupfs) -> None:
    cg = backend(fs).create("nsbox-x", Limits())
    # A pid that cannot be ours and cannot be killed by the loop: the fake keeps listing it.
    (root / "nsbox-x" / "cgroup.procs").write_text(f"{os.getpid()}\n")
    with pytest.raises(CgroupError, match=r"nsbox-x: Device or resource busy \(EBUSY\)"):
        cg.destroy(0.3)


# -- stats ------------------------------------------------------------------------------------

def test_stats_parsing(root: Path, fs: FakeCgroupfs) -> None:
    cg = backend(fs).create("nsbox-x", Limits(memory=64 * MiB, pids=10))
    box = root / "nsbox-x"
    (box / "memory.current").write_text("1234\n")
    (box / "memory.peak").write_text("5678\n")
    (box / "memory.events").write_text(
        "low 0\nhigh 0\nmax 7\noom 3\noom_kill 2\noom_group_kill 0\n")
    (box / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                                  "nr_periods 3\nnr_throttled 1\nthrottled_usec 10\n")
    (box / "pids.current").write_text("4\n")
    assert cg.oom_kills() == 2
    assert cg.stats() == Stats(memory_current=1234, memory_peak=5678, memory_limit=64 * MiB,
                               cpu_seconds=2.5, pids_current=4, oom_kills=2)


def test_stats_without_memory_peak_and_unlimited(tmp_path: Path) -> None:
    fs = fake(tmp_path, enabled="cpu memory pids", omit=("memory.peak",))  # before 5.19
    cg = backend(fs).create("nsbox-x", Limits())
    stats = cg.stats()
    assert stats.memory_peak is None
    assert stats.memory_limit is None
    assert stats.memory_current == 0
    assert stats.cpu_seconds == 0.0
    assert stats.oom_kills == 0


def test_stats_without_controllers(tmp_path: Path) -> None:
    fs = fake(tmp_path, controllers="")
    cg = backend(fs).create("nsbox-x", Limits())
    assert cg.stats() == Stats(memory_current=None, memory_peak=None, memory_limit=None,
                               cpu_seconds=0.0, pids_current=None, oom_kills=0)


# -- detect -----------------------------------------------------------------------------------

def mountinfo_line(point: Path | str, fstype: str, options: str, mid: int = 30) -> str:
    return (f"{mid} 23 0:{mid} / {point} rw,nosuid,nodev,noexec,relatime shared:{mid} - "
            f"{fstype} {fstype} {options}\n")


def write_mountinfo(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n" + "".join(lines))
    return str(path)


def hybrid(tmp_path: Path, groups: list[str], unified_controllers: str = "hugetlb") -> tuple[
        Path, str]:
    """A fake hybrid host: one v1 mount per entry of ``groups`` plus cgroup2 at unified."""
    root = tmp_path / "cgroup"
    lines = []
    for i, options in enumerate(groups):
        name = options.replace("name=", "")
        (root / name).mkdir(parents=True)
        lines.append(mountinfo_line(root / name, "cgroup", "rw," + options, 40 + i))
    (root / "unified").mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text(unified_controllers + "\n")
    lines.append(mountinfo_line(root / "unified", "cgroup2", "rw,nsdelegate", 60))
    return root, write_mountinfo(tmp_path, lines)


def test_detect_pure_v2(tmp_path: Path) -> None:
    root = fake(tmp_path).root
    info = write_mountinfo(tmp_path, [mountinfo_line(root, "cgroup2", "rw,nsdelegate")])
    b = detect(root=str(root), mountinfo=info, parent="nsbox")
    assert isinstance(b, V2Backend) and b.version == 2
    assert b.root == str(root) and b.parent == str(root / "nsbox")
    assert b.available_limits() == {"memory", "cpus", "pids"}


def test_detect_hybrid_is_v1_with_separate_cpu_and_cpuacct(tmp_path: Path) -> None:
    groups = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
              "xattr,name=systemd"]
    root, info = hybrid(tmp_path, groups)
    b = detect(root=str(root), mountinfo=info)
    assert isinstance(b, V1Backend) and b.version == 1
    assert b.mounts["memory"] == str(root / "memory")
    assert b.mounts["cpu"] == str(root / "cpu")
    assert b.mounts["cpuacct"] == str(root / "cpuacct")
    assert "systemd" not in b.mounts and "name=systemd" not in b.mounts
    assert b.available_limits() == {"memory", "cpus", "pids"}


def test_detect_hybrid_with_comounted_cpu_cpuacct(tmp_path: Path) -> None:
    root, info = hybrid(tmp_path, ["cpu,cpuacct", "memory", "pids", "name=systemd"])
    b = detect(root=str(root), mountinfo=info)
    assert isinstance(b, V1Backend)
    assert b.mounts["cpu"] == b.mounts["cpuacct"] == str(root / "cpu,cpuacct")


def test_detect_hybrid_with_controllers_on_unified(tmp_path: Path) -> None:
    root, info = hybrid(tmp_path, ["name=systemd"], unified_controllers="cpu memory pids")
    b = detect(root=str(root), mountinfo=info)
    assert isinstance(b, V2Backend) and b.root == str(root / "unified")


def test_detect_none(tmp_path: Path) -> None:
    with pytest.raises(HostNotSupported, match="no cgroup filesystem is mounted"):
        detect(root=str(tmp_path), mountinfo=write_mountinfo(tmp_path, []))


def test_detect_no_usable_controllers(tmp_path: Path) -> None:
    root, info = hybrid(tmp_path, ["name=systemd"], unified_controllers="hugetlb")
    with pytest.raises(HostNotSupported, match="memory, cpu or pids") as err:
        detect(root=str(root), mountinfo=info)
    assert "\n" not in str(err.value)


def test_detect_unreadable_mountinfo(tmp_path: Path) -> None:
    with pytest.raises(HostNotSupported, match="cannot read"):
        detect(root=str(tmp_path), mountinfo=str(tmp_path / "missing"))


def test_mountinfo_escapes_and_optional_fields() -> None:
    text = ("36 25 0:31 / /sys/fs/cgroup/my\\040mem rw,relatime shared:8 master:3 - cgroup cgroup "
            "rw,memory\n"
            "garbage line\n"
            "37 25 0:32 / /x rw - cgroup2 cgroup2 rw\n")
    mounts = parse_mountinfo(text)
    assert [m.point for m in mounts] == ["/sys/fs/cgroup/my mem", "/x"]
    assert mounts[0].controllers == ["memory"]
    assert mounts[1].fstype == "cgroup2"


# -- real cgroup2 (kill, freeze, destroy against the kernel) ----------------------------------

def _real_v2_root() -> str | None:
    if os.geteuid() != 0:
        return None
    with open("/proc/self/mountinfo") as f:
        points = [m.point for m in parse_mountinfo(f.read()) if m.fstype == "cgroup2"]
    for point in points:
        if os.access(point, os.W_OK):
            return point
    return None


REAL_V2 = _real_v2_root()
real = pytest.mark.skipif(REAL_V2 is None, reason="needs root and a writable cgroup2 mount")


@pytest.fixture
def real_cgroup() -> Iterator[V2Cgroup]:
    assert REAL_V2 is not None
    b = V2Backend(root=REAL_V2)
    cg = b.create(f"nsbox-test-{uuid.uuid4().hex[:8]}", Limits())
    try:
        yield cg
    finally:
        try:
            cg.destroy(5.0)
        finally:
            assert not os.path.exists(cg.path)


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(5)


def spawn_in(cg: V2Cgroup, children: list[subprocess.Popen[bytes]],
             script: str = "exec sleep 30") -> subprocess.Popen[bytes]:
    """A shell that joins ``cg`` itself (writes 0, as the box init does), then runs script."""
    joins = "; ".join(f"echo 0 > {f}" for f in cg.procs_files())
    p = subprocess.Popen(["sh", "-c", f"{joins}; echo joined; {script}"], stdout=subprocess.PIPE)
    children.append(p)
    assert p.stdout is not None and p.stdout.readline() == b"joined\n"
    return p


@real
def test_real_join_kill_all_and_destroy(real_cgroup: V2Cgroup,
                                        children: list[subprocess.Popen[bytes]]) -> None:
    p = spawn_in(real_cgroup, children)
    assert real_cgroup.pids() == [p.pid]
    start = time.monotonic()
    real_cgroup.kill_all(2.0)
    assert p.wait(2) == -9
    assert time.monotonic() - start < 2.0
    assert real_cgroup.pids() == []
    real_cgroup.destroy(2.0)
    assert not real_cgroup.exists()


@real
def test_real_freeze_kill_thaw(real_cgroup: V2Cgroup, children: list[subprocess.Popen[bytes]],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # As on kernels before 5.14, which have cgroup.freeze but no cgroup.kill.
    monkeypatch.setattr(real_cgroup, "_kill_file", lambda: False)
    p = spawn_in(real_cgroup, children, "sleep 30 & sleep 30 & wait")
    deadline = time.monotonic() + 10  # the shell forks both in its own time
    while len(real_cgroup.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(real_cgroup.pids()) == 3
    real_cgroup.kill_all(2.0)
    assert p.wait(2) == -9
    assert real_cgroup.pids() == []
    assert read(Path(real_cgroup.path, "cgroup.freeze")) == "0"


@real
def test_real_attach_and_destroy_kills_what_is_left(
        real_cgroup: V2Cgroup, children: list[subprocess.Popen[bytes]]) -> None:
    p = subprocess.Popen(["sleep", "30"])
    children.append(p)
    real_cgroup.attach(p.pid)
    os.mkdir(os.path.join(real_cgroup.path, "inner"))  # a box may make its own cgroups
    real_cgroup.destroy(3.0)
    assert p.wait(2) == -9
    assert not real_cgroup.exists()
