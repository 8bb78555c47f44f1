"""The OOM-kill counter of a box cgroup (``oom_kills()``), child cgroups included.

``RunResult.oom_killed`` compares this counter before and after each command, so it must
count every kill of every process of the box: Docker's ``OOMKilled`` is set on any OOM event
of the container (moby ``daemon/monitor.go``, ``ProcessEvent`` case ``EventOOM``), raised by
containerd when the cgroup's ``oom_kill`` count grows (``pkg/oom/v2/v2.go``).

Fake-tree tests build plain files in tmp_path shaped as the kernel's; the real-kernel test
provokes an OOM kill in a child cgroup on this host's cgroup v1 memory hierarchy.
"""
from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_nsbox.cgroups import Limits, V1Backend, V1Cgroup, V2Backend, V2Cgroup, detect
from pytest_nsbox.cgroups.base import subtree_sum
from pytest_nsbox.errors import HostNotSupported

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def events(oom_kill: int) -> str:
    """A memory.events file as cgroup-v2.rst lists its keys."""
    return f"low 0\nhigh 0\nmax 5\noom {oom_kill + 1}\noom_kill {oom_kill}\noom_group_kill 0\n"


def oom_control(oom_kill: int | None) -> str:
    """A v1 memory.oom_control file; kernels before 4.13 have no ``oom_kill`` line."""
    text = "oom_kill_disable 0\nunder_oom 0\n"
    return text if oom_kill is None else text + f"oom_kill {oom_kill}\n"


def v2_tree(base: Path, counts: dict[str, tuple[int, int]]) -> Path:
    """Cgroups at relative paths, each with (memory.events, memory.events.local) oom_kill."""
    for rel, (hierarchical, local) in counts.items():
        d = base / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.events").write_text(events(hierarchical))
        (d / "memory.events.local").write_text(events(local))
    return base / "nsbox-x"


# -- cgroup v2 ------------------------------------------------------------------------------

def test_v2_memory_events_is_hierarchical_by_default(tmp_path: Path) -> None:
    """cgroup-v2.rst, memory.events: values are hierarchical (they include the subtree);
    memory.events.local holds the cgroup's own. 1 own kill + 2 in a child = 3, counted once."""
    box = v2_tree(tmp_path, {"nsbox-x": (3, 1), "nsbox-x/sub": (2, 2)})
    assert V2Cgroup("nsbox-x", str(box)).oom_kills() == 3


def test_v2_memory_localevents_sums_the_subtree(tmp_path: Path) -> None:
    """cgroup-v2.rst, mount option memory_localevents: memory.events holds the cgroup's own
    events only (kernel memcontrol.c ``memcg_memory_event()`` stops climbing), so a kill in
    a child or grandchild cgroup is only counted by adding the subtree up."""
    box = v2_tree(tmp_path, {"nsbox-x": (1, 1), "nsbox-x/a": (2, 2), "nsbox-x/a/b": (4, 4),
                             "nsbox-x/c": (0, 0)})
    assert V2Cgroup("nsbox-x", str(box), local_events=True).oom_kills() == 7
    lone = v2_tree(tmp_path / "lone", {"nsbox-x": (5, 5)})
    assert V2Cgroup("nsbox-x", str(lone), local_events=True).oom_kills() == 5


def test_v2_without_memory_controller_or_cgroup_is_zero(tmp_path: Path) -> None:
    """No memory.events (memory controller not enabled) or no cgroup: no kill is known."""
    (tmp_path / "nsbox-x").mkdir()
    assert V2Cgroup("nsbox-x", str(tmp_path / "nsbox-x")).oom_kills() == 0
    assert V2Cgroup("nsbox-x", str(tmp_path / "nsbox-x"), local_events=True).oom_kills() == 0
    gone = str(tmp_path / "gone")
    assert V2Cgroup("gone", gone).oom_kills() == 0
    assert V2Cgroup("gone", gone, local_events=True).oom_kills() == 0


def _mountinfo(tmp_path: Path, point: Path, fstype: str, options: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
                    f"30 23 0:30 / {point} rw,nosuid,nodev,noexec,relatime shared:30 - "
                    f"{fstype} {fstype} {options}\n")
    return str(path)


@pytest.mark.parametrize("options, local", [("rw,nsdelegate", False),
                                            ("rw,nsdelegate,memory_localevents", True),
                                            ("rw,memory_localevents,memory_recursiveprot", True)])
