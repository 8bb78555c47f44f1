"""Where v2 box cgroups go, what is changed to put them there, and undoing it.

Every placement of issue 12 on a fake cgroupfs (``tests/cgroupfs.py``, which plays the
kernel's rules for mkdir, rmdir, ``cgroup.subtree_control`` and ``cgroup.procs``); the
backend is given the fake's root and its mkdir/rmdir/write, and the writes it makes are
checked. The same placements run for real in ``ci/vm-test`` (root, container, rootless).

References: Documentation/admin-guide/cgroup-v2.rst ("No Internal Process Constraint",
"Threads", "Delegation"); kernel/cgroup/cgroup.c ``cgroup_vet_subtree_control_enable``,
``cgroup_migrate_vet_dst``; moby ``hack/dind`` (processes of the namespace root into
``/init``, then every controller enabled); BenchExec ``benchexec/cgroupsv2.py``
``initialize`` (our processes into ``benchexec_process_*``, then ``_delegate_controllers``);
runc ``libcontainer/cgroups/fs2/create.go`` (vendored opencontainers/cgroups)
``CreateCgroupPath`` (``cgroup.type`` threaded / domain invalid refused for domain
controllers); crun ``src/libcrun/cgroup-utils.c`` ``write_controller_file`` (EBUSY retried).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cgroupfs import FakeCgroupfs

from pytest_nsbox.cgroups import Limits, V2Backend, restore_stale
from pytest_nsbox.runtime.engine import delegated_parent
from pytest_nsbox.cgroups.placement import (
    OWNER_LEAF,
    choose_base,
    home_of,
    list_records,
    lock_file,
    own_cgroup,
)
from pytest_nsbox.errors import CgroupError

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
TESTS = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def records(tmp_path: Path) -> str:
    return str(tmp_path / "records")


@pytest.fixture
def opened() -> Iterator[list[V2Backend]]:
    """Backends a test made: released at its end, whatever happened."""
    made: list[V2Backend] = []
    yield made
    for b in made:
        b.close()


def backend(fs: FakeCgroupfs, records: str, opened: list[V2Backend], *, own: str | None = "/",
            parent: str | None = None, writable: set[str] | None = None) -> V2Backend:
    """A backend over the fake tree; ``writable``: the levels (relative) we may write, by
    default all of them (root)."""
    def may(path: str) -> bool:
        return writable is None or fs.rel(path) in writable

    b = V2Backend(fs.root, parent, mkdir=fs.mkdir, rmdir=fs.rmdir, write=fs.write,
                  writable=may, own=own, records=records)
    opened.append(b)
    return b


def no_raw_errno(message: str) -> None:
    """An impossible placement is one fix-it line, never a bare errno."""
    assert "\n" not in message
    for raw in ("Errno", "EBUSY", "EOPNOTSUPP", "Operation not supported",
                "Device or resource busy", "errno 95"):
        assert raw not in message, message


def record_of(records: str) -> list[dict[str, object]]:
    return [json.loads(Path(records, n).read_text()) for n in sorted(os.listdir(records))
            if n.endswith(".json")] if os.path.isdir(records) else []


# -- the root cgroup ---------------------------------------------------------------------------

def test_root_with_empty_subtree_control_enables_only_what_limits_need(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """The VM's kernel without systemd: nothing enabled at the root. A memory limit enables
    +memory alone (one write; runc ``needAnyControllers`` decides by the resources set);
    the root cgroup keeps its processes (it is exempt from the no-internal-process rule);
    at the end the root is as it was."""
    fs = FakeCgroupfs(tmp_path / "cg", procs=[1, 40])
    b = backend(fs, records, opened)
    cg = b.create("nsbox-a", Limits(memory=64 * MiB))
    assert fs.writes_to("cgroup.subtree_control") == [("cgroup.subtree_control", "+memory")]
    assert fs.subtree(fs.root) == ["memory"]
    assert fs.procs(fs.root) == [1, 40]
    assert not (fs.root / OWNER_LEAF).exists()
    assert Path(cg.path, "memory.max").read_text() == str(64 * MiB)
    assert [r["added"] for r in record_of(records)] == [["memory"]]
    cg.destroy(1.0)
    assert b.close() == []
    assert fs.writes[-1] == ("cgroup.subtree_control", "-memory")
    assert fs.subtree(fs.root) == []
    assert record_of(records) == []


def test_no_limits_enable_nothing(tmp_path: Path, records: str,
                                  opened: list[V2Backend]) -> None:
    """A box without limits needs no controller: no write to any subtree_control, no
    record (the old backend enabled every controller it found, which failed in containers
    even for boxes without limits)."""
    fs = FakeCgroupfs(tmp_path / "cg", real_root=False, procs=[1, 7])
    b = backend(fs, records, opened)
    cg = b.create("nsbox-a", Limits())
    assert fs.writes_to("cgroup.subtree_control") == []
    assert fs.procs(fs.root) == [1, 7]  # nothing moved either
    assert record_of(records) == []
    assert Path(cg.path).is_dir()


def test_controllers_already_enabled_are_not_written(tmp_path: Path, records: str,
                                                     opened: list[V2Backend]) -> None:
    """The VM's root phase and any systemd host: +memory +cpu +pids already enabled at
    the root; nothing is written or recorded, and closing changes nothing."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu memory pids", procs=[1])
    b = backend(fs, records, opened)
    b.create("nsbox-a", Limits(memory=64 * MiB, cpus=1, pids=10)).destroy(1.0)
    assert fs.writes_to("cgroup.subtree_control") == []
    assert b.close() == []
    assert fs.subtree(fs.root) == ["cpu", "memory", "pids"]


