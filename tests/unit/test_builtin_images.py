"""images.builtin: finding a static busybox, the busybox layer, and the host image's mask.

``find_busybox`` looks at $NSBOX_BUSYBOX, $PATH and a few fixed paths; to play a host with
no busybox (or only a dynamic one) the tests point PATH at tmp_path and let
``os.path.isfile`` see only files under tmp_path for the duration of the test.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_nsbox
from pytest_nsbox.errors import ImageError
from pytest_nsbox.images.builtin import (
    HOST_FRESH_DIRS,
    OPAQUE_XATTR,
    _is_static_elf,
    build_busybox,
    build_host_mask,
    busybox_key,
    find_busybox,
    host_mask_key,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pytest_nsbox.__file__)))
STATIC_BUSYBOX = "/bin/busybox"  # busybox-static is installed on the test hosts
DYNAMIC = "/bin/ls"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (trusted.* xattrs)")
needs_busybox = pytest.mark.skipif(not _is_static_elf(os.path.realpath(STATIC_BUSYBOX)),
                                   reason="no static /bin/busybox (install busybox-static)")


# -- _is_static_elf ---------------------------------------------------------------------------

@needs_busybox
def test_static_busybox_is_static() -> None:
    assert _is_static_elf(STATIC_BUSYBOX)


@pytest.mark.parametrize("path", [DYNAMIC, sys.executable])
def test_dynamic_binaries_are_not_static(path: str) -> None:
    assert not _is_static_elf(os.path.realpath(path))


@pytest.mark.parametrize("content", [b"#!/bin/sh\necho hi\n", b"", b"ELF\x7f" * 32,
                                     b"\x7fELF\x01" + b"\0" * 59])
def test_non_elf64_files_are_not_static(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    assert not _is_static_elf(str(path))


def test_missing_file_is_not_static(tmp_path: Path) -> None:
    assert not _is_static_elf(str(tmp_path / "missing"))


def test_a_directory_is_not_static(tmp_path: Path) -> None:
    assert not _is_static_elf(str(tmp_path))


@needs_busybox
@pytest.mark.parametrize("size", [4, 40, 64])
def test_truncated_elf_is_not_static(tmp_path: Path, size: int) -> None:
    """An interrupted download or install leaves the first bytes of a real binary."""
    path = tmp_path / "busybox"
    with open(STATIC_BUSYBOX, "rb") as f:
        path.write_bytes(f.read(size))
    assert not _is_static_elf(str(path))


# -- find_busybox -----------------------------------------------------------------------------

@pytest.fixture
def bare_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host whose only files are under tmp_path, with PATH=tmp_path/bin and no NSBOX_BUSYBOX."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_isfile = os.path.isfile
    prefix = str(tmp_path) + "/"

    def isfile(path: str | os.PathLike[str]) -> bool:
        return os.fspath(path).startswith(prefix) and real_isfile(path)

    monkeypatch.setattr(os.path, "isfile", isfile)  # what builtin.find_busybox uses
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("NSBOX_BUSYBOX", raising=False)
    return bin_dir


def copy_exe(src: str, dest: Path) -> Path:
    shutil.copy2(os.path.realpath(src), dest)
    return dest


def test_no_busybox_names_the_package(bare_host: Path) -> None:
    with pytest.raises(ImageError) as info:
        find_busybox()
    message = str(info.value)
    assert "busybox-static" in message
    assert "no busybox" in message
    assert message.startswith("image 'busybox'")


def test_only_a_dynamic_busybox(bare_host: Path) -> None:
    fake = copy_exe(DYNAMIC, bare_host / "busybox")
    with pytest.raises(ImageError) as info:
        find_busybox()
    message = str(info.value)
    assert "dynamically linked" in message
    assert str(fake) in message
    assert "busybox-static" in message


def test_only_a_dynamic_busybox_in_the_environment(bare_host: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake = copy_exe(DYNAMIC, tmp_path / "my-busybox")
    monkeypatch.setenv("NSBOX_BUSYBOX", str(fake))
    with pytest.raises(ImageError, match="dynamically linked"):
        find_busybox()


@needs_busybox
def test_static_busybox_on_path(bare_host: Path) -> None:
    found = copy_exe(STATIC_BUSYBOX, bare_host / "busybox")
    assert find_busybox() == str(found)


@needs_busybox
def test_environment_wins_over_path(bare_host: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    copy_exe(STATIC_BUSYBOX, bare_host / "busybox")
    mine = copy_exe(STATIC_BUSYBOX, tmp_path / "my-busybox")
    monkeypatch.setenv("NSBOX_BUSYBOX", str(mine))
    assert find_busybox() == str(mine)


@needs_busybox
def test_static_busybox_beats_a_dynamic_one(bare_host: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSBOX_BUSYBOX", str(copy_exe(DYNAMIC, tmp_path / "dyn")))
    static = copy_exe(STATIC_BUSYBOX, bare_host / "busybox")
    assert find_busybox() == str(static)


@needs_busybox
def test_a_symlinked_busybox_resolves_to_the_binary(bare_host: Path, tmp_path: Path) -> None:
    real = copy_exe(STATIC_BUSYBOX, tmp_path / "busybox.real")
    os.symlink(real, bare_host / "busybox")
    assert find_busybox() == str(real)


@needs_busybox
def test_find_busybox_on_this_host() -> None:
    found = find_busybox()
    assert os.path.isabs(found) and _is_static_elf(found)


@needs_busybox
def test_busybox_key_follows_the_binary(tmp_path: Path) -> None:
    a = copy_exe(STATIC_BUSYBOX, tmp_path / "a")
    b = copy_exe(STATIC_BUSYBOX, tmp_path / "b")
    assert busybox_key(str(a)) == busybox_key(str(b))
    with open(b, "ab") as f:
        f.write(b"\0")
    assert busybox_key(str(a)) != busybox_key(str(b))
    assert len(busybox_key(str(a))) == 64


# -- build_busybox ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _is_static_elf(os.path.realpath(STATIC_BUSYBOX)):
        pytest.skip("no static /bin/busybox (install busybox-static)")
    dest = tmp_path_factory.mktemp("busybox") / "rootfs"
    build_busybox(str(dest), os.path.realpath(STATIC_BUSYBOX))
    return dest


def test_busybox_binary_is_a_copy(busybox_root: Path) -> None:
    binary = busybox_root / "bin/busybox"
    assert binary.is_file() and not binary.is_symlink()
    assert os.access(binary, os.X_OK)
    with open(os.path.realpath(STATIC_BUSYBOX), "rb") as f:
        assert hashlib.sha256(binary.read_bytes()).digest() == hashlib.sha256(f.read()).digest()


@pytest.mark.parametrize("applet", ["bin/sh", "bin/ls", "sbin/ip", "usr/bin/awk"])
def test_applets_link_to_busybox(busybox_root: Path, applet: str) -> None:
    assert os.readlink(busybox_root / applet) == "/bin/busybox"


def test_every_listed_applet_is_linked(busybox_root: Path) -> None:
    listed = subprocess.run([os.path.realpath(STATIC_BUSYBOX), "--list-full"],
                            capture_output=True, text=True, check=True).stdout.split()
    missing = [rel for rel in listed
               if rel != "bin/busybox" and os.readlink(busybox_root / rel) != "/bin/busybox"]
    assert listed and missing == []


def test_passwd_and_group_have_root(busybox_root: Path) -> None:
    passwd = (busybox_root / "etc/passwd").read_text().splitlines()
    assert passwd[0].split(":")[:4] == ["root", "x", "0", "0"]
    assert (busybox_root / "etc/group").read_text().splitlines()[0].split(":")[:3] == [
        "root", "x", "0"]
    for name in ("etc/passwd", "etc/group"):
        assert stat.S_IMODE((busybox_root / name).stat().st_mode) == 0o644


@pytest.mark.parametrize(("rel", "mode"), [("tmp", 0o1777), ("root", 0o700), ("proc", 0o755),
                                           ("sys", 0o755), ("dev", 0o755)])
def test_busybox_dirs(busybox_root: Path, rel: str, mode: int) -> None:
    path = busybox_root / rel
    assert path.is_dir() and not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_busybox_tmp_is_empty(busybox_root: Path) -> None:
    assert list((busybox_root / "tmp").iterdir()) == []


@needs_root
def test_busybox_root_runs_a_shell(busybox_root: Path) -> None:
    """The layer alone is a working root: its /bin/sh runs its /bin/ls."""
    done = subprocess.run(["chroot", str(busybox_root), "/bin/sh", "-c",
                           "ls /sbin/ip && grep ^root: /etc/passwd"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["/sbin/ip", "root:x:0:0:root:/root:/bin/sh"]


def test_build_busybox_with_a_binary_that_is_not_busybox(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="busybox-static"):
        build_busybox(str(tmp_path / "rootfs"), shutil.which("false") or "/bin/false")


# -- host_mask_key / build_host_mask ----------------------------------------------------------

@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A host root: OS dirs, personal dirs, a /bin symlink as usrmerge makes it, a file."""
    root = tmp_path / "root"
    for d in ("usr/bin", "etc", "var/lib", "opt", "proc", "sys", "dev", "home/alice", "work",
              "data", "tmp", "root"):
        (root / d).mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    (root / ".dockerenv").write_text("")
    return root