def test_detect_reads_memory_localevents_from_the_mount(tmp_path: Path, options: str,
                                                       local: bool) -> None:
    """The option is a cgroup2 super option in /proc/self/mountinfo (proc(5)); boxes made or
    opened by the backend count their kills accordingly."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    backend = detect(root=str(root), mountinfo=_mountinfo(tmp_path, root, "cgroup2", options))
    assert isinstance(backend, V2Backend) and backend.local_events is local
    box = v2_tree(root, {"nsbox-x": (1, 1), "nsbox-x/sub": (2, 2)})
    opened = backend.open(box.name)
    assert opened.local_events is local
    assert opened.oom_kills() == (3 if local else 1)


# -- cgroup v1 ------------------------------------------------------------------------------

def v1_cgroup(tmp_path: Path, counts: dict[str, int | None]) -> V1Cgroup:
    """A fake v1 box: memory.oom_control at each relative path, plus a pids directory."""
    for rel, count in counts.items():
        d = tmp_path / "memory" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.oom_control").write_text(oom_control(count))
    (tmp_path / "pids" / "nsbox-x").mkdir(parents=True)
    return V1Cgroup("nsbox-x", {"memory": str(tmp_path / "memory" / "nsbox-x"),
                                "pids": str(tmp_path / "pids" / "nsbox-x")})


def test_v1_oom_control_is_local_so_children_are_added(tmp_path: Path) -> None:
    """cgroup-v1 memory.rst, memory.oom_control ``oom_kill``: processes of this cgroup killed
    by an OOM killer; kernel memcontrol.c ``memcg_memory_event()`` climbs to parents only on
    the unified hierarchy, so on v1 each child cgroup's kills are added here."""
    cg = v1_cgroup(tmp_path, {"nsbox-x": 1, "nsbox-x/a": 2, "nsbox-x/a/b": 3})
    assert cg.oom_kills() == 6
    assert cg.stats().oom_kills == 6


def test_v1_single_cgroup_and_old_kernel(tmp_path: Path) -> None:
    """Without children one file is read; before 4.13 there is no ``oom_kill`` line (0)."""
    assert v1_cgroup(tmp_path / "one", {"nsbox-x": 4}).oom_kills() == 4
    assert v1_cgroup(tmp_path / "old", {"nsbox-x": None, "nsbox-x/a": 2}).oom_kills() == 2
    no_memory = V1Cgroup("nsbox-x", {"pids": str(tmp_path / "one" / "pids" / "nsbox-x")})
    assert no_memory.oom_kills() == 0


def test_subtree_sum_missing_directory_and_files(tmp_path: Path) -> None:
    """A cgroup removed meanwhile, or a child without the file, adds nothing."""
    assert subtree_sum(str(tmp_path / "gone"), "memory.events", "oom_kill") == 0
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "memory.events").write_text(events(2))
    assert subtree_sum(str(tmp_path / "a"), "memory.events", "oom_kill") == 2


# -- real kernel (cgroup v1) ----------------------------------------------------------------

def _real_v1() -> V1Backend | None:
    try:
        backend = detect()
    except HostNotSupported:
        return None
    return backend if isinstance(backend, V1Backend) and "memory" in backend.mounts else None


REAL = _real_v1()


@pytest.fixture
def real_cgroup() -> Iterator[V1Cgroup]:
    assert REAL is not None
    cg = REAL.create(f"nsbox-test-{uuid.uuid4().hex[:8]}", Limits(memory=32 * MiB))
    try:
        yield cg
    finally:
        cg.destroy(5.0)
        assert not cg.exists()


@pytest.mark.skipif(REAL is None, reason="needs root and a cgroup v1 memory hierarchy")
def test_real_v1_kill_in_a_child_cgroup_counts_for_the_box(real_cgroup: V1Cgroup) -> None:
    """The kernel charges the kill to the victim's own cgroup (memcontrol.c
    ``memcg_memory_event_mm``): on v1 the box's own file stays at 0, and the box's count
    must still grow, as any process of the box was killed (moby ``OOMKilled``)."""
    memory = Path(real_cgroup.dirs["memory"])
    child = memory / "sub"
    child.mkdir()
    before = real_cgroup.oom_kills()
    # tail keeps its whole input when there is no newline: 100 MiB under a 32 MiB limit.
    p = subprocess.Popen(["sh", "-c", f"echo 0 > {child}/cgroup.procs; "
                          "head -c 100m /dev/zero | tail > /dev/null"])
    try:
        assert p.wait(30) in (137, -9)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    own = (memory / "memory.oom_control").read_text()
    assert "oom_kill 0" in own  # the kernel's local count: the reason for the sum
    assert real_cgroup.oom_kills() >= before + 1