@pytest.mark.parametrize("limits, written", [
    (Limits(pids=5), "+pids"), (Limits(cpus=0.5), "+cpu"),
    (Limits(memory=MiB, pids=5), "+memory +pids"),
    (Limits(memory=MiB, cpus=1, pids=5), "+cpu +memory +pids")])
def test_only_the_controllers_of_the_limits(tmp_path: Path, records: str,
                                            opened: list[V2Backend], limits: Limits,
                                            written: str) -> None:
    """One write per level with exactly the controllers the limits need (crun
    ``write_controller_file`` writes them in one go too)."""
    fs = FakeCgroupfs(tmp_path / "cg")
    backend(fs, records, opened).create("nsbox-a", limits)
    assert fs.writes_to("cgroup.subtree_control") == [("cgroup.subtree_control", written)]


def test_more_controllers_later_are_added_once(tmp_path: Path, records: str,
                                               opened: list[V2Backend]) -> None:
    fs = FakeCgroupfs(tmp_path / "cg")
    b = backend(fs, records, opened)
    b.create("nsbox-a", Limits(pids=5))
    b.create("nsbox-b", Limits(pids=6))
    b.create("nsbox-c", Limits(memory=MiB, pids=7))
    assert [v for _, v in fs.writes_to("cgroup.subtree_control")] == ["+pids", "+memory"]
    assert [r["added"] for r in record_of(records)] == [["memory", "pids"]]
    for name in ("nsbox-a", "nsbox-b", "nsbox-c"):
        b.open(name).destroy(1.0)
    assert b.close() == []
    assert fs.subtree(fs.root) == []


# -- a systemd session or service --------------------------------------------------------------