def test_host_mask_hides_non_os_dirs_and_fresh_dirs(fake_root: Path) -> None:
    _key, masked = host_mask_key(str(fake_root))
    assert masked == ["data", "home", "root", "run", "tmp", "var/tmp", "work"]


def test_host_mask_always_masks_the_fresh_dirs(tmp_path: Path) -> None:
    (tmp_path / "usr").mkdir()
    _key, masked = host_mask_key(str(tmp_path))
    assert masked == sorted(HOST_FRESH_DIRS)


def test_host_mask_key_is_stable(fake_root: Path) -> None:
    assert host_mask_key(str(fake_root)) == host_mask_key(str(fake_root))


@pytest.mark.parametrize("change", ["new-dir", "removed-dir"])
def test_host_mask_key_changes_with_the_hidden_set(fake_root: Path, change: str) -> None:
    key, _ = host_mask_key(str(fake_root))
    if change == "new-dir":
        (fake_root / "mnt").mkdir()
    else:
        (fake_root / "data").rmdir()
    new_key, _ = host_mask_key(str(fake_root))
    assert new_key != key


@pytest.mark.parametrize("change", ["os-dir", "file", "symlink", "fresh-dir", "content"])
def test_host_mask_key_ignores_what_is_not_hidden(fake_root: Path, change: str) -> None:
    key, masked = host_mask_key(str(fake_root))
    if change == "os-dir":
        (fake_root / "srv").mkdir()
    elif change == "file":
        (fake_root / "swapfile").write_text("")
    elif change == "symlink":
        os.symlink("usr/lib", fake_root / "lib")
    elif change == "fresh-dir":
        (fake_root / "run").mkdir()
    else:
        (fake_root / "work/new-file").write_text("x")
    assert host_mask_key(str(fake_root)) == (key, masked)


