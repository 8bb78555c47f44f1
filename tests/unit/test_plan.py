"""runtime.plan: the overlay option string, the init layer and the ordered mount list.

Everything here is plain data or plain files in tmp_path, except one test that hands
``overlay_options`` to a real overlayfs mount inside a private mount namespace (a child
``unshare -m``), so the layer order is checked against the kernel, not against itself.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pytest_nsbox
from pytest_nsbox.model.image import Image
from pytest_nsbox.runtime import plan
from pytest_nsbox.runtime.protocol import MountOp
from pytest_nsbox.runtime.plan import (
    DEVICES,
    BoxDirs,
    build_plan,
    host_binds,
    hosts_file,
    mount_ops,
    overlay_options,
    write_init_layer,
)
from pytest_nsbox.model.spec import Bind
from pytest_nsbox.kernel import libc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pytest_nsbox.__file__)))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")


def run_in_mount_ns(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run python SCRIPT in a child with its own private mount namespace.

    Whatever it mounts dies with it; the host's mount table never sees it.
    """
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script, *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": REPO})


def op_index(ops: list[MountOp], **match: Any) -> int:
    hits = [i for i, op in enumerate(ops) if all(getattr(op, k) == v for k, v in match.items())]
    assert len(hits) == 1, f"expected exactly one op matching {match}, got {hits}"
    return hits[0]


# -- overlay_options --------------------------------------------------------------------------

def test_overlay_options_puts_the_top_layer_first() -> None:
    opts = overlay_options(["/l/bottom", "/l/middle", "/l/top"], "/r/upper", "/r/work")
    assert opts == "lowerdir=/l/top:/l/middle:/l/bottom,upperdir=/r/upper,workdir=/r/work"


def test_overlay_options_single_layer() -> None:
    assert overlay_options(["/only"], "/u", "/w") == "lowerdir=/only,upperdir=/u,workdir=/w"


def test_overlay_options_does_not_reorder_its_argument() -> None:
    layers = ["/a", "/b"]
    overlay_options(layers, "/u", "/w")
    assert layers == ["/a", "/b"]


@pytest.mark.parametrize("bad", ["/l/a,b", "/l/a:b", "/l/a\\b", "/l/a\nb"])
@pytest.mark.parametrize("where", ["lower", "upper", "work"])
def test_overlay_options_refuses_separator_characters(bad: str, where: str) -> None:
    lower, upper, work = ["/l/ok"], "/r/upper", "/r/work"
    if where == "lower":
        lower = ["/l/ok", bad]
    elif where == "upper":
        upper = bad
    else:
        work = bad
    with pytest.raises(ValueError, match="overlay layer path"):
        overlay_options(lower, upper, work)