def test_root_in_a_systemd_session_places_boxes_at_the_root(tmp_path: Path, records: str,
                                                            opened: list[V2Backend]) -> None:
    """As root in ``/user.slice/user-0.slice/session-3.scope``: the session holds our
    processes and systemd owns it, so boxes go to the root cgroup, which we may write and
    which is exempt from the no-internal-process rule; the session is left alone."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu io memory pids")
    session = "user.slice/user-0.slice/session-3.scope"
    level = fs.mkdirs(session)
    fs.set_procs(level, [900, os.getpid()])
    b = backend(fs, records, opened, own="/" + session)
    assert b.parent == str(fs.root)
    cg = b.create("nsbox-a", Limits(memory=MiB))
    assert cg.path == str(fs.root / "nsbox-a")
    assert fs.procs(level) == [900, os.getpid()]
    assert fs.writes_to("cgroup.procs") == [] and fs.writes_to("cgroup.subtree_control") == []


def test_rootless_in_a_delegated_scope_moves_our_processes_into_a_leaf(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """A normal user under ``systemd-run --user --scope -p Delegate=yes`` (or the VM's
    rootless phase): only our own scope is writable, and it holds our processes. They
    move into ``<scope>/nsbox-owner`` (BenchExec ``initialize``: ``benchexec_process_*``),
    then the scope enables what the limits need; at the end they move back."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu memory pids")
    scope = "user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"
    level = fs.mkdirs(scope, enable="+memory +pids +cpu")
    fs.set_procs(level, [4000, 4001])
    fs.writes.clear()
    b = backend(fs, records, opened, own="/" + scope, writable={scope})
    assert b.parent == str(level)
    cg = b.create("nsbox-a", Limits(memory=MiB, pids=20))
    assert fs.writes == [
        (f"{scope}/{OWNER_LEAF}/cgroup.procs", "4000"),
        (f"{scope}/{OWNER_LEAF}/cgroup.procs", "4001"),
        (f"{scope}/cgroup.subtree_control", "+memory +pids"),
        (f"{scope}/nsbox-a/memory.max", str(MiB)),
        (f"{scope}/nsbox-a/memory.swap.max", "0"),
        (f"{scope}/nsbox-a/pids.max", "20")]  # no cpu.max: the cpu controller is not needed
    assert fs.procs(level) == [] and fs.procs(level / OWNER_LEAF) == [4000, 4001]
    cg.destroy(1.0)
    assert b.close() == []
    assert fs.procs(level) == [4000, 4001]
    assert not (level / OWNER_LEAF).exists()
    assert fs.subtree(level) == []


def test_rootless_started_inside_nsbox_owner_uses_its_parent(tmp_path: Path, records: str,
                                                             opened: list[V2Backend]) -> None:
    """A session started by one whose processes were already moved (a pytester run, xdist
    workers): its cgroup is ``<scope>/nsbox-owner``, and boxes still go to ``<scope>``."""
    assert home_of("/a/b/nsbox-owner") == "a/b"
    assert home_of("/nsbox-owner") == ""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="memory")
    fs.mkdir(str(fs.root / "scope"))
    b = backend(fs, records, opened, own="/scope/nsbox-owner", writable={"scope"})
    assert b.parent == str(fs.root / "scope")


