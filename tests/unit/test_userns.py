"""Rootless boxes without a box: ID maps, host blocks, per-user directories, the agent's
wire, the rootless root (host ``/`` split, fuse-overlayfs markers)."""
from __future__ import annotations

import errno
import os
import pickle
import socket
import stat
from functools import partial
from pathlib import Path

import pytest

from pytest_nsbox.kernel import userns
from pytest_nsbox.runtime import agent, plan


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- subordinate ranges and maps ----------------------------------------------------------

def test_subordinate_ranges_read_the_users_lines_by_name_or_uid(tmp_path: Path) -> None:
    """subuid(5): ``login_or_uid:start:count`` per line; shadow's newuidmap accepts a line
    naming the user or its uid, and several ranges in file order."""
    path = write(tmp_path / "subuid", "# comment\nalice:100000:65536\nbob:165536:65536\n"
                                      "1001:300000:1000\nalice:bad:1\nalice:400000:0\n")
    assert userns.subordinate_ranges(path, "alice", 1000) == [(100000, 65536)]
    assert userns.subordinate_ranges(path, "carol", 1001) == [(300000, 1000)]
    assert userns.subordinate_ranges(path, "dave", 1002) == []
    assert userns.subordinate_ranges(str(tmp_path / "missing"), "alice", 1000) == []


def test_maps_with_subordinate_ranges_map_root_to_the_user_then_the_ranges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BuildKit docs/rootless.md: ``newuidmap $pid 0 $(id -u) 1 1 231072 65536``: root is the
    user, 1.. the first subordinate range; written by the setuid helpers (setgroups stays
    allowed)."""
    monkeypatch.delenv("NSBOX_USERNS", raising=False)
    sub = write(tmp_path / "subuid", "alice:231072:65536\n")
    maps = userns.plan_maps(1000, 1000, user="alice", subuid=sub, subgid=sub,
                            which=lambda name: f"/usr/bin/{name}")
    assert maps.helpers and maps.subordinate()
    assert maps.uids == (userns.IdRange(0, 1000, 1), userns.IdRange(1, 231072, 65536))
    assert maps.uid_inside(1000) == 0 and maps.uid_inside(231072) == 1
    assert maps.uid_inside(231072 + 65535) == 65536
    assert maps.uid_inside(5) == userns.OVERFLOW_ID


def test_maps_fall_back_to_one_id_without_ranges_or_helpers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bubblewrap ``write_uid_gid_map``: ``<id> <parent id> 1`` with ``setgroups`` denied when
    the user has no subordinate IDs, or no newuidmap/newgidmap to write them; and
    ``NSBOX_USERNS=single`` asks for it."""
    monkeypatch.delenv("NSBOX_USERNS", raising=False)
    sub = write(tmp_path / "subuid", "alice:231072:65536\n")
    empty = write(tmp_path / "empty", "")
    single = userns.IdMaps((userns.IdRange(0, 1000, 1),), (userns.IdRange(0, 1000, 1),), False)
    helpers = partial(userns.plan_maps, 1000, 1000, user="alice",
                      which=lambda name: f"/usr/bin/{name}")
    assert helpers(subuid=empty, subgid=sub) == single
    assert helpers(subuid=sub, subgid=empty) == single
    assert userns.plan_maps(1000, 1000, user="alice", subuid=sub, subgid=sub,
                            which=lambda name: None) == single
    monkeypatch.setenv("NSBOX_USERNS", "single")
    assert helpers(subuid=sub, subgid=sub) == single
    assert not single.subordinate() and single.uid_inside(1000) == 0


