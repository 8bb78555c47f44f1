"""state: where nsbox keeps things, and remove_tree, which must never leave its filesystem.

The mount-crossing tests mount inside a child's private mount namespace (``unshare -m``):
the mounts die with the child and never reach the host's mount table.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_nsbox
from pytest_nsbox.state import DEFAULT_STORE, StateDirs, default_run_dir
from pytest_nsbox.kernel.fs import remove_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pytest_nsbox.__file__)))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespaces)")


def mount_count() -> int:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return sum(1 for _ in f)


# -- StateDirs --------------------------------------------------------------------------------

def test_default_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBOX_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("NSBOX_RUN", str(tmp_path / "run"))
    dirs = StateDirs.default()
    assert dirs == StateDirs(store=str(tmp_path / "store"), run=str(tmp_path / "run"))
    assert dirs.locks == str(tmp_path / "store/locks")
    assert dirs.boxes == str(tmp_path / "run/boxes")
    assert dirs.kept == str(tmp_path / "run/kept")


def test_default_arguments_beat_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBOX_STORE", "/env/store")
    monkeypatch.setenv("NSBOX_RUN", "/env/run")
    dirs = StateDirs.default(store=str(tmp_path / "s"), run=str(tmp_path / "r"))
    assert (dirs.store, dirs.run) == (str(tmp_path / "s"), str(tmp_path / "r"))


@pytest.mark.parametrize("value", [None, ""])
def test_default_without_the_environment(monkeypatch: pytest.MonkeyPatch,
                                         value: str | None) -> None:
    for name in ("NSBOX_STORE", "NSBOX_RUN"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    dirs = StateDirs.default()
    assert dirs.store == DEFAULT_STORE
    assert dirs.run == default_run_dir()
    assert "nsbox" in dirs.store and "nsbox" in dirs.run


def test_default_makes_relative_paths_absolute(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NSBOX_STORE", "rel/store")
    monkeypatch.setenv("NSBOX_RUN", "rel/run")
    dirs = StateDirs.default()
    assert (dirs.store, dirs.run) == (str(tmp_path / "rel/store"), str(tmp_path / "rel/run"))


def test_default_run_dir_is_on_tmpfs_when_dev_shm_is() -> None:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        shm_is_tmpfs = any(line.split()[4] == "/dev/shm"
                           and line.split(" - ")[1].split()[0] == "tmpfs" for line in f)
    assert default_run_dir() == ("/dev/shm/nsbox" if shm_is_tmpfs else "/run/nsbox")


# -- remove_tree: ordinary deletion -----------------------------------------------------------

def test_remove_tree_deletes_everything(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a/b/c").mkdir(parents=True)
    (tree / "a/b/c/deep.txt").write_text("deep")
    (tree / "top.txt").write_text("top")
    (tree / "a/empty").mkdir()
    os.mkfifo(tree / "a/fifo")
    os.symlink("a/b", tree / "relative-link")
    os.symlink("missing", tree / "a/dangling")
    remove_tree(str(tree))
    assert not os.path.lexists(tree)
    assert os.listdir(tmp_path) == []


def test_remove_tree_does_not_follow_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir/keep.txt").write_text("keep")
    (outside / "file.txt").write_text("keep too")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    os.symlink(outside / "dir", tree / "dir-link")
    os.symlink(outside / "file.txt", tree / "sub/file-link")
    os.symlink(outside, tree / "sub/outside-link")
    remove_tree(str(tree))
    assert not os.path.lexists(tree)
    assert (outside / "dir/keep.txt").read_text() == "keep"
    assert (outside / "file.txt").read_text() == "keep too"


def test_remove_tree_on_a_symlink_removes_only_the_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    link = tmp_path / "link"
    os.symlink(target, link)
    remove_tree(str(link))
    assert not os.path.lexists(link)
    assert (target / "keep.txt").read_text() == "keep"


def test_remove_tree_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    remove_tree(str(path))
    assert not os.path.lexists(path)


@needs_root
def test_remove_tree_deletes_unreadable_dirs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "locked/inner").mkdir(parents=True)
    (tree / "locked/inner/f").write_text("f")
    (tree / "locked/g").write_text("g")
    os.chmod(tree / "locked/inner", 0o000)
    os.chmod(tree / "locked", 0o000)
    os.chmod(tree, 0o000)
    remove_tree(str(tree))
    assert not os.path.lexists(tree)


def test_remove_tree_deletes_a_wide_dir(tmp_path: Path) -> None:
    """Entries are deleted while the directory is being read; none may be skipped."""
    tree = tmp_path / "wide"
    tree.mkdir()
    for i in range(3000):
        (tree / f"f{i:05d}").write_bytes(b"")
    for i in range(50):
        (tree / f"d{i:03d}").mkdir()
        (tree / f"d{i:03d}/x").write_bytes(b"")
    remove_tree(str(tree))
    assert not os.path.lexists(tree)


def test_remove_tree_of_a_missing_path_is_a_no_op(tmp_path: Path) -> None:
    remove_tree(str(tmp_path / "missing"))
    remove_tree(str(tmp_path / "missing/deeper"))
    assert os.listdir(tmp_path) == []


# -- remove_tree: never across a mount --------------------------------------------------------

CROSS_MOUNT_SCRIPT = """
import os, subprocess, sys
from pytest_nsbox.kernel.fs import remove_tree
tree, source, kind = sys.argv[1:]
if kind == "tmpfs":  # another filesystem, made here so it dies with this namespace
    subprocess.run(["mount", "-t", "tmpfs", "testtmpfs", source], check=True)
    os.makedirs(os.path.join(source, "sub"))
    with open(os.path.join(source, "sub", "sentinel"), "w") as f:
        f.write("keep")
subprocess.run(["mount", "--bind", source, os.path.join(tree, "a", "mnt")], check=True)
try:
    remove_tree(tree)
except OSError as exc:
    print("refused", exc.errno)
else:
    print("removed")
print("sentinel", os.path.exists(os.path.join(source, "sub", "sentinel")))
"""


def cross_mount_tree(tmp_path: Path) -> tuple[Path, Path]:
    tree, source = tmp_path / "tree", tmp_path / "source"
    (tree / "a/mnt").mkdir(parents=True)
    (tree / "a/before").write_text("x")
    (tree / "z-after").write_text("x")
    (source / "sub").mkdir(parents=True)
    (source / "sub/sentinel").write_text("keep")
    return tree, source


def run_cross_mount(tree: Path, source: Path, kind: str) -> list[str]:
    before = mount_count()
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c",
         CROSS_MOUNT_SCRIPT, str(tree), str(source), kind],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert mount_count() == before, "a mount leaked out of the private namespace"
    return done.stdout.splitlines()


@needs_root
def test_remove_tree_refuses_to_cross_into_another_filesystem(tmp_path: Path) -> None:
    tree, source = cross_mount_tree(tmp_path)
    assert run_cross_mount(tree, source, "tmpfs") == [f"refused {errno.EBUSY}", "sentinel True"]
    assert (tree / "a/mnt").is_dir()


@needs_root
def test_remove_tree_refuses_to_cross_a_bind_mount_of_the_same_filesystem(
        tmp_path: Path) -> None:
    tree, source = cross_mount_tree(tmp_path)
    out = run_cross_mount(tree, source, "bind")
    assert (source / "sub/sentinel").read_text() == "keep"
    assert out == [f"refused {errno.EBUSY}", "sentinel True"]