def test_nothing_writable_names_the_delegation_fix(tmp_path: Path, records: str,
                                                   opened: list[V2Backend]) -> None:
    """A normal user in a session scope owned by root: nowhere to create cgroups; the
    error says how to get a delegated one."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="memory")
    fs.mkdir(str(fs.root / "session-1.scope"))
    fs.deny_mkdir.add(str(fs.root / "nsbox-a"))
    b = backend(fs, records, opened, own="/session-1.scope", writable=set())
    assert "not writable" in b.placed_by
    with pytest.raises(CgroupError, match=r"systemd-run --user --scope -p Delegate=yes") as err:
        b.create("nsbox-a", Limits())
    assert "\n" not in str(err.value)


def test_choose_base() -> None:
    yes = {"/cg", "/cg/own"}.__contains__
    assert choose_base("/cg", "x/y", "/own", yes) == ("x/y", "nsbox_cgroup_parent=x/y")
    assert choose_base("/cg", "", "/own", yes)[0] == ""
    assert choose_base("/cg", "", "/own", {"/cg/own"}.__contains__)[0] == "own"
    assert choose_base("/cg", "", "/own/nsbox-owner", {"/cg/own"}.__contains__)[0] == "own"
    assert choose_base("/cg", "", None, {"/cg/own"}.__contains__)[0] == ""


# -- a container whose cgroup-namespace root holds processes -----------------------------------

def test_container_moves_every_process_into_nsbox_owner_then_enables(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """docker run --privileged, GitLab's docker executor, a GitHub Actions ``container:``
    job: pytest's cgroup is its namespace's root (a non-root cgroup: the rule applies) and
    holds the container's processes. moby ``hack/dind``: move every pid of cgroup.procs
    into a leaf, one write each, then enable. Issue 12's failures (``+memory``:
    EOPNOTSUPP after a partial fallback; errno 95 joining the box) cannot happen: nothing
    is written to subtree_control while a process is in the root."""
    fs = FakeCgroupfs(tmp_path / "cg", "cpu io memory pids", real_root=False,
                      procs=[1, 15, 16])
    b = backend(fs, records, opened, own="/")
    cg = b.create("nsbox-a", Limits(memory=64 * MiB, cpus=0.5, pids=10))
    leaf = f"{OWNER_LEAF}/cgroup.procs"
    assert fs.writes[:4] == [(leaf, "1"), (leaf, "15"), (leaf, "16"),
                             ("cgroup.subtree_control", "+cpu +memory +pids")]
    assert fs.procs(fs.root) == [] and fs.procs(fs.root / OWNER_LEAF) == [1, 15, 16]
    assert fs.kind(fs.root) == "domain" and fs.kind(cg.path) == "domain"
    assert Path(cg.path, "memory.max").read_text() == str(64 * MiB)
    rec, = record_of(records)
    assert rec == {"path": str(fs.root), "added": ["cpu", "memory", "pids"], "owner": True,
                   "created": False}
    cg.destroy(1.0)
    assert b.close() == []
    # Undone in the only order the kernel allows: controllers off, then processes back.
    assert fs.writes[-4:] == [("cgroup.subtree_control", "-cpu -memory -pids"),
                              ("cgroup.procs", "1"), ("cgroup.procs", "15"),
                              ("cgroup.procs", "16")]
    assert fs.procs(fs.root) == [1, 15, 16]
    assert fs.subtree(fs.root) == [] and not (fs.root / OWNER_LEAF).exists()
    assert record_of(records) == []


def test_container_threaded_only_limits_still_move_processes(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """``+pids`` alone would be accepted in a cgroup with processes, and make it a thread
    root whose new children are ``domain invalid`` (no process can join them: the issue's
    errno 95). So the processes move first for threaded controllers too."""
    fs = FakeCgroupfs(tmp_path / "cg", "cpu memory pids", real_root=False, procs=[1])
    cg = backend(fs, records, opened).create("nsbox-a", Limits(pids=5))
    assert fs.procs(fs.root / OWNER_LEAF) == [1]
    assert fs.kind(fs.root) == "domain" and fs.kind(cg.path) == "domain"


def test_container_left_threaded_by_the_old_fallback_is_repaired(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """What the one-controller-at-a-time fallback left behind: ``+cpu +pids`` enabled in
    the namespace root with our processes in it, so it reads ``domain threaded``, and no
    new child of it takes a process (EOPNOTSUPP: ``cgroup_migrate_vet_dst``). Those
    controllers are turned off, our processes move out, and it is a domain again."""
    fs = FakeCgroupfs(tmp_path / "cg", "cpu memory pids", real_root=False, procs=[1, 9])
    fs.write(str(fs.root / "cgroup.subtree_control"), "+cpu +pids")
    assert fs.kind(fs.root) == "domain threaded"
    fs.writes.clear()
    b = backend(fs, records, opened)
    cg = b.create("nsbox-a", Limits())
    assert fs.writes[0] == ("cgroup.subtree_control", "-cpu -pids")
    assert fs.kind(fs.root) == "domain" and fs.kind(cg.path) == "domain"
    assert fs.procs(fs.root / OWNER_LEAF) == [1, 9]
    cg2 = b.create("nsbox-b", Limits(memory=MiB))
    assert fs.subtree(fs.root) == ["memory"]
    cg.destroy(1.0)
    cg2.destroy(1.0)


def test_container_process_that_cannot_move_gives_one_fix_it_line(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """A process the kernel will not let us move (another user's, under a delegation
    boundary): the controllers are not touched, and the line says which pid and what to
    do; what was moved is moved back at the end."""
    fs = FakeCgroupfs(tmp_path / "cg", "cpu memory pids", real_root=False, procs=[1, 2])
    fs.immovable.add(2)
    b = backend(fs, records, opened)
    with pytest.raises(CgroupError) as err:
        b.create("nsbox-a", Limits(memory=MiB))
    message = str(err.value)
    no_raw_errno(message)
    assert "could not be moved into" in message and "2 (" in message
    assert "nsbox_cgroup_parent" in message and "/init/cgroup.procs" in message
    assert fs.writes_to("cgroup.subtree_control") == []
    assert not (fs.root / "nsbox-a").exists()
    assert b.close() == []
    assert fs.procs(fs.root) == [2, 1] and not (fs.root / OWNER_LEAF).exists()


def test_foreign_processes_are_never_moved(tmp_path: Path, records: str,
                                           opened: list[V2Backend]) -> None:
    """``nsbox_cgroup_parent`` naming a cgroup that holds other programs' processes (a
    systemd service): they are not ours to move, so nothing is moved or enabled."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="memory pids")
    service = fs.root / "system.slice"
    fs.mkdir(str(service))
    fs.set_procs(service, [300])
    fs.writes.clear()
    b = backend(fs, records, opened, own="/user.slice/session-1.scope", parent="system.slice")
    with pytest.raises(CgroupError, match="processes of other programs: 300") as err:
        b.create("nsbox-a", Limits(pids=3))
    no_raw_errno(str(err.value))
    assert fs.writes == []
    assert fs.procs(service) == [300]


