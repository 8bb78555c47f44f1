"""cgroup v1 backend.

Fake-tree tests (plain files in tmp_path; ``FakeV1Kernel`` plays the kernel's part of mkdir
and rmdir) check what is written and how it is parsed, on any host. Real-kernel tests run when
this host is root with cgroup v1 controllers mounted: they create ``nsbox-test-<random>``
cgroups, put processes in them, read the kernel's files back, provoke an OOM kill, and always
remove what they made.
"""
from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_nsbox.cgroups import Limits, Stats, V1Backend, V1Cgroup, detect
from pytest_nsbox.errors import CgroupError, HostNotSupported

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
UNLIMITED = "9223372036854771712"

CONTROLLER_FILES = {
    "memory": {
        "memory.limit_in_bytes": UNLIMITED,
        "memory.memsw.limit_in_bytes": UNLIMITED,
        "memory.swappiness": "60",
        "memory.usage_in_bytes": "0",
        "memory.max_usage_in_bytes": "0",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
    },
    "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024"},
    "cpuacct": {"cpuacct.usage": "0"},
    "pids": {"pids.max": "max", "pids.current": "0"},
    "freezer": {"freezer.state": "THAWED"},
    "cpuset": {"cpuset.cpus": "", "cpuset.mems": ""},
    "devices": {"devices.list": "a *:* rwm"},
}