@needs_root
def test_overlay_options_stack_as_documented_on_a_real_overlay(tmp_path: Path) -> None:
    """The kernel shows the top layer's file where bottom and top both have one."""
    for name, text in (("bottom", "from bottom"), ("top", "from top")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "both").write_text(text)
        (tmp_path / name / f"only-{name}").write_text(name)
    for name in ("upper", "work", "merged"):
        (tmp_path / name).mkdir()
    opts = overlay_options([str(tmp_path / "bottom"), str(tmp_path / "top")],
                           str(tmp_path / "upper"), str(tmp_path / "work"))
    script = (
        "import subprocess, sys, os\n"
        "opts, merged = sys.argv[1:]\n"
        "subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o', opts, merged], check=True)\n"
        "print(open(os.path.join(merged, 'both')).read())\n"
        "print(sorted(os.listdir(merged)))\n"
    )
    done = run_in_mount_ns(script, opts, str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["from top", "['both', 'only-bottom', 'only-top']"]


# -- host_binds -------------------------------------------------------------------------------

@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sys.prefix and sys.base_prefix pointing at one directory in tmp_path."""
    prefix = tmp_path / "python"
    prefix.mkdir()
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setattr(sys, "base_prefix", str(prefix))
    return prefix


@pytest.fixture(autouse=True)
def no_package_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """host_binds also binds this checkout (editable install); the tests below fake a Python."""
    monkeypatch.setattr(plan, "PACKAGE_PARENT", None)


def test_host_binds_include_the_plugins_own_folder(fake_python: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(plan.__file__))))
    monkeypatch.setattr(plan, "PACKAGE_PARENT", here)
    assert Bind(source=os.path.realpath(here), target=os.path.realpath(here),
                readonly=True) in host_binds(None)


def test_host_binds_are_read_only_at_their_own_path(tmp_path: Path, fake_python: Path) -> None:
    rootdir = tmp_path / "project"
    rootdir.mkdir()
    assert host_binds(str(rootdir)) == [  # sorted by path
        Bind(source=str(rootdir), target=str(rootdir), readonly=True),
        Bind(source=str(fake_python), target=str(fake_python), readonly=True),
    ]


def test_host_binds_venv_and_base_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv, base = tmp_path / "venv", tmp_path / "base"
    venv.mkdir()
    base.mkdir()
    monkeypatch.setattr(sys, "prefix", str(venv))
    monkeypatch.setattr(sys, "base_prefix", str(base))
    assert [b.source for b in host_binds(None)] == [str(base), str(venv)]


@pytest.mark.parametrize("inner", ["rootdir", "python"])
def test_host_binds_drop_a_path_inside_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               inner: str) -> None:
    outer = tmp_path / "outer"
    nested = outer / "deeper" / "nested"
    nested.mkdir(parents=True)
    python, rootdir = (nested, outer) if inner == "python" else (outer, nested)
    monkeypatch.setattr(sys, "prefix", str(python))
    monkeypatch.setattr(sys, "base_prefix", str(python))
    assert host_binds(str(rootdir)) == [Bind(str(outer), str(outer), readonly=True)]


def test_host_binds_keep_siblings_sharing_a_name_prefix(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """/x/py is not inside /x/python: a string prefix is not a path prefix."""
    short, long_ = tmp_path / "py", tmp_path / "python"
    short.mkdir()
    long_.mkdir()
    monkeypatch.setattr(sys, "prefix", str(long_))
    monkeypatch.setattr(sys, "base_prefix", str(long_))
    assert [b.target for b in host_binds(str(short))] == [str(short), str(long_)]


def test_host_binds_never_bind_the_root(fake_python: Path) -> None:
    assert host_binds("/") == [Bind(str(fake_python), str(fake_python), readonly=True)]


def test_host_binds_drop_missing_paths_and_none(tmp_path: Path, fake_python: Path) -> None:
    assert host_binds(str(tmp_path / "missing")) == host_binds(None)
    assert host_binds(None) == [Bind(str(fake_python), str(fake_python), readonly=True)]


def test_host_binds_resolve_symlinks(tmp_path: Path, fake_python: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    binds = host_binds(str(tmp_path / "link"))
    assert Bind(str(real), str(real), readonly=True) in binds
    assert len(binds) == 2


def test_host_binds_a_rootdir_that_is_the_python_prefix_once(fake_python: Path) -> None:
    assert host_binds(str(fake_python)) == [Bind(str(fake_python), str(fake_python), True)]


# -- hosts_file -------------------------------------------------------------------------------

def test_hosts_file_names_localhost_and_the_box() -> None:
    lines = hosts_file("box1").splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "127.0.1.1\tbox1" in lines
    assert any(line.startswith("::1\t") and "localhost" in line.split() for line in lines)


def test_hosts_file_adds_peers_in_order_and_ends_with_newline() -> None:
    text = hosts_file("a", [("10.0.0.2", "b"), ("10.0.0.3", "c")])
    assert text.endswith("\n")
    assert text.splitlines()[-2:] == ["10.0.0.2\tb", "10.0.0.3\tc"]


# -- write_init_layer -------------------------------------------------------------------------

def test_write_init_layer_name_files(tmp_path: Path) -> None:
    dirs = BoxDirs(str(tmp_path / "box"))
    hosts = hosts_file("mybox")
    write_init_layer(dirs, "mybox", hosts, [])
    init = Path(dirs.init)
    assert (init / "etc/hostname").read_text() == "mybox\n"
    assert (init / "etc/hosts").read_text() == hosts
    try:
        host_resolv = Path("/etc/resolv.conf").read_bytes()
    except OSError:
        host_resolv = b""
    assert (init / "etc/resolv.conf").read_bytes() == host_resolv
    for d in ("proc", "dev", "sys"):
        assert (init / d).is_dir()
        assert list((init / d).iterdir()) == []


def test_write_init_layer_makes_mountpoints_for_binds(tmp_path: Path) -> None:
    src_dir = tmp_path / "src-dir"
    src_dir.mkdir()
    (src_dir / "content").write_text("not copied")
    src_file = tmp_path / "src-file"
    src_file.write_text("not copied either")
    dirs = BoxDirs(str(tmp_path / "box"))
    write_init_layer(dirs, "h", hosts_file("h"), [
        Bind(str(src_dir), "/data/deep/dir", readonly=True),
        Bind(str(src_file), "/opt/conf/file.ini"),
    ])
    init = Path(dirs.init)
    assert (init / "data/deep/dir").is_dir()
    assert list((init / "data/deep/dir").iterdir()) == []
    mountpoint = init / "opt/conf/file.ini"
    assert mountpoint.is_file() and not mountpoint.is_symlink()
    assert mountpoint.stat().st_size == 0


def test_write_init_layer_bind_onto_an_init_file_keeps_it(tmp_path: Path) -> None:
    """A file bound onto /etc/hostname must not truncate the init layer's own file."""
    src = tmp_path / "my-hostname"
    src.write_text("elsewhere\n")
    dirs = BoxDirs(str(tmp_path / "box"))
    write_init_layer(dirs, "h", hosts_file("h"), [Bind(str(src), "/etc/hostname")])
    assert Path(dirs.init, "etc/hostname").read_text() == "h\n"


def test_write_init_layer_writes_only_under_init(tmp_path: Path) -> None:
    dirs = BoxDirs(str(tmp_path / "box"))
    write_init_layer(dirs, "h", hosts_file("h"), [])
    assert os.listdir(dirs.base) == ["init"]


def test_box_dirs_layout() -> None:
    dirs = BoxDirs("/run/nsbox/boxes/abc")
    assert (dirs.upper, dirs.work, dirs.init, dirs.root) == (
        "/run/nsbox/boxes/abc/upper", "/run/nsbox/boxes/abc/work",
        "/run/nsbox/boxes/abc/init", "/run/nsbox/boxes/abc/root")


# -- mount_ops --------------------------------------------------------------------------------

def test_mount_ops_start_with_proc() -> None:
    ops = mount_ops([])
    assert ops[0].kind == "mount"
    assert (ops[0].dest, ops[0].fstype) == ("/proc", "proc")
    assert ops[0].flags & libc.MS_NOSUID and ops[0].flags & libc.MS_NOEXEC


def test_mount_ops_dev_tmpfs_comes_before_device_nodes() -> None:
    ops = mount_ops([])
    dev = op_index(ops, kind="mount", dest="/dev")
    assert ops[dev].fstype == "tmpfs"
    mknods = [i for i, op in enumerate(ops) if op.kind == "mknod"]
    assert sorted(ops[i].dest for i in mknods) == sorted(f"/dev/{n}" for n, _, _ in DEVICES)
    assert all(i > dev for i in mknods)
    symlinks = [i for i, op in enumerate(ops) if op.kind == "symlink"]
    assert symlinks and all(i > dev for i in symlinks)


@pytest.mark.parametrize(("name", "major", "minor"), [
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0)])
def test_mount_ops_device_nodes_are_the_oci_char_devices(name: str, major: int,
                                                         minor: int) -> None:
    ops = mount_ops([])
    op = ops[op_index(ops, kind="mknod", dest=f"/dev/{name}")]
    assert (op.major, op.minor) == (major, minor)
    assert op.mode == 0o20666  # S_IFCHR | rw-rw-rw-