@needs_root
def test_build_host_mask_makes_opaque_empty_dirs(tmp_path: Path, fake_root: Path) -> None:
    _key, masked = host_mask_key(str(fake_root))
    dest = tmp_path / "mask"
    dest.mkdir()
    build_host_mask(str(dest), masked)
    for rel in masked:
        path = dest / rel
        assert path.is_dir() and list(path.iterdir()) == [], rel
        assert os.getxattr(path, OPAQUE_XATTR) == b"y", rel
    assert not os.path.lexists(dest / "usr")
    assert sorted(os.listdir(dest)) == sorted({rel.split("/")[0] for rel in masked})
    with pytest.raises(OSError):
        os.getxattr(dest / "var", OPAQUE_XATTR)  # only var/tmp is masked, not var


@needs_root
@pytest.mark.parametrize(("rel", "mode"), [("tmp", 0o1777), ("var/tmp", 0o1777),
                                           ("root", 0o700), ("home", 0o755), ("run", 0o755),
                                           ("work", 0o755)])
def test_build_host_mask_modes(tmp_path: Path, fake_root: Path, rel: str, mode: int) -> None:
    _key, masked = host_mask_key(str(fake_root))
    dest = tmp_path / "mask"
    build_host_mask(str(dest), masked)
    assert stat.S_IMODE((dest / rel).stat().st_mode) == mode


MASK_SCRIPT = """
import os, subprocess, sys
mask, host, upper, work, merged = sys.argv[1:]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={mask}:{host},upperdir={upper},workdir={work}", merged], check=True)
for rel in ("work", "home", "tmp", "var/tmp", "var", "usr/bin", "etc"):
    print(rel, sorted(os.listdir(os.path.join(merged, rel))))
"""


@needs_root
def test_host_mask_hides_host_dirs_on_a_real_overlay(tmp_path: Path, fake_root: Path) -> None:
    """The mask layer over a fake host root: personal dirs look empty, the OS shows through."""
    (fake_root / "work/secret").write_text("s")
    (fake_root / "home/alice/.ssh").mkdir()
    (fake_root / "tmp/old").write_text("o")
    (fake_root / "var/tmp").mkdir()
    (fake_root / "var/tmp/old").write_text("o")
    (fake_root / "usr/bin/tool").write_text("t")
    (fake_root / "etc/os-release").write_text("ID=x")
    _key, masked = host_mask_key(str(fake_root))
    mask = tmp_path / "mask"
    build_host_mask(str(mask), masked)
    dirs = [tmp_path / name for name in ("upper", "work", "merged")]
    for d in dirs:
        d.mkdir()
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", MASK_SCRIPT,
         str(mask), str(fake_root), *map(str, dirs)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "work []", "home []", "tmp []", "var/tmp []", "var ['lib', 'tmp']",
        "usr/bin ['tool']", "etc ['os-release']"]