def test_processes_forking_into_the_level_are_caught(tmp_path: Path, records: str,
                                                     opened: list[V2Backend]) -> None:
    """A process that forks while we move them: the enabling write fails with EBUSY (a new
    process in the level), and the next round moves it too (crun retries on EBUSY)."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1])
    forked = []

    def fork_once(rel: str, value: str) -> None:
        if rel == "cgroup.subtree_control" and not forked:
            forked.append(77)
            fs.set_procs(fs.root, fs.procs(fs.root) + [77])

    fs.on_write = fork_once
    backend(fs, records, opened).create("nsbox-a", Limits(memory=MiB))
    assert fs.procs(fs.root / OWNER_LEAF) == [1, 77]
    assert [v for _, v in fs.writes_to("cgroup.subtree_control")] == ["+memory", "+memory"]


def test_processes_forking_forever_give_one_fix_it_line(tmp_path: Path, records: str,
                                                        opened: list[V2Backend]) -> None:
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1])
    next_pid = [100]

    def fork_always(rel: str, value: str) -> None:
        if rel == "cgroup.subtree_control":
            next_pid[0] += 1
            fs.set_procs(fs.root, fs.procs(fs.root) + [next_pid[0]])

    fs.on_write = fork_always
    fs.immovable.update(range(101, 200))
    with pytest.raises(CgroupError, match="could not be moved") as err:
        backend(fs, records, opened).create("nsbox-a", Limits(memory=MiB))
    no_raw_errno(str(err.value))


def test_transient_ebusy_is_retried(tmp_path: Path, records: str,
                                    opened: list[V2Backend]) -> None:
    """crun ``write_controller_file``: the kernel can answer EBUSY right after processes
    were moved; trying again succeeds."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1])
    fs.fail("cgroup.subtree_control", errno.EBUSY, errno.EBUSY)
    backend(fs, records, opened).create("nsbox-a", Limits(memory=MiB))
    assert fs.subtree(fs.root) == ["memory"]


@pytest.mark.parametrize("code, expected", [
    (errno.EOPNOTSUPP, "threaded subtree"),
    (errno.EACCES, "Delegate=yes"),
    (errno.EROFS, "--privileged"),
    (errno.EINVAL, "real-time"),
])
def test_impossible_enable_is_one_fix_it_line(tmp_path: Path, records: str,
                                              opened: list[V2Backend], code: int,
                                              expected: str) -> None:
    """Each errno the kernel gives for a refused ``+controller`` (cgroup-v2.rst;
    EINVAL: ``+cpu`` with real-time tasks outside the root) becomes what to do; the
    record keeps nothing that was not done."""
    fs = FakeCgroupfs(tmp_path / "cg", "cpu memory")
    fs.fail("cgroup.subtree_control", code)
    with pytest.raises(CgroupError, match=expected) as err:
        backend(fs, records, opened).create("nsbox-a", Limits(cpus=1))
    no_raw_errno(str(err.value))
    assert "+cpu" in str(err.value)
    assert record_of(records) == []
    assert not (fs.root / "nsbox-a").exists()


