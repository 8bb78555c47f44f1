"""Rootless boxes, for real: pytest run by a normal user (``runuser``) in a project that
user owns, the way a developer without sudo or a CI job without root runs it.

The session fixture makes the user (``useradd``, subordinate IDs with ``usermod
--add-subuids``, as shadow's useradd(8) gives a new user by default) and lets it reach this
Python and this checkout (``o+x`` on the directories above them that lack it, put back at
the end). Each test writes a project, runs it as the user, reads the outcomes from
pytest's own summary (``pytest.LineMatcher``, as pytester does) and then checks that
nothing of the user's run is left: no process of the user, no box directory, no cgroup.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_nsbox.kernel import userns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="making the test user needs root (and runuser, util-linux); a run as a normal "
           "user is rootless itself")

USER = "nsboxuser"
SUBIDS = "100000-165535"
#: The checkout's top: the user's pytest imports the plugin from here (editable install).
REPO = Path(__file__).resolve().parents[1]


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    subuid: int
    made: list[Path]

    def project(self, files: dict[str, str], ini: str = "") -> Path:
        """A project directory the user owns, holding ``files`` and a pytest.ini."""
        top = Path(tempfile.mkdtemp(prefix="rootless-", dir=self.home))
        self.made.append(top)  # removed by the ``clean`` fixture
        (top / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
        for name, text in files.items():
            path = top / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        for path in [top, *top.rglob("*")]:
            os.lchown(path, self.uid, self.gid)
        return top

    def pytest(self, project: Path, *args: str, env: dict[str, str] | None = None,
               prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """``python -m pytest`` in ``project`` as the user, with a login's environment
        (nothing of root's: no ``NSBOX_*``), ``env`` added; ``prefix``: run as root first
        (e.g. a shell that joins a cgroup before ``exec``)."""
        clean = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
                 "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                 "PYTHONDONTWRITEBYTECODE": "1",
                 # the image store in the project (the XDG default, ~/.local/share, is
                 # tests/unit/test_userns.py's): removed with it
                 "XDG_DATA_HOME": str(project / ".data"), **(env or {})}
        cmd = [*(prefix or []), "runuser", "-u", self.name, "--", "env", "-i",
               *(f"{k}={v}" for k, v in clean.items()),
               sys.executable, "-m", "pytest", "-rswE", *args]
        return subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600,
                              check=False)

    def leftovers(self) -> list[str]:
        """What a finished run of the user left: processes, box directories, cgroups."""
        found = []
        ps = subprocess.run(["ps", "-u", str(self.uid), "-o", "pid=,stat=,args="],
                            capture_output=True, text=True, check=False)
        # A zombie has ended: it waits for its reaper, here the host's PID 1 once its
        # parent (a killed owner) is gone.
        found += [f"process {line.strip()}" for line in ps.stdout.splitlines()
                  if line.split()[1:2] != [] and not line.split()[1].startswith("Z")]
        for run in (Path(f"/dev/shm/nsbox-{self.uid}"), Path(f"/tmp/nsbox-{self.uid}")):
            boxes = run / "boxes"
            if boxes.is_dir():
                found += [f"box directory {p}" for p in boxes.iterdir()]
        return found


@pytest.fixture(scope="session")
def user(reachable_by_others: None) -> Iterator[User]:
    """The normal user the tests run pytest as, with subordinate IDs (module docstring)."""
    assert shutil.which("newuidmap") and shutil.which("newgidmap"), \
        "rootless boxes map subordinate ids with newuidmap/newgidmap: run ci/setup (uidmap)"
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
        entry = pwd.getpwnam(USER)
    if not userns.subordinate_ranges(userns.SUBUID, USER, entry.pw_uid) or \
            not userns.subordinate_ranges(userns.SUBGID, USER, entry.pw_uid):
        subprocess.run(["usermod", "--add-subuids", SUBIDS, "--add-subgids", SUBIDS, USER],
                       check=True)
    home = Path(entry.pw_dir)
    home.mkdir(exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    start = userns.subordinate_ranges(userns.SUBUID, USER, entry.pw_uid)[0][0]
    yield User(USER, entry.pw_uid, entry.pw_gid, home, start, [])


@pytest.fixture
def clean(user: User) -> Iterator[User]:
    """``user``, checked to leave nothing behind; the projects a test made are removed."""
    assert user.leftovers() == [], "the user's runs before this test left something"
    try:
        yield user
        assert user.leftovers() == []
    finally:
        while user.made:
            shutil.rmtree(user.made.pop(), ignore_errors=True)


def outcomes(done: subprocess.CompletedProcess[str]) -> pytest.LineMatcher:
    return pytest.LineMatcher((done.stdout + done.stderr).splitlines())


BOXES = """
    import os, pathlib, pytest

    OUT = pathlib.Path(__file__).parent / "out"
    SUBUID = int(os.environ["SUBUID"])


    def test_a_box_runs_as_root_mapped_to_the_user(nsbox):
        # the default image, host: the host's own OS, copy-on-write
        assert nsbox.run("id -u").stdout.strip() == "0"
        uid_map = nsbox.read_text("/proc/1/uid_map").split()
        assert uid_map[:6] == ["0", str(os.getuid()), "1", "1", str(SUBUID), "65536"]
        assert nsbox.run(["python3", "-c", "print(6 * 7)"]).stdout == "42\\n"
        assert nsbox.run("echo cow > /etc/nsbox-was-here && cat /etc/nsbox-was-here",
                         check=True).stdout == "cow\\n"
        assert "/etc/nsbox-was-here" in [c.path for c in nsbox.diff()]
        assert not os.path.exists("/etc/nsbox-was-here")


    @pytest.mark.sandbox(image="busybox", binds={str(OUT): "/out"})
    def test_files_written_through_a_bind_belong_to_the_user(nsbox):
        nsbox.run("echo made-in-box > /out/by-root && mkdir /out/dir && touch /out/dir/f",
                  check=True)
        for name in ("by-root", "dir", "dir/f"):
            st = (OUT / name).stat()
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


    @pytest.mark.sandbox(image="busybox")
    def test_box_users_are_subordinate_ids(nsbox):
        done = nsbox.run("mkdir -p /tmp/priv/d && echo secret > /tmp/priv/d/f && "
                         "chmod 700 /tmp/priv && id -u", user="nobody", check=True)
        assert done.stdout.strip() == "65534"
        st = os.lstat(os.path.join(nsbox.dirs.upper, "tmp", "priv"))
        assert st.st_uid == SUBUID + 65534 - 1  # 1.. inside is the first range
        assert {"/tmp/priv", "/tmp/priv/d", "/tmp/priv/d/f"} <= {c.path for c in nsbox.diff()}
        image = nsbox.commit("rootless-commit:1")
        assert image.layers


    @pytest.mark.sandbox(image="busybox", memory="64M")
    def test_a_memory_limit(nsbox):
        assert nsbox.stats().memory_limit in (None, 64 << 20)


    @pytest.mark.sandbox(image="busybox", network="private")
    def test_a_private_network(nsbox_factory):
        a, b = nsbox_factory(name="a"), nsbox_factory(name="b")
        a.spawn("nc -l -p 8080 -e echo hello-from-a")
        a.wait_for_port(8080, 10)
        assert b.run("nc a 8080 </dev/null", check=True).stdout.strip() == "hello-from-a"
        assert b.run(f"ping -c 1 -W 5 {a.ip}").returncode == 0
        a.spawn("nc -l -p 9090 -e echo via-connect")
        a.wait_for_port(9090, 10)
        with a.connect(9090, timeout=10) as sock:
            assert sock.recv(64) == b"via-connect\\n"
"""


def test_boxes_as_a_normal_user(clean: User) -> None:
    """A normal user's pytest, no root anywhere: boxes start (the ``host`` image, copy-on-
    write, and busybox) with root inside mapped to the user and 1.. to its first
    subordinate range (runc ``docs/rootless``, BuildKit ``docs/rootless.md``: ``newuidmap
    $pid 0 $(id -u) 1 1 <subuid> 65536``); files root writes through a bind belong to the
    user (podman's rootless default); a box user's files are subordinate IDs, still read by
    ``diff``/``commit`` and deleted at teardown; two boxes talk over a private network; a
    memory limit on this cgroup v1 host fails its test with the fix-it line, which names
    systemd's delegation (runc ``docs/cgroup-v2.md``) and ``nsbox_unavailable_limits``
    (CONTRACT.md). Every file the run wrote into the checkout belongs to the user."""
    project = clean.project({"test_boxes.py": BOXES, "out/.keep": ""})
    done = clean.pytest(project, env={"SUBUID": str(clean.subuid)})
    lines = outcomes(done)
    lines.fnmatch_lines(["*4 passed, 1 error*"])
    lines.fnmatch_lines(["*test_a_memory_limit*cannot limit memory (67108864 bytes) here*"
                         "systemd-run --user --scope -p Delegate=yes pytest*"
                         "nsbox_unavailable_limits = skip or warn*"])
    if userns_cgroup_version() == 1:
        lines.fnmatch_lines(["*test_a_memory_limit*this host has cgroup v1*"])
    foreign = [str(p) for p in [project, *project.rglob("*")]
               if os.lstat(p).st_uid != clean.uid]
    assert foreign == [], "files of the rootless run that do not belong to its user"
    assert (project / ".pytest_cache").is_dir()


def userns_cgroup_version() -> int:
    from pytest_nsbox.cgroups import detect

    return int(detect().version)


LIMITED = """
    import pytest


    @pytest.mark.sandbox(image="busybox", memory="32M", pids=20)
    def test_a_memory_limit(nsbox):
        done = nsbox.run("x=$(head -c 100000000 /dev/zero | tr '\\\\0' a); echo survived")
        assert done.oom_killed and "survived" not in done.stdout
        stats = nsbox.stats()
        assert stats.memory_limit == 32 << 20 and stats.oom_kills >= 1
        assert nsbox.run("for i in $(seq 30); do sleep 5 & done; wait").returncode != 0
"""


POLICY = """
    import pytest


    @pytest.mark.sandbox(image="busybox", memory="32M", pids=20)
    def test_a_memory_limit(nsbox):
        stats = nsbox.stats()  # warn: the box runs, without the limits
        assert stats.memory_limit is None and nsbox.run("true").returncode == 0
"""


@pytest.mark.parametrize("policy, outcome, line", [
    ("skip", "*1 skipped*", "SKIPPED*cannot limit memory (33554432 bytes), pids (20) here*"),
    ("warn", "*1 passed, 1 warning*", "*LimitsNotApplied: nsbox: the box runs without them*"),
    ("fail", "*1 error*", "*test_a_memory_limit: cannot limit memory*"),
])
def test_unavailable_limits_policy(clean: User, policy: str, outcome: str, line: str) -> None:
    """CONTRACT.md ini ``nsbox_unavailable_limits = fail|skip|warn`` (default ``fail``):
    where no cgroup is delegated to the user, the test that asks for a limit fails, is
    skipped with the reason, or runs its box without the limit and a warning."""
    project = clean.project({"test_limited.py": POLICY},
                            ini=f"nsbox_unavailable_limits = {policy}\n")
    lines = outcomes(clean.pytest(project))
    lines.fnmatch_lines([outcome])
    lines.fnmatch_lines([line])


@pytest.fixture
def delegated(clean: User) -> Iterator[tuple[str, list[str]]]:
    """A cgroup subtree root hands to the user: ``(ini nsbox_cgroup_parent, command prefix)``.

    cgroup v1: a directory in each hierarchy nsbox uses, ``chown -R`` to the user (the
    fix-it line's recipe). cgroup v2: one directory whose ``cgroup.procs``,
    ``cgroup.subtree_control`` and ``cgroup.threads`` are the user's, as systemd's
    ``Delegate=yes`` makes it (systemd.resource-control(5)), with the user's pytest started
    inside it (the delegated cgroup is where ``delegated_parent`` finds it).
    """
    from pytest_nsbox.cgroups import detect

    backend = detect()
    name = f"deleg-{clean.uid}"
    made: list[Path] = []
    prefix: list[str] = []
    if backend.version == 1:
        for mount in sorted(backend.used):
            path = Path(mount) / name
            path.mkdir(exist_ok=True)
            made.append(path)
            for p in [path, *path.iterdir()]:
                os.chown(p, clean.uid, clean.gid)
        parent = name
    else:
        path = Path(backend.root) / name
        path.mkdir(exist_ok=True)
        made.append(path)
        for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(path / f, clean.uid, clean.gid)
        parent = ""  # found from the cgroup the user's pytest runs in
        prefix = ["sh", "-c", f'echo $$ > {path}/cgroup.procs && exec "$@"', "sh"]
    try:
        yield parent, prefix
    finally:
        for path in made:
            for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    sub.rmdir()
            path.rmdir()


def test_limits_from_a_cgroup_delegated_to_the_user(
        clean: User, delegated: tuple[str, list[str]]) -> None:
    """With a cgroup subtree that is the user's (runc ``docs/cgroup-v2.md``, "Rootless";
    on v1 the fix-it line's ``chown -R``), the limits hold for a rootless box as for root:
    the memory limit OOM-kills (moby's ``OOMKilled``), pids.max refuses forks."""
    parent, prefix = delegated
    project = clean.project({"test_limited.py": LIMITED},
                            ini=f"nsbox_cgroup_parent = {parent}\n" if parent else "")
    done = clean.pytest(project, prefix=prefix)
    outcomes(done).fnmatch_lines(["*1 passed*"])


SINGLE = """
    import os


    def test_one_id_each(nsbox_factory):
        box = nsbox_factory(image="busybox")
        assert box.read_text("/proc/1/uid_map").split() == ["0", str(os.getuid()), "1"]
        assert box.read_text("/proc/1/setgroups").strip() == "deny"
        done = box.run("id", user="nobody")
        assert done.returncode != 0
        assert "unmapped" in done.stderr
        assert box.run("id -u", check=True).stdout.strip() == "0"
"""


def test_a_single_id_map_without_subordinate_ids(clean: User) -> None:
    """Without subordinate IDs (``NSBOX_USERNS=single`` here; a user with no
    ``/etc/subuid`` line alike): one ID each with ``setgroups`` denied (bubblewrap
    ``write_uid_gid_map``); a box user other than root cannot be switched to, with runc's
    words for it ("cannot setuid to unmapped uid")."""
    project = clean.project({"test_single.py": SINGLE})
    outcomes(clean.pytest(project, env={"NSBOX_USERNS": "single"})).fnmatch_lines(
        ["*1 passed*"])


FUSE = """
    import pytest


    @pytest.mark.parametrize("image", ["busybox", "host"])
    def test_the_root_is_fuse_overlayfs(nsbox_factory, image):
        box = nsbox_factory(image=image)
        assert "fuse-overlayfs on / " in box.run("mount", check=True).stdout
        box.run("mkdir -p /opt/n && rm -rf /opt/n && mkdir /opt/n && echo x > /opt/n/f "
                "&& rm -f /etc/hostname.bak", check=True)
        changes = {c.path: c.kind for c in box.diff()}
        assert changes["/opt/n"] == "A" and changes["/opt/n/f"] == "A"
        assert not [p for p in changes if "/.wh." in p]
        image = box.commit()
        again = nsbox_factory(image=image.id)
        assert again.read_text("/opt/n/f") == "x\\n"
"""


def test_fuse_overlayfs_where_the_kernel_cannot_mount_overlayfs(clean: User) -> None:
    """fuse-overlayfs(1) ("can be used since Linux 4.18 by unprivileged users in an user
    namespace"), what podman uses where the kernel cannot (``mount_program``): the
    fallback before Linux 5.11, forced here with ``NSBOX_OVERLAY=fuse-overlayfs``; its
    read-write layer still gives ``diff`` and ``commit`` (its ``.wh.`` markers made into
    the overlay form)."""
    assert shutil.which("fuse-overlayfs"), "run ci/setup (fuse-overlayfs)"
    project = clean.project({"test_fuse.py": FUSE})
    outcomes(clean.pytest(project, env={"NSBOX_OVERLAY": "fuse-overlayfs"})).fnmatch_lines(
        ["*2 passed*"])


def test_the_doctor_probe_works_for_the_user(clean: User) -> None:
    """``kernel.userns.probe`` (doctor's user-namespace line) as the user: no sysctl blocks
    user namespaces on this host, so it finds nothing to fix."""
    done = subprocess.run(
        ["runuser", "-u", clean.name, "--", sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]);"
         "from pytest_nsbox.kernel import userns; print(userns.probe())", str(REPO)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "None", done.stderr


CRASH = """
    import os, sys
    from pytest_nsbox import Box

    box = Box(image="busybox")
    box.run("mkdir -p /tmp/p/q && touch /tmp/p/q/f && chmod 700 /tmp/p", user="nobody",
            check=True)
    print(box.dirs.base, flush=True)
    os.kill(os.getpid(), 9)
"""


def test_gc_removes_a_crashed_rootless_box(clean: User) -> None:
    """testcontainers' reaper's job without a daemon (sweep.py): a killed rootless owner's
    box directory, with files of a subordinate ID (a box user's, which the user may not
    delete itself), is removed by ``python -m pytest_nsbox gc`` through the agent."""
    project = clean.project({"crash.py": CRASH})
    base = {"HOME": str(clean.home), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
            "XDG_DATA_HOME": str(project / ".data")}
    env = ["env", "-i", *(f"{k}={v}" for k, v in base.items())]
    crashed = subprocess.run(["runuser", "-u", clean.name, "--", *env, sys.executable,
                              "crash.py"], cwd=project, capture_output=True, text=True,
                             timeout=120, check=False)
    box_dir = Path(crashed.stdout.strip())
    assert crashed.returncode == -9 or crashed.returncode == 137, crashed.stderr
    assert (box_dir / "upper" / "tmp" / "p").is_dir()
    gc = subprocess.run(["runuser", "-u", clean.name, "--", *env, sys.executable, "-m",
                         "pytest_nsbox", "gc"], cwd=project, capture_output=True, text=True,
                        timeout=120, check=False)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert f"removed box {box_dir.name}" in gc.stdout
    assert not box_dir.exists()


ENTER = """
    import subprocess, sys
    import pytest


    def enter(box, *cmd):
        return subprocess.run([sys.executable, "-m", "pytest_nsbox", "enter", box, *cmd],
                              capture_output=True, text=True, timeout=120, check=False)


    @pytest.mark.sandbox(image="busybox", name="entered")
    def test_enter_a_live_box(nsbox):
        nsbox.run("echo live > /etc/marker", check=True)
        done = enter("entered", "sh", "-c", "cat /etc/marker; id -u; hostname; exit 3")
        assert done.returncode == 3, done.stderr
        assert done.stdout.split() == ["live", "0", nsbox.hostname]


    @pytest.mark.sandbox(image="busybox", name="kept-for-enter")
    def test_kept(nsbox):
        nsbox.run("echo kept > /etc/marker", check=True)
        assert False, "failed on purpose: its box is kept"
"""


def test_enter_runs_in_a_rootless_box_live_or_kept(clean: User) -> None:
    """``python -m pytest_nsbox enter`` as the user who owns the boxes: it joins the boxes'
    user namespace first, as ``nsenter -U`` (and podman's rootless ``exec``) does, since
    only a process in it may join the namespaces it owns (setns(2)); the command runs as
    root of the box, in a live box and in a new box over a kept one's layers."""
    project = clean.project({"test_enter.py": ENTER})
    done = clean.pytest(project, "--nsbox-keep=failed")
    outcomes(done).fnmatch_lines(["*1 failed, 1 passed*"])
    base = {"HOME": str(clean.home), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
            "XDG_DATA_HOME": str(project / ".data")}
    as_user = ["runuser", "-u", clean.name, "--", "env", "-i",
               *(f"{k}={v}" for k, v in base.items()), sys.executable, "-m", "pytest_nsbox"]
    ps = subprocess.run([*as_user, "ps"], cwd=project, capture_output=True, text=True,
                        timeout=120, check=False)
    kept = [line.split()[0] for line in ps.stdout.splitlines() if "kept-for-enter" in line]
    assert len(kept) == 1, ps.stdout + ps.stderr
    try:
        entered = subprocess.run([*as_user, "enter", kept[0], "cat", "/etc/marker"],
                                 cwd=project, capture_output=True, text=True, timeout=120,
                                 check=False)
        assert (entered.returncode, entered.stdout) == (0, "kept\n"), entered.stderr
    finally:
        gc = subprocess.run([*as_user, "gc", "--kept"], cwd=project, capture_output=True,
                            text=True, timeout=120, check=False)
    assert gc.returncode == 0 and f"kept box {kept[0]}" in gc.stdout, gc.stdout + gc.stderr