def test_mount_ops_devpts_after_its_mountpoint() -> None:
    ops = mount_ops([])
    mkdir = op_index(ops, kind="mkdir", dest="/dev/pts")
    devpts = op_index(ops, kind="mount", dest="/dev/pts")
    assert op_index(ops, kind="mount", dest="/dev") < mkdir < devpts
    assert ops[devpts].fstype == "devpts"
    assert "newinstance" in str(ops[devpts].data).split(",")
    ptmx = ops[op_index(ops, kind="symlink", dest="/dev/ptmx")]
    assert ptmx.source == "pts/ptmx"  # a symlink's content


@pytest.mark.parametrize("target", ["/dev/shm", "/dev/mqueue"])
def test_mount_ops_dev_submounts_after_their_mkdir(target: str) -> None:
    ops = mount_ops([])
    assert op_index(ops, kind="mkdir", dest=target) < op_index(ops, kind="mount", dest=target)


def test_mount_ops_sysfs_is_read_only() -> None:
    ops = mount_ops([])
    sys_op = ops[op_index(ops, kind="mount", dest="/sys")]
    assert sys_op.fstype == "sysfs"
    assert sys_op.flags & libc.MS_RDONLY


def test_mount_ops_only_sysfs_is_read_only() -> None:
    read_only = [op.dest for op in mount_ops([])
                 if op.kind == "mount" and op.flags & libc.MS_RDONLY]
    assert read_only == ["/sys"]