def test_a_range_holding_the_users_own_id_is_left_out(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """newuidmap refuses overlapping outside ranges; root already is the user's own ID."""
    monkeypatch.delenv("NSBOX_USERNS", raising=False)
    sub = write(tmp_path / "subuid", "alice:900:200\nalice:5000:10\n")
    maps = userns.plan_maps(1000, 1000, user="alice", subuid=sub, subgid=sub,
                            which=lambda name: "/x")
    assert maps.uids == (userns.IdRange(0, 1000, 1), userns.IdRange(1, 5000, 10))


# -- host blocks --------------------------------------------------------------------------

@pytest.fixture
def sysctls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SYSCTL_CLONE", "SYSCTL_MAX", "SYSCTL_APPARMOR"):
        monkeypatch.setattr(userns, name, str(tmp_path / name))
    return tmp_path


def test_debian_unprivileged_userns_clone_0_names_its_sysctl(sysctls: Path) -> None:
    """Debian's kernel patch: ``kernel.unprivileged_userns_clone=0`` forbids unprivileged
    ``CLONE_NEWUSER`` (BuildKit docs/rootless.md: ``echo 1 >
    /proc/sys/kernel/unprivileged_userns_clone``)."""
    (sysctls / "SYSCTL_CLONE").write_text("0\n")
    line = userns.host_block()
    assert line is not None
    assert "kernel.unprivileged_userns_clone=1" in line and "sysctl -w" in line
    (sysctls / "SYSCTL_CLONE").write_text("1\n")
    assert userns.host_block() is None


def test_max_user_namespaces_0_names_its_sysctl(sysctls: Path) -> None:
    """user_namespaces(7): ``/proc/sys/user/max_user_namespaces`` 0 allows none (RHEL 7's
    default, BuildKit docs/rootless.md: ``echo 28633 > .../max_user_namespaces``)."""
    (sysctls / "SYSCTL_MAX").write_text("0\n")
    assert "user.max_user_namespaces=28633" in (userns.host_block() or "")
    (sysctls / "SYSCTL_MAX").write_text("15000\n")
    assert userns.host_block() is None


def test_ubuntus_apparmor_restriction_names_the_sysctl_and_the_profile(sysctls: Path) -> None:
    """Ubuntu 23.10+ (AppArmor 4 ``userns`` mediation): the unshare succeeds but the new
    namespace has no capabilities, so writing a map or mounting fails with EPERM; the
    remedies are a profile with ``userns,`` for the program or the sysctl
    ``kernel.apparmor_restrict_unprivileged_userns=0`` (Ubuntu's "restricted unprivileged
    user namespaces" spec)."""
    (sysctls / "SYSCTL_APPARMOR").write_text("1\n")
    assert userns.host_block() is None  # a profile may allow us: only trying tells
    line = userns.diagnose("writing /proc/self/uid_map", OSError(errno.EPERM, "x"))
    assert "kernel.apparmor_restrict_unprivileged_userns=0" in line
    assert "userns," in line and "apparmor_parser -r" in line
    assert os.path.realpath(os.sys.executable) in line


def test_other_failures_name_the_step_and_point_to_doctor(sysctls: Path) -> None:
    line = userns.diagnose("unshare(CLONE_NEWUSER)", OSError(errno.EINVAL, "Invalid argument"))
    assert "unshare(CLONE_NEWUSER): Invalid argument" in line and userns.DOCTOR in line
    assert "is reached" in userns.diagnose("unshare", OSError(errno.ENOSPC, "No space"))


# -- which overlay ---------------------------------------------------------------------------

def test_the_kernels_overlay_from_5_11_else_fuse_overlayfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """overlayfs.rst "Permission model" / kernel commit 2d2f2d7322ff ("ovl: user xattr",
    5.11): before it, fuse-overlayfs (podman's ``mount_program``) mounts rootless roots;
    without it, one fix-it line."""
    monkeypatch.delenv("NSBOX_OVERLAY", raising=False)
    found = partial(userns.overlay_helper, which=lambda name: f"/usr/bin/{name}")
    assert found("6.1.0-18-amd64") is None and found("5.11.0") is None
    assert found("5.10.0-28-amd64") == "/usr/bin/fuse-overlayfs"
    assert found("4.18.0-513.el8.x86_64") == "/usr/bin/fuse-overlayfs"
    with pytest.raises(userns.UsernsError, match="install fuse-overlayfs"):
        userns.overlay_helper("5.4.0", which=lambda name: None)
    monkeypatch.setenv("NSBOX_OVERLAY", "fuse-overlayfs")
    assert found("6.18.0") == "/usr/bin/fuse-overlayfs"
    monkeypatch.setenv("NSBOX_OVERLAY", "kernel")
    assert found("5.4.0") is None
    monkeypatch.setenv("NSBOX_OVERLAY", "aufs")
    with pytest.raises(userns.UsernsError, match="use kernel or fuse-overlayfs"):
        found("6.1.0")


def test_rootless_overlay_options_add_userxattr() -> None:
    """containerd/moby ``overlayutils.NeedsUserXAttr``: a mount in a user namespace needs
    ``userxattr`` on 5.11+ kernels."""
    opts = plan.overlay_options(["/l"], "/u", "/w", userxattr=True)
    assert opts == "lowerdir=/l,upperdir=/u,workdir=/w,userxattr"


def test_rootless_devices_are_the_hosts_bound_not_made() -> None:
    """bubblewrap ``SETUP_MOUNT_DEV``: the nodes of ``/dev`` are bound from the host's
    (``create_file`` then a bind), since ``mknod`` of a device needs CAP_MKNOD in the
    initial user namespace; with the host's network, ``/sys`` is bound, not mounted."""
    ops = plan.mount_ops([], rootless=True, host_network=True)
    devices = [op for op in ops if op.dest.startswith("/dev/") and op.kind in ("device", "mknod")]
    assert {op.kind for op in devices} == {"device"}
    assert {op.dest: op.source for op in devices}["/dev/null"] == "/dev/null"
    sys_ops = [op for op in ops if op.dest == "/sys"]
    assert [op.kind for op in sys_ops] == ["bind"]
    assert [op.kind for op in plan.mount_ops([], rootless=True) if op.dest == "/sys"] == ["mount"]


# -- the host's root in a rootless box -------------------------------------------------------

def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("usr/bin", "etc", "var/lib", "opt", "home/alice", "proc", "srv"):
        (root / d).mkdir(parents=True)
    (root / "usr/bin/tool").write_text("x")
    (root / "bin").symlink_to("usr/bin")
    return root


def test_the_hosts_os_directories_become_overlays_of_their_own(tmp_path: Path) -> None:
    """The kernel's ``clone_private_mount`` refuses a lower layer with locked mounts below
    it ("overlayfs: failed to clone lowerpath"), and in a user namespace every mount below
    the host's ``/`` is locked (mount_namespaces(7)); each OS directory is its own overlay,
    the layers above the host's adding theirs, a directory with mounts below bound."""
    root = fake_root(tmp_path)
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "opt").mkdir()
    os.setxattr(layer / "opt", userns.overlay_xattr("opaque"), b"y")
    (layer / "srv").write_text("not a directory any more")
    host = plan.split_host_root([str(root), str(layer)], mounts=[str(root / "var/lib")],
                                root=str(root))
    assert dict(host.overlays) == {"etc": (str(root / "etc"), str(layer / "etc")),
                                   "usr": (str(root / "usr"),)}
    assert host.binds == ("var",)  # /var has a mount below it: bound read-only
    # opt: an opaque directory of the layer hides the host's; srv: replaced by a file;
    # proc: mounted in every box; home: not an OS directory (masked)
    assert not {"opt", "srv", "proc", "home"} & set(dict(host.overlays))