# -- threaded subtrees -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["threaded", "domain invalid"])
def test_threaded_parent_is_refused_before_anything_is_written(
        tmp_path: Path, records: str, opened: list[V2Backend], kind: str) -> None:
    """runc ``CreateCgroupPath`` refuses ``threaded`` and ``domain invalid`` cgroups for
    domain controllers; a box is a process, so no box can live under them at all."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu memory")
    fs.mkdir(str(fs.root / "t"))
    (fs.root / "t" / "cgroup.type").write_text(kind + "\n")
    fs.writes.clear()
    with pytest.raises(CgroupError, match=f"cgroup.type is '{kind}'") as err:
        backend(fs, records, opened, own="/elsewhere", parent="t").create("nsbox-a", Limits())
    no_raw_errno(str(err.value))
    assert fs.writes == []


def test_foreign_thread_root_is_refused(tmp_path: Path, records: str,
                                        opened: list[V2Backend]) -> None:
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu pids")
    svc = fs.root / "svc"
    fs.mkdir(str(svc))
    fs.set_procs(svc, [50])
    fs.write(str(svc / "cgroup.subtree_control"), "+cpu")
    assert fs.kind(svc) == "domain threaded"
    with pytest.raises(CgroupError, match="remove the threaded cgroups"):
        backend(fs, records, opened, own="/me", parent="svc").create("nsbox-a", Limits())


# -- a delegated subtree (nsbox_cgroup_parent) -------------------------------------------------

def test_parent_levels_are_made_enabled_and_removed_at_the_end(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """``nsbox_cgroup_parent = ci/boxes``: each level made, each enabling the memory
    controller for the next (runc ``CreateCgroupPath``, crun ``enable_controllers``),
    and removed again, deepest first, when the session ends."""
    fs = FakeCgroupfs(tmp_path / "cg", procs=[1])
    b = backend(fs, records, opened, parent="ci/boxes")
    cg = b.create("nsbox-a", Limits(memory=MiB))
    assert cg.path == str(fs.root / "ci" / "boxes" / "nsbox-a")
    assert fs.writes_to("cgroup.subtree_control") == [
        ("cgroup.subtree_control", "+memory"), ("ci/cgroup.subtree_control", "+memory"),
        ("ci/boxes/cgroup.subtree_control", "+memory")]
    assert Path(cg.path, "memory.max").read_text() == str(MiB)
    cg.destroy(1.0)
    assert b.close() == []
    assert not (fs.root / "ci").exists()
    assert fs.subtree(fs.root) == [] and record_of(records) == []


def test_existing_delegated_parent_is_used_as_it_is(tmp_path: Path, records: str,
                                                    opened: list[V2Backend]) -> None:
    """A subtree delegated to us (``Delegate=yes``: its directory and its
    cgroup.subtree_control ours), without processes: only its own subtree_control is
    written; levels above it (root-owned) are only read."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu memory pids")
    fs.mkdir(str(fs.root / "deleg"))
    fs.writes.clear()
    b = backend(fs, records, opened, own="/user.slice/x", parent="deleg",
                writable={"deleg"})
    b.create("nsbox-a", Limits(memory=MiB)).destroy(1.0)
    assert fs.writes_to("cgroup.subtree_control") == [("deleg/cgroup.subtree_control",
                                                       "+memory")]
    assert b.close() == []
    assert (fs.root / "deleg").is_dir() and fs.subtree(fs.root / "deleg") == []


def test_a_nested_rootless_session_uses_the_delegated_cgroup_not_the_owner_leaf(
        tmp_path: Path, records: str, opened: list[V2Backend]) -> None:
    """A rootless pytest whose outer session (pytester, an xdist controller) already moved
    it into ``<delegated>/nsbox-owner`` gets ``<delegated>`` as its parent, as the outer
    one did (``placement.home_of``): the leaf holds the outer session's processes, so the
    kernel would enable nothing there (cgroup-v2.rst, "No Internal Process Constraint").
    Found in the VM's rootless phase, where every pytester run failed so."""
    fs = FakeCgroupfs(tmp_path / "cg", enabled="cpu memory pids")
    deleg = fs.root / "user-1000"
    fs.mkdir(str(deleg))
    fs.mkdir(str(deleg / "nsbox-owner"))
    fs.set_procs(deleg / "nsbox-owner", [40, 41])
    fs.write(str(deleg / "cgroup.subtree_control"), "+memory")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user-1000/nsbox-owner\n")
    parent = delegated_parent(str(proc), root=str(fs.root))
    assert parent == "user-1000"
    proc.write_text("0::/user-1000\n")
    assert delegated_parent(str(proc), root=str(fs.root)) == "user-1000"
    proc.write_text("0::/\n")
    assert delegated_parent(str(proc), root=str(fs.root)) is None
    fs.writes.clear()
    b = backend(fs, records, opened, own="/user-1000/nsbox-owner", parent=parent,
                writable={"user-1000"})
    cg = b.create("nsbox-a", Limits(memory=MiB))
    assert cg.path == str(deleg / "nsbox-a")
    assert fs.writes_to("cgroup.subtree_control") == []  # enabled already: nothing to do
    cg.destroy(1.0)
    assert b.close() == []