def test_mount_ops_binds_come_last_parents_first_with_readonly_kept() -> None:
    binds = [Bind("/h/c", "/a/b/c", readonly=False), Bind("/h/x", "/x", readonly=True),
             Bind("/h/a", "/a", readonly=False), Bind("/h/ab", "/a/b", readonly=True)]
    ops = mount_ops(binds)
    bind_ops = [op for op in ops if op.kind == "bind"]
    assert [op.kind for op in ops[-4:]] == ["bind"] * 4
    targets = [op.dest for op in bind_ops]
    for parent, child in (("/a", "/a/b"), ("/a/b", "/a/b/c")):
        assert targets.index(parent) < targets.index(child)
    assert {op.dest: (op.source, bool(op.flags & libc.MS_RDONLY)) for op in bind_ops} == {
        "/a/b/c": ("/h/c", False), "/x": ("/h/x", True), "/a": ("/h/a", False),
        "/a/b": ("/h/ab", True)}


def test_mount_ops_without_binds_has_no_bind_op() -> None:
    assert [op for op in mount_ops([]) if op.kind == "bind"] == []


def test_mount_ops_does_not_reorder_its_argument() -> None:
    binds = [Bind("/h/c", "/a/b/c"), Bind("/h/a", "/a")]
    mount_ops(binds)
    assert [b.target for b in binds] == ["/a/b/c", "/a"]


# -- build_plan -------------------------------------------------------------------------------

def make_image(tmp_path: Path) -> Image:
    return Image(ref="test", id="0" * 64, layers=("l1", "l2"),
                 layer_dirs=(str(tmp_path / "l1"), str(tmp_path / "l2")))


@pytest.mark.parametrize(("network", "has_net"), [("none", True), ("private", True),
                                                  ("host", False)])
def test_build_plan_network_namespace(tmp_path: Path, network: str, has_net: bool) -> None:
    plan = build_plan(box_id="b1", hostname="h", image=make_image(tmp_path),
                      dirs=BoxDirs(str(tmp_path / "box")), binds=[], cgroup_procs=[],
                      network=network)
    assert ("net" in plan.namespaces) is has_net
    assert {"mnt", "uts", "ipc", "cgroup"} <= set(plan.namespaces)


def test_build_plan_stacks_the_init_layer_over_the_image(tmp_path: Path) -> None:
    dirs = BoxDirs(str(tmp_path / "box"))
    binds = [Bind("/h/a", "/a", readonly=True)]
    plan = build_plan(box_id="b1", hostname="h", image=make_image(tmp_path), dirs=dirs,
                      binds=binds, cgroup_procs=["/sys/fs/cgroup/nsbox/b1/cgroup.procs"],
                      network="none")
    assert plan.overlay == (f"lowerdir={dirs.init}:{tmp_path}/l2:{tmp_path}/l1,"
                               f"upperdir={dirs.upper},workdir={dirs.work}")
    assert plan.root == dirs.root
    assert (plan.box_id, plan.hostname) == ("b1", "h")
    assert plan.cgroup_procs == ("/sys/fs/cgroup/nsbox/b1/cgroup.procs",)
    assert plan.ops == tuple(mount_ops(binds))


def test_build_plan_refuses_an_unmountable_layer_path(tmp_path: Path) -> None:
    image = Image(ref="t", id="0" * 64, layers=("l",), layer_dirs=(str(tmp_path / "a:b"),))
    with pytest.raises(ValueError):
        build_plan(box_id="b", hostname="h", image=image, dirs=BoxDirs(str(tmp_path / "box")),
                   binds=[], cgroup_procs=[], network="none")