def test_the_host_top_holds_the_links_and_the_overlays_uppers(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    dirs = plan.BoxDirs(str(tmp_path / "box"))
    os.makedirs(dirs.upper)
    host = plan.split_host_root([str(root)], mounts=[], root=str(root))
    plan.write_host_top(dirs, host, root=str(root))
    top = Path(dirs.host_top)
    assert os.readlink(top / "bin") == "usr/bin"
    assert {p.name for p in top.iterdir()} == {"bin", "usr", "etc", "var", "opt", "home",
                                               "proc", "srv"}
    assert not any((top / "usr").iterdir())  # what shows there is the overlay's
    assert (Path(dirs.upper) / "usr").is_dir() and Path(dirs.host_work("usr")).is_dir()
    ops = plan.host_root_ops(dirs, host, privileged=False)
    usr = next(op for op in ops if op.dest == "/usr")
    assert usr.fstype == "overlay" and usr.data is not None
    assert usr.data.endswith(f"upperdir={dirs.upper}/usr,workdir={dirs.host_work('usr')},"
                             f"userxattr")


def test_fuse_overlayfs_markers_become_the_kernels_form(tmp_path: Path) -> None:
    """fuse-overlayfs (main.c ``set_fd_opaque``, ``create_whiteout``) writes
    ``.wh..wh..opq`` beside its opaque xattr and ``.wh.NAME`` files where it cannot mknod;
    a commit's layer holds the overlay form (opaque xattr, 0:0 devices), as the OCI image
    spec's layer.md pairs the two forms."""
    from pytest_nsbox.images import layers
    from pytest_nsbox.overlay.view import is_opaque

    src, dst = tmp_path / "upper", tmp_path / "layer"
    (src / "d").mkdir(parents=True)
    (src / "d" / ".wh..wh..opq").write_text("")
    (src / "d" / "kept").write_text("k")
    (src / ".wh.gone").write_text("")
    dst.mkdir()
    layers.copy_tree(str(src), str(dst))
    assert sorted(os.listdir(dst / "d")) == ["kept"]
    assert is_opaque(str(dst / "d"))
    st = os.lstat(dst / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_fuse_markers_leave_a_docker_diff(tmp_path: Path) -> None:
    """``docker diff`` reports no marker: ``.wh..wh..opq`` goes, ``.wh.NAME`` is ``D NAME``."""
    from pytest_nsbox.model.results import Change
    from pytest_nsbox.runtime.box import fuse_markers

    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (image / "etc" / "motd").write_text("hi")
    got = fuse_markers([Change("/etc", "C"), Change("/etc/.wh.motd", "A"),
                        Change("/opt", "A"), Change("/opt/.wh..wh..opq", "A"),
                        Change("/etc/.wh.never-there", "A")], [str(image)])
    assert got == [Change("/etc", "C"), Change("/etc/motd", "D"), Change("/opt", "A")]


# -- per-user directories ------------------------------------------------------------------------

@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(userns, "_rootless", (os.getpid(), True))
    for name in ("NSBOX_STORE", "NSBOX_RUN", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)


def test_a_normal_users_store_and_run_dir_are_their_own(as_user: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """XDG base directory spec (and rootless podman's ``~/.local/share/containers``,
    BuildKit's ``~/.local/share/buildkit`` and ``$XDG_RUNTIME_DIR``): the store in
    ``$XDG_DATA_HOME``, else ``~/.local/share``; the run dir in ``$XDG_RUNTIME_DIR``."""
    from pytest_nsbox.state import StateDirs

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    runtime = tmp_path / "xdg-run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    dirs = StateDirs.default()
    assert dirs.store == str(tmp_path / "home/.local/share/nsbox")
    assert dirs.run == str(runtime / "nsbox")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/run")  # the spec: ignore a relative one
    dirs = StateDirs.default()
    assert dirs.store == str(tmp_path / "data/nsbox")
    assert dirs.run.endswith(f"nsbox-{os.geteuid()}")
    assert dirs.run.startswith(("/dev/shm/", "/tmp/"))


def test_a_run_dir_in_a_shared_place_must_be_the_users_alone(tmp_path: Path) -> None:
    """A directory in ``/tmp`` someone else made (or a symlink) must not hold our layers:
    refused with the fix (``NSBOX_RUN``)."""
    from pytest_nsbox.errors import HostNotSupported
    from pytest_nsbox.state import private_dir

    private_dir(str(tmp_path / "mine"))
    assert stat.S_IMODE(os.stat(tmp_path / "mine").st_mode) == 0o700
    private_dir(str(tmp_path / "mine"))  # again: it is ours
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    with pytest.raises(HostNotSupported, match="NSBOX_RUN"):
        private_dir(str(tmp_path / "open"))
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    with pytest.raises(HostNotSupported, match="symlink"):
        private_dir(str(tmp_path / "link"))


# -- the agent's wire -------------------------------------------------------------------------

def test_the_agent_runs_only_this_packages_functions() -> None:
    """multiprocessing-style pickled calls, restricted as pickle's docs ("Restricting
    Globals", ``Unpickler.find_class``) show: a call naming ``os.system`` is refused."""
    evil = pickle.dumps(("x", agent.KEEP, partial(os.system, "true")))
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        agent.loads(evil, [], restricted=True)
    ok = pickle.dumps(("x", agent.KEEP, partial(plan.overlay_options, ["/l"], "/u", "/w")))
    what, netns, fn = agent.loads(ok, [], restricted=True)
    assert fn() == "lowerdir=/l,upperdir=/u,workdir=/w"


def test_sockets_and_fds_travel_as_descriptors() -> None:
    """SCM_RIGHTS (unix(7)): a socket in a result arrives as a socket of its own."""
    from pytest_nsbox.network.netns import Fd

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left, right = socket.socketpair()
    try:
        sent: list[socket.socket | Fd] = []
        agent.send(a, (True, right, Fd(left.fileno())), held=sent)
        assert sent == [right, Fd(left.fileno())] and sent[0] is right
        data, fds = agent.receive(b)
        ok, sock, fd = agent.loads(data, fds, restricted=False)
        assert ok and isinstance(sock, socket.socket) and isinstance(fd, Fd)
        assert sock.fileno() not in (right.fileno(), left.fileno())
        sock.sendall(b"ping")
        assert left.recv(4) == b"ping"
        sock.close()
        os.close(fd)
    finally:
        for s in (a, b, left, right):
            s.close()


def test_the_agent_closes_each_descriptor_once_through_its_holder() -> None:
    """A socket that travelled is closed through its own object: closing its number
    behind the object's back let the object's finalizer close that number again later,
    when another agent thread had been given it (a private network's setup then failed
    with EBADF after a test had used ``connect``)."""
    from pytest_nsbox.network.netns import Fd

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left, right = socket.socketpair()
    spare_r, spare_w = os.pipe()
    try:
        agent.send(a, ("call", agent.KEEP, partial(plan.overlay_options, ["/l"], "/u", "/w"),
                       right, Fd(spare_r)))
        data, fds = agent.receive(b)
        (what, _, _, sock, fd), holders = agent.loads_owned(data, fds, restricted=True)
        assert what == "call" and holders[0] is sock and holders[1] == fd
        agent.release(holders)
        assert sock.fileno() == -1  # closed through the object: its finalizer does nothing
        reused = os.open("/dev/null", os.O_RDONLY)  # may take a number just freed
        try:
            del sock
            import gc
            gc.collect()
            os.fstat(reused)  # still open: nothing closed it a second time
        finally:
            os.close(reused)
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        for s in (a, b, left, right):
            s.close()
        for n in (spare_r, spare_w):
            try:
                os.close(n)
            except OSError:
                pass


def test_a_call_that_does_not_unpickle_closes_what_came_with_it() -> None:
    """A refused call's descriptors are closed, and only once."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left, right = socket.socketpair()
    try:
        agent.send(a, ("x", agent.KEEP, right, partial(os.system, "true")))
        data, fds = agent.receive(b)
        with pytest.raises(pickle.UnpicklingError):
            agent.loads_owned(data, fds, restricted=True)
        with pytest.raises(OSError):
            os.fstat(fds[0])
    finally:
        for s in (a, b, left, right):
            s.close()


def test_every_shaping_plan_reaches_the_agent() -> None:
    """A rootless owner's network calls carry the shaping plans (tbf and netem qdiscs,
    with exact ``Fraction``s for loss and burst) to the agent, whose restricted
    unpickler must rebuild them all: ``loss`` once failed there ("not
    fractions.Fraction"), found by the VM job's rootless phase."""
    from pytest_nsbox.model.spec import BoxSpec
    from pytest_nsbox.network import links, shaping

    spec = BoxSpec.from_kwargs({"image": "busybox", "network": "private", "rate": "1mbit",
                                "latency": "50ms", "jitter": "10ms", "loss": "0.5%"},
                               source="test")
    box_plan, switch_plan = shaping.box_side(spec), shaping.switch_side(spec)
    assert box_plan and switch_plan
    for fn in (partial(links.setup_box, "10.0.0.2", 24, "10.0.0.1", box_plan, "b"),
               partial(links.add_port, "nsbx", 3, switch_plan, "b")):
        what, netns, back = agent.loads(pickle.dumps(("x", agent.KEEP, fn), protocol=5), [],
                                        restricted=True)
        assert back.args == fn.args and back.func is fn.func