class FakeV1Kernel:
    """Plays the kernel's part of mkdir/rmdir in fake v1 hierarchies (plain files)."""

    def __init__(self, hierarchies: dict[Path, list[str]], omit: set[str] | None = None) -> None:
        self.hierarchies = hierarchies  # mount point -> its controllers
        self.omit = omit or set()
        for mount, controllers in hierarchies.items():
            mount.mkdir(parents=True)
            self._fill(mount, controllers)
            if "cpuset" in controllers:  # the root cpuset owns every cpu and node
                (mount / "cpuset.cpus").write_text("0-3\n")
                (mount / "cpuset.mems").write_text("0\n")

    def _fill(self, path: Path, controllers: list[str]) -> None:
        files = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0"}
        for c in controllers:
            files.update(CONTROLLER_FILES.get(c, {}))
        for name, content in files.items():
            if name not in self.omit:
                (path / name).write_text(content + "\n")

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        for mount, controllers in self.hierarchies.items():
            if Path(path).is_relative_to(mount):
                self._fill(Path(path), controllers)
                return
        raise AssertionError(f"mkdir outside the fake hierarchies: {path}")

    def rmdir(self, path: str) -> None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if any(c.is_dir() for c in p.iterdir()) or (p / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        for child in p.iterdir():
            child.unlink()
        p.rmdir()


SEPARATE = ["memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "devices"]


def fake(tmp_path: Path, groups: list[str] | None = None, omit: set[str] | None = None,
         parent: str | None = None) -> tuple[Path, FakeV1Kernel, V1Backend]:
    """A fake v1 host with one hierarchy per entry of ``groups`` ("cpu,cpuacct" co-mounts)."""
    root = tmp_path / "cgroup"
    hierarchies = {root / g: g.split(",") for g in (groups or SEPARATE)}
    kernel = FakeV1Kernel(hierarchies, omit)
    mounts = {c: mount for mount, cs in hierarchies.items() for c in cs}
    return root, kernel, V1Backend(mounts, parent=parent, mkdir=kernel.mkdir, rmdir=kernel.rmdir)


def read(path: Path) -> str:
    return path.read_text().strip()


# -- fake tree: limits ------------------------------------------------------------------------

def test_create_writes_limits_in_each_hierarchy(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path)
    cg = b.create("nsbox-x", Limits(memory=64 * MiB, cpus=0.5, pids=20))
    used = ["memory", "cpu", "cpuacct", "pids", "freezer"]
    assert sorted(cg.paths) == sorted(str(root / h / "nsbox-x") for h in used)
    assert sorted(cg.procs_files()) == sorted(str(root / h / "nsbox-x" / "cgroup.procs")
                                              for h in used)
    assert not (root / "cpuset" / "nsbox-x").exists()
    assert not (root / "devices" / "nsbox-x").exists()
    mem = root / "memory" / "nsbox-x"
    assert read(mem / "memory.limit_in_bytes") == str(64 * MiB)
    assert read(mem / "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert read(mem / "memory.swappiness") == "0"
    assert read(root / "cpu" / "nsbox-x" / "cpu.cfs_period_us") == "100000"
    assert read(root / "cpu" / "nsbox-x" / "cpu.cfs_quota_us") == "50000"
    assert read(root / "pids" / "nsbox-x" / "pids.max") == "20"


def test_no_limits_means_unlimited(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path)
    b.create("nsbox-x", Limits())
    assert read(root / "memory" / "nsbox-x" / "memory.limit_in_bytes") == "-1"
    assert read(root / "memory" / "nsbox-x" / "memory.memsw.limit_in_bytes") == "-1"
    assert read(root / "memory" / "nsbox-x" / "memory.swappiness") == "60"  # untouched
    assert read(root / "cpu" / "nsbox-x" / "cpu.cfs_quota_us") == "-1"
    assert read(root / "pids" / "nsbox-x" / "pids.max") == "max"


def test_cpu_quota_has_a_floor(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path)
    b.create("nsbox-x", Limits(cpus=0.001))
    assert read(root / "cpu" / "nsbox-x" / "cpu.cfs_quota_us") == "1000"


@pytest.mark.parametrize("cpus, quota", [(0.29, "29000"), (0.57, "57000"), (0.58, "58000"),
                                         (1.13, "113000"), (2.01, "201000"), (2.3, "230000")])
def test_cfs_quota_is_exact(tmp_path: Path, cpus: float, quota: str) -> None:
    """moby daemon/daemon_unix.go ``getCPUResources``: cpu.cfs_quota_us = NanoCPUs * 100000 /
    1e9, with NanoCPUs the exact value docker/cli ``ParseCPUs`` reads (``int(0.29 *
    100000)`` would be 28999)."""
    root, _, b = fake(tmp_path)
    b.create("nsbox-x", Limits(cpus=cpus))
    assert read(root / "cpu" / "nsbox-x" / "cpu.cfs_period_us") == "100000"
    assert read(root / "cpu" / "nsbox-x" / "cpu.cfs_quota_us") == quota


def test_comounted_cpu_cpuacct_share_a_directory(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path, ["cpu,cpuacct", "memory", "pids", "freezer"])
    cg = b.create("nsbox-x", Limits(cpus=1.5))
    assert len(cg.paths) == 4
    assert cg.dirs["cpu"] == cg.dirs["cpuacct"] == str(root / "cpu,cpuacct" / "nsbox-x")
    assert read(root / "cpu,cpuacct" / "nsbox-x" / "cpu.cfs_quota_us") == "150000"
    (root / "cpu,cpuacct" / "nsbox-x" / "cpuacct.usage").write_text("1500000000\n")
    assert cg.stats().cpu_seconds == 1.5


def test_cpuset_comounted_inherits_cpus_and_mems(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path, ["cpu,cpuset", "memory"], parent="outer")
    b.create("nsbox-x", Limits())
    for d in (root / "cpu,cpuset" / "outer", root / "cpu,cpuset" / "outer" / "nsbox-x"):
        assert read(d / "cpuset.cpus") == "0-3"
        assert read(d / "cpuset.mems") == "0"


def test_no_memsw_without_swap_accounting(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path, omit={"memory.memsw.limit_in_bytes"})
    b.create("nsbox-x", Limits(memory=32 * MiB))
    mem = root / "memory" / "nsbox-x"
    assert read(mem / "memory.limit_in_bytes") == str(32 * MiB)
    assert not (mem / "memory.memsw.limit_in_bytes").exists()
    assert read(mem / "memory.swappiness") == "0"


def test_missing_controller_only_matters_when_asked(tmp_path: Path) -> None:
    _, _, b = fake(tmp_path, ["cpu", "cpuacct", "freezer"])
    assert b.available_limits() == {"cpus"}
    with pytest.raises(CgroupError, match=r"controller 'memory' is not mounted.*mount -t cgroup"):
        b.create("nsbox-x", Limits(memory=64 * MiB))
    with pytest.raises(CgroupError, match=r"controller 'pids'"):
        b.create("nsbox-x", Limits(pids=3))
    assert b.list() == []  # nothing made in the hierarchies that do exist
    cg = b.create("nsbox-x", Limits(cpus=1))
    stats = cg.stats()
    assert stats.memory_current is None and stats.pids_current is None
    assert stats.oom_kills == 0


def test_failure_in_one_hierarchy_undoes_the_others(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path, omit={"pids.max"})
    with pytest.raises(CgroupError, match=r"pids\.max: No such file"):
        b.create("nsbox-x", Limits(pids=3))
    assert not any(p.name == "nsbox-x" for p in root.glob("*/*"))


def test_existing_cgroup_points_to_gc(tmp_path: Path) -> None:
    root, kernel, b = fake(tmp_path)
    kernel.mkdir(str(root / "pids" / "nsbox-x"))  # left over in one hierarchy only
    with pytest.raises(CgroupError, match=r"EEXIST.*pytest_nsbox gc"):
        b.create("nsbox-x", Limits())
    assert not (root / "memory" / "nsbox-x").exists()
    assert b.list() == ["nsbox-x"]
    b.open("nsbox-x").destroy(1.0)  # what gc does
    assert b.list() == []


def test_parent_list_open_destroy(tmp_path: Path) -> None:
    root, kernel, b = fake(tmp_path, parent="mygroup/sub")
    cg = b.create("nsbox-a", Limits(memory=16 * MiB))
    b.create("nsbox-b", Limits())
    assert Path(cg.dirs["memory"]) == root / "memory" / "mygroup" / "sub" / "nsbox-a"
    assert (root / "memory" / "mygroup" / "sub" / "memory.limit_in_bytes").exists()  # a cgroup
    (root / "memory" / "mygroup" / "sub" / "other").mkdir()
    assert b.list() == ["nsbox-a", "nsbox-b"]
    opened = b.open("nsbox-a")
    assert isinstance(opened, V1Cgroup)
    assert sorted(opened.paths) == sorted(cg.paths)
    kernel.mkdir(str(Path(cg.dirs["memory"]) / "inner"))
    opened.destroy(1.0)
    assert not any(Path(p).exists() for p in cg.paths)
    assert b.list() == ["nsbox-b"]
    with pytest.raises(CgroupError, match="no cgroup"):
        b.open("nsbox-a")


# -- fake tree: stats -------------------------------------------------------------------------

def test_stats_parsing(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path)
    cg = b.create("nsbox-x", Limits(memory=64 * MiB))
    mem = root / "memory" / "nsbox-x"
    (mem / "memory.usage_in_bytes").write_text("1000\n")
    (mem / "memory.max_usage_in_bytes").write_text("2000\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 1\noom_kill 2\n")
    (root / "cpuacct" / "nsbox-x" / "cpuacct.usage").write_text("2500000000\n")
    (root / "pids" / "nsbox-x" / "pids.current").write_text("3\n")
    assert cg.oom_kills() == 2
    assert cg.stats() == Stats(memory_current=1000, memory_peak=2000, memory_limit=64 * MiB,
                               cpu_seconds=2.5, pids_current=3, oom_kills=2)


def test_stats_unlimited_and_old_kernel(tmp_path: Path) -> None:
    root, _, b = fake(tmp_path)
    cg = b.create("nsbox-x", Limits())
    mem = root / "memory" / "nsbox-x"
    (mem / "memory.limit_in_bytes").write_text(UNLIMITED + "\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")  # before 4.13
    stats = cg.stats()
    assert stats.memory_limit is None
    assert stats.oom_kills == 0


# -- real kernel ------------------------------------------------------------------------------

def _real_v1() -> V1Backend | None:
    if os.geteuid() != 0:
        return None
    try:
        b = detect()
    except HostNotSupported:
        return None
    return b if isinstance(b, V1Backend) and {"memory", "cpu", "pids"} <= set(b.mounts) else None


REAL = _real_v1()
real = pytest.mark.skipif(REAL is None, reason="needs root and cgroup v1 memory, cpu, pids")


@pytest.fixture
def real_backend() -> V1Backend:
    assert REAL is not None
    return REAL


@pytest.fixture
def make_cgroup(real_backend: V1Backend) -> Iterator[Callable[..., V1Cgroup]]:
    made: list[V1Cgroup] = []

    def make(limits: Limits, backend: V1Backend | None = None) -> V1Cgroup:
        cg = (backend or real_backend).create(f"nsbox-test-{uuid.uuid4().hex[:8]}", limits)
        made.append(cg)
        return cg

    try:
        yield make
    finally:
        for cg in made:
            cg.destroy(5.0)
            assert not cg.exists()


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


@real
def test_real_detect() -> None:
    assert REAL is not None and REAL.version == 1
    assert REAL.available_limits() == {"memory", "cpus", "pids"}
    assert all(os.path.isdir(p) for p in REAL.mounts.values())


@real
def test_real_limits_read_back(make_cgroup: Callable[..., V1Cgroup]) -> None:
    cg = make_cgroup(Limits(memory=64 * MiB, cpus=0.5, pids=20))
    mem = Path(cg.dirs["memory"])
    assert cg.name.startswith("nsbox-test-")
    assert all(Path(p).parent.parent == Path("/sys/fs/cgroup") for p in cg.paths)
    assert read(mem / "memory.limit_in_bytes") == str(64 * MiB)
    if (mem / "memory.memsw.limit_in_bytes").exists():
        assert read(mem / "memory.memsw.limit_in_bytes") == str(64 * MiB)
    assert read(mem / "memory.swappiness") == "0"
    assert read(Path(cg.dirs["cpu"]) / "cpu.cfs_period_us") == "100000"
    assert read(Path(cg.dirs["cpu"]) / "cpu.cfs_quota_us") == "50000"
    assert read(Path(cg.dirs["pids"]) / "pids.max") == "20"
    assert cg.stats().memory_limit == 64 * MiB


@real
def test_real_memory_limit_up_and_down(make_cgroup: Callable[..., V1Cgroup]) -> None:
    cg = make_cgroup(Limits(memory=64 * MiB))
    mem = Path(cg.dirs["memory"])
    for size in (256 * MiB, 32 * MiB, None):  # raising needs memsw first, lowering memory first
        cg.set_limits(Limits(memory=size))
        assert cg.stats().memory_limit == size
        if (mem / "memory.memsw.limit_in_bytes").exists():
            assert read(mem / "memory.memsw.limit_in_bytes") == read(mem / "memory.limit_in_bytes")


@real
def test_real_process_stats_kill_destroy(make_cgroup: Callable[..., V1Cgroup],
                                         children: list[subprocess.Popen[bytes]]) -> None:
    cg = make_cgroup(Limits(memory=64 * MiB, cpus=0.5, pids=20))
    p = subprocess.Popen(["sleep", "30"])
    children.append(p)
    for procs in cg.procs_files():
        with open(procs, "w") as f:
            f.write(str(p.pid))
    assert cg.pids() == [p.pid]
    stats = cg.stats()
    assert stats.pids_current is not None and stats.pids_current >= 1
    assert stats.memory_current is not None and stats.memory_current >= 0
    assert stats.memory_limit == 64 * MiB
    assert stats.oom_kills == 0
    start = time.monotonic()
    cg.kill_all(2.0)
    assert p.wait(2) == -9
    assert time.monotonic() - start < 2.0
    assert cg.pids() == []
    cg.destroy(2.0)
    assert not any(os.path.exists(path) for path in cg.paths)


@real
def test_real_kill_all_stops_a_forking_shell(make_cgroup: Callable[..., V1Cgroup],
                                             children: list[subprocess.Popen[bytes]]) -> None:
    cg = make_cgroup(Limits(pids=50))
    joins = "; ".join(f"echo 0 > {f}" for f in cg.procs_files())
    churn = "while :; do /bin/true; done"  # forks all the time, stays below pids.max
    p = subprocess.Popen(["sh", "-c", f"{joins}; {churn} & {churn} & wait"])
    children.append(p)
    deadline = time.monotonic() + 10  # the shell forks both loops in its own time
    while len(cg.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None and len(cg.pids()) >= 3
    cg.kill_all(3.0)
    assert p.wait(2) == -9
    assert cg.pids() == []
    assert read(Path(cg.dirs["freezer"]) / "freezer.state") == "THAWED"


@real
def test_real_kill_all_without_freezer(real_backend: V1Backend,
                                       make_cgroup: Callable[..., V1Cgroup],
                                       children: list[subprocess.Popen[bytes]]) -> None:
    mounts = {c: m for c, m in real_backend.mounts.items() if c != "freezer"}
    cg = make_cgroup(Limits(), V1Backend(mounts))
    p = subprocess.Popen(["sleep", "30"])
    children.append(p)
    cg.attach(p.pid)
    cg.kill_all(2.0)
    assert p.wait(2) == -9
    assert cg.pids() == []


@real
def test_real_destroy_kills_what_is_left(make_cgroup: Callable[..., V1Cgroup],
                                         children: list[subprocess.Popen[bytes]]) -> None:
    cg = make_cgroup(Limits(memory=64 * MiB))
    p = subprocess.Popen(["sleep", "30"])
    children.append(p)
    cg.attach(p.pid)
    cg.destroy(3.0)
    assert p.wait(2) == -9
    assert not cg.exists()


@real
def test_real_oom_kill_is_counted(make_cgroup: Callable[..., V1Cgroup],
                                  children: list[subprocess.Popen[bytes]]) -> None:
    cg = make_cgroup(Limits(memory=32 * MiB))
    before = cg.oom_kills()
    joins = "; ".join(f"echo 0 > {f}" for f in cg.procs_files())
    # tail keeps its whole input when there is no newline: 100 MiB in a 32 MiB box.
    p = subprocess.Popen(["sh", "-c", f"{joins}; head -c 100m /dev/zero | tail > /dev/null"])
    children.append(p)
    assert p.wait(30) in (137, -9)
    assert cg.oom_kills() >= before + 1
    stats = cg.stats()
    assert stats.oom_kills == cg.oom_kills()
    assert stats.memory_peak is not None and stats.memory_peak > 16 * MiB
    assert stats.memory_peak <= 32 * MiB