def test_controller_missing_upstream_names_it(tmp_path: Path, records: str,
                                             opened: list[V2Backend]) -> None:
    fs = FakeCgroupfs(tmp_path / "cg", enabled="pids")
    fs.mkdir(str(fs.root / "deleg"))
    b = backend(fs, records, opened, own="/x", parent="deleg", writable={"deleg"})
    assert b.available_limits() == {"pids"}
    with pytest.raises(CgroupError, match=r"controller 'memory' is not available"):
        b.create("nsbox-a", Limits(memory=MiB))


# -- sessions sharing a level, crashes, gc -----------------------------------------------------

def test_the_last_session_restores(tmp_path: Path, records: str,
                                   opened: list[V2Backend]) -> None:
    """Two sessions (xdist workers, or sessions with different run directories) on one
    namespace root: the first moves the processes and enables memory, the second finds it
    done. Whichever ends first leaves it; the last one restores (a shared ``flock`` on the
    level's directory each, held for the session)."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory pids", real_root=False, procs=[1, 2])
    first = backend(fs, records, opened)
    second = backend(fs, records, opened)
    first.create("nsbox-a", Limits(memory=MiB)).destroy(1.0)
    second.create("nsbox-b", Limits(memory=MiB, pids=4)).destroy(1.0)
    assert fs.subtree(fs.root) == ["memory", "pids"]
    assert first.close() == []
    assert fs.subtree(fs.root) == ["memory", "pids"] and fs.procs(fs.root) == []
    assert second.close() == []
    assert fs.subtree(fs.root) == [] and fs.procs(fs.root) == [1, 2]
    assert not (fs.root / OWNER_LEAF).exists() and record_of(records) == []


def test_a_held_level_is_never_restored(tmp_path: Path, records: str,
                                        opened: list[V2Backend]) -> None:
    """Any process holding the level (here: a shared flock on its lock file, as another
    session's) keeps the change in place, for ``close`` and ``gc`` alike; the lock file
    and its directory are this user's alone."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1])
    b = backend(fs, records, opened)
    b.create("nsbox-a", Limits(memory=MiB)).destroy(1.0)
    lock = lock_file(records, str(fs.root))
    assert os.stat(lock).st_mode & 0o777 == 0o600
    assert os.stat(records).st_mode & 0o777 == 0o700
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert b.close() == []
        assert fs.subtree(fs.root) == ["memory"]
        assert restore_stale(records, write=fs.write, rmdir=fs.rmdir) == ([], [])
        assert fs.subtree(fs.root) == ["memory"]
    finally:
        os.close(fd)
    done, problems = restore_stale(records, write=fs.write, rmdir=fs.rmdir)
    assert problems == [] and len(done) == 1 and done[0].startswith(f"restored cgroup {fs.root}")
    assert fs.procs(fs.root) == [1] and fs.subtree(fs.root) == []


CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from cgroupfs import FakeCgroupfs
    from pytest_nsbox.cgroups import Limits, V2Backend

    fs = FakeCgroupfs.existing(Path({root!r}), real_root=False)
    b = V2Backend(fs.root, None, mkdir=fs.mkdir, rmdir=fs.rmdir, write=fs.write,
                  own="/", records={records!r})
    b.create("nsbox-a", Limits(memory=1 << 20)).destroy(1.0)
    {ending}
""")


def run_session(fs: FakeCgroupfs, records: str, ending: str) -> None:
    script = CRASH.format(tests=TESTS, root=str(fs.root), records=records, ending=ending)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_crashed_session_is_undone_by_gc(tmp_path: Path, records: str) -> None:
    """pytest killed (no atexit): the record in the run directory says what was changed,
    and ``gc`` (``restore_stale``) undoes it once no live process holds the level; a dry
    run only says what it would do."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1, 2])
    run_session(fs, records, "os._exit(0)")
    assert fs.subtree(fs.root) == ["memory"] and fs.procs(fs.root / OWNER_LEAF) == [1, 2]
    assert [r.path for r in list_records(records)] == [str(fs.root)]
    would, problems = restore_stale(records, dry_run=True)
    assert problems == [] and would == [
        f"would restore cgroup {fs.root}: disabled memory in its cgroup.subtree_control, "
        f"moved the processes of {OWNER_LEAF} back"]
    assert fs.subtree(fs.root) == ["memory"]
    done, problems = restore_stale(records, write=fs.write, rmdir=fs.rmdir)
    assert problems == [] and done == [would[0].replace("would restore", "restored")]
    assert fs.subtree(fs.root) == [] and fs.procs(fs.root) == [1, 2]
    assert not (fs.root / OWNER_LEAF).exists() and list_records(records) == []


def test_a_session_ending_normally_restores_at_exit(tmp_path: Path, records: str) -> None:
    """The interpreter's exit releases what the session held (``atexit``)."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1, 2])
    run_session(fs, records, "sys.exit(0)")
    assert fs.subtree(fs.root) == [] and fs.procs(fs.root) == [1, 2]
    assert not (fs.root / OWNER_LEAF).exists() and list_records(records) == []


def test_restore_problems_are_named_and_kept_for_gc(tmp_path: Path, records: str,
                                                    opened: list[V2Backend]) -> None:
    """A process that cannot move back (gone is fine; refused is not): the leaf stays, the
    problem names it, the record keeps only what is left for ``gc`` to retry."""
    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1, 2])
    b = backend(fs, records, opened)
    b.create("nsbox-a", Limits(memory=MiB)).destroy(1.0)
    fs.immovable.add(2)
    problems = b.close()
    assert len(problems) == 1 and f"cannot remove {fs.root / OWNER_LEAF}" in problems[0]
    assert "2 (" in problems[0]
    rec, = record_of(records)
    assert rec["added"] == [] and rec["owner"] is True
    fs.immovable.clear()
    assert restore_stale(records, write=fs.write, rmdir=fs.rmdir)[1] == []
    assert fs.procs(fs.root) == [1, 2] and record_of(records) == []


def test_gc_collects_placements(tmp_path: Path, records: str) -> None:
    """``python -m pytest_nsbox gc`` (sweep.collect) runs ``restore_stale`` over the
    backend's records."""
    from pytest_nsbox import sweep
    from pytest_nsbox.state import StateDirs

    fs = FakeCgroupfs(tmp_path / "cg", "memory", real_root=False, procs=[1])
    run_session(fs, records, "os._exit(0)")
    gc_backend = V2Backend(fs.root, None, mkdir=fs.mkdir, rmdir=fs.rmdir, write=fs.write,
                           own="/", records=records)
    dirs = StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "run"))
    lines = sweep.collect(dirs, cgroups=gc_backend, dry_run=True)
    assert f"would restore cgroup {fs.root}: disabled memory in its cgroup.subtree_control, " \
           f"moved the processes of {OWNER_LEAF} back" in lines
    lines = sweep.collect(dirs, cgroups=gc_backend)
    assert any(line.startswith(f"restored cgroup {fs.root}") for line in lines)
    assert fs.procs(fs.root) == [1]


# -- where we are ------------------------------------------------------------------------------

@pytest.mark.parametrize("content, mount_root, expected", [
    ("0::/\n", "/", "/"),
    ("0::/user.slice/user-0.slice/session-3.scope\n", "/",
     "/user.slice/user-0.slice/session-3.scope"),
    ("12:memory:/x\n1:name=systemd:/y\n0::/ci\n", "/", "/ci"),
    ("0::/docker/abc/sub\n", "/docker/abc", "/sub"),
    ("0::/docker/abc\n", "/docker/abc", "/"),
    ("0::/../../x\n", "/..", None),  # a host hierarchy seen from a cgroup namespace
    ("0::/other\n", "/docker/abc", None),
    ("12:memory:/x\n", "/", None),  # v1 only
])
def test_own_cgroup(tmp_path: Path, content: str, mount_root: str,
                    expected: str | None) -> None:
    """cgroups(7) ``/proc/[pid]/cgroup``: the ``0::`` line, relative to our cgroup
    namespace's root, as mountinfo's root field is (cgroup_namespaces(7))."""
    f = tmp_path / "cgroup"
    f.write_text(content)
    assert own_cgroup(mount_root, str(f)) == expected
    assert own_cgroup("/", str(tmp_path / "missing")) is None
