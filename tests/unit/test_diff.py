"""overlay.diff.changes: ``docker diff`` over an overlay upper directory.

Most tests lay out image layers and an upper directory by hand in tmp_path, the way overlayfs
stores them: a deletion is a 0:0 character device (a whiteout), a directory that replaced
one of the image's carries ``trusted.overlay.opaque=y``. Both need root. The last tests let
the kernel write the upper directory (a real overlay mount inside a private mount namespace)
so the hand-made layouts are checked against what overlayfs really does.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_nsbox
from pytest_nsbox.overlay.diff import changes
from pytest_nsbox.overlay.view import is_opaque, is_whiteout
from pytest_nsbox.model.results import Change

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="whiteouts and trusted.* xattrs need root")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(pytest_nsbox.__file__)))


def put(root: Path, rel: str, text: str = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def whiteout(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    return path


def opaque(root: Path, rel: str) -> Path:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, "trusted.overlay.opaque", b"y")
    return path


def diff(upper: Path, *layers: Path) -> list[str]:
    """changes() as ``docker diff`` prints it, e.g. ``["C /etc", "A /etc/x"]``."""
    return [str(c) for c in changes(str(upper), [str(layer) for layer in layers])]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """One image layer: a small OS tree."""
    layer = tmp_path / "layer0"
    put(layer, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    put(layer, "etc/group", "root:x:0:\n")
    put(layer, "etc/os-release", "ID=test\n")
    put(layer, "usr/share/doc/README", "docs\n")
    put(layer, "usr/share/doc/LICENSE", "MIT\n")
    put(layer, "bin/sh", "#!fake\n")
    (layer / "tmp").mkdir()
    return layer


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    path = tmp_path / "upper"
    path.mkdir()
    return path


# -- the layout helpers themselves ------------------------------------------------------------

def test_whiteout_and_opaque_are_recognised(tmp_path: Path) -> None:
    assert is_whiteout(os.lstat(whiteout(tmp_path, "gone")))
    assert not is_whiteout(os.lstat(put(tmp_path, "file")))
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert not is_whiteout(os.lstat(tmp_path / "null"))
    assert is_opaque(str(opaque(tmp_path, "opq")))
    (tmp_path / "plain").mkdir()
    assert not is_opaque(str(tmp_path / "plain"))


# -- single changes ---------------------------------------------------------------------------

def test_nothing_changed(image: Path, upper: Path) -> None:
    assert diff(upper, image) == []


def test_new_file_in_existing_dir(image: Path, upper: Path) -> None:
    put(upper, "etc/new.conf", "x")
    assert diff(upper, image) == ["C /etc", "A /etc/new.conf"]


def test_new_file_at_the_root_reports_no_root_dir(image: Path, upper: Path) -> None:
    put(upper, "hello", "x")
    assert diff(upper, image) == ["A /hello"]


def test_modified_file(image: Path, upper: Path) -> None:
    put(upper, "etc/passwd", "root:x:0:0::/root:/bin/bash\n")
    assert diff(upper, image) == ["C /etc", "C /etc/passwd"]


def test_modified_file_deep_marks_every_image_dir_above_it(image: Path, upper: Path) -> None:
    put(upper, "usr/share/doc/README", "changed")
    assert diff(upper, image) == ["C /usr", "C /usr/share", "C /usr/share/doc",
                                  "C /usr/share/doc/README"]


def test_deleted_file(image: Path, upper: Path) -> None:
    whiteout(upper, "etc/os-release")
    assert diff(upper, image) == ["C /etc", "D /etc/os-release"]


def test_deleted_dir_is_one_delete(image: Path, upper: Path) -> None:
    (upper / "usr").mkdir()
    whiteout(upper, "usr/share")
    assert diff(upper, image) == ["C /usr", "D /usr/share"]


def test_whiteout_of_a_path_not_in_the_image_is_not_reported(image: Path, upper: Path) -> None:
    whiteout(upper, "etc/never-existed")
    whiteout(upper, "nowhere")
    assert diff(upper, image) == []


def test_new_dir_with_children_is_all_added_without_changes(image: Path, upper: Path) -> None:
    put(upper, "srv/app/data/x.db", "db")
    put(upper, "srv/app/run.sh", "#!/bin/sh")
    (upper / "srv/app/empty").mkdir()
    assert diff(upper, image) == ["A /srv", "A /srv/app", "A /srv/app/data",
                                  "A /srv/app/data/x.db", "A /srv/app/empty",
                                  "A /srv/app/run.sh"]


def test_whiteout_inside_a_new_dir_is_not_reported(image: Path, upper: Path) -> None:
    put(upper, "srv/kept", "k")
    whiteout(upper, "srv/gone")
    assert diff(upper, image) == ["A /srv", "A /srv/kept"]


def test_new_empty_dir(image: Path, upper: Path) -> None:
    (upper / "tmp/scratch").mkdir(parents=True)
    assert diff(upper, image) == ["C /tmp", "A /tmp/scratch"]


def test_copied_up_dir_without_changes_is_not_reported(image: Path, upper: Path) -> None:
    """overlayfs copies parent dirs up (e.g. after a chmod of a child); alone they are no C."""
    (upper / "usr/share").mkdir(parents=True)
    assert diff(upper, image) == []


def test_new_symlink_is_added_and_not_followed(image: Path, upper: Path) -> None:
    (upper / "etc").mkdir()
    os.symlink("/etc/passwd", upper / "etc/link")
    os.symlink("/nonexistent/dir", upper / "etc/dangling")
    assert diff(upper, image) == ["C /etc", "A /etc/dangling", "A /etc/link"]


def test_file_replaced_by_dir(image: Path, upper: Path) -> None:
    """bin/sh was a file in the image; in upper it is now a directory (opaque, as overlay
    makes it), so it changed and its child is new."""
    opaque(upper, "bin/sh")
    put(upper, "bin/sh/inner", "x")
    assert diff(upper, image) == ["C /bin", "C /bin/sh", "A /bin/sh/inner"]


# -- opaque directories -----------------------------------------------------------------------

def test_opaque_dir_replacing_an_image_dir(image: Path, upper: Path) -> None:
    """``rm -rf /usr/share/doc; mkdir /usr/share/doc; echo > /usr/share/doc/NEW``."""
    opaque(upper, "usr/share/doc")
    put(upper, "usr/share/doc/NEW", "new")
    assert diff(upper, image) == ["C /usr", "C /usr/share", "C /usr/share/doc",
                                  "A /usr/share/doc/NEW"]


def test_empty_opaque_dir_replacing_an_image_dir_is_a_change(image: Path, upper: Path) -> None:
    opaque(upper, "usr/share/doc")
    assert diff(upper, image) == ["C /usr", "C /usr/share", "C /usr/share/doc"]


def test_opaque_dir_that_is_new_is_added(image: Path, upper: Path) -> None:
    opaque(upper, "opt/new")
    put(upper, "opt/new/f", "f")
    assert diff(upper, image) == ["A /opt", "A /opt/new", "A /opt/new/f"]


def test_opaque_dir_in_a_lower_layer_hides_what_is_below(tmp_path: Path, image: Path,
                                                         upper: Path) -> None:
    """Layer 1 replaced /usr/share/doc: README of layer 0 is gone, so writing it is an add."""
    layer1 = tmp_path / "layer1"
    opaque(layer1, "usr/share/doc")
    put(layer1, "usr/share/doc/LICENSE", "GPL\n")
    put(upper, "usr/share/doc/README", "back")
    put(upper, "usr/share/doc/LICENSE", "BSD")
    assert diff(upper, image, layer1) == ["C /usr", "C /usr/share", "C /usr/share/doc",
                                          "C /usr/share/doc/LICENSE", "A /usr/share/doc/README"]


def test_whiteout_inside_an_opaque_lower_dir_means_absent(tmp_path: Path, image: Path,
                                                          upper: Path) -> None:
    """Layer 1: /usr/share/doc is opaque and holds a whiteout for README. README is absent
    from the image, so re-creating it is an add and deleting it again is nothing."""
    layer1 = tmp_path / "layer1"
    opaque(layer1, "usr/share/doc")
    whiteout(layer1, "usr/share/doc/README")
    put(upper, "usr/share/doc/README", "new")
    whiteout(upper, "usr/share/doc/LICENSE")
    assert diff(upper, image, layer1) == ["C /usr", "C /usr/share", "C /usr/share/doc",
                                          "A /usr/share/doc/README"]


# -- several layers ---------------------------------------------------------------------------

def test_file_deleted_in_a_middle_layer_and_recreated_is_added(tmp_path: Path, image: Path,
                                                               upper: Path) -> None:
    middle, top = tmp_path / "middle", tmp_path / "top"
    whiteout(middle, "etc/os-release")
    put(top, "etc/motd", "hi")
    put(upper, "etc/os-release", "ID=again\n")
    assert diff(upper, image, middle, top) == ["C /etc", "A /etc/os-release"]


def test_whiteout_of_a_file_deleted_in_a_middle_layer_is_not_reported(
        tmp_path: Path, image: Path, upper: Path) -> None:
    middle = tmp_path / "middle"
    whiteout(middle, "etc/os-release")
    whiteout(upper, "etc/os-release")
    assert diff(upper, image, middle) == []


def test_file_added_by_a_higher_layer_then_modified_is_changed(tmp_path: Path, image: Path,
                                                               upper: Path) -> None:
    top = tmp_path / "top"
    put(top, "opt/tool/config", "a")
    put(upper, "opt/tool/config", "b")
    assert diff(upper, image, top) == ["C /opt", "C /opt/tool", "C /opt/tool/config"]


def test_file_that_replaced_a_lower_dir_hides_its_children(tmp_path: Path, image: Path,
                                                           upper: Path) -> None:
    """Layer 1 made /usr/share a plain file: layer 0's /usr/share/doc is gone from the image."""
    top = tmp_path / "top"
    put(top, "usr/share", "now a file")
    whiteout(upper, "usr/share")
    assert diff(upper, image, top) == ["C /usr", "D /usr/share"]
    os.unlink(upper / "usr/share")
    opaque(upper, "usr/share")
    put(upper, "usr/share/doc", "a file where layer 0 had a dir")
    assert diff(upper, image, top) == ["C /usr", "C /usr/share", "A /usr/share/doc"]


# -- the init layer ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hosts", "hostname", "resolv.conf"])
def test_init_layer_files_are_never_reported(image: Path, upper: Path, name: str) -> None:
    put(upper, f"etc/{name}", "edited by the box")
    assert diff(upper, image) == []


def test_init_layer_files_do_not_hide_real_changes_beside_them(image: Path,
                                                               upper: Path) -> None:
    for name in ("hosts", "hostname", "resolv.conf"):
        put(upper, f"etc/{name}", "edited")
    put(upper, "etc/group", "root:x:0:root\n")
    assert diff(upper, image) == ["C /etc", "C /etc/group"]


def test_init_layer_names_elsewhere_are_ordinary_files(image: Path, upper: Path) -> None:
    put(upper, "tmp/etc/hosts", "mine")
    assert diff(upper, image) == ["C /tmp", "A /tmp/etc", "A /tmp/etc/hosts"]


def test_init_layer_files_on_an_image_without_etc(tmp_path: Path, upper: Path) -> None:
    """``scratch``-like image: /etc exists only in the init layer. ``echo >> /etc/hosts``
    copies up /etc and /etc/hosts; neither is a change the box made to its image."""
    bare = tmp_path / "bare"
    put(bare, "app", "binary")
    put(upper, "etc/hosts", "edited")
    assert diff(upper, bare) == []


# -- the CONTRACT.md example ------------------------------------------------------------------

def test_contract_example(image: Path, upper: Path) -> None:
    """``touch /tmp/a; rm /etc/passwd; echo x >> /etc/group``."""
    put(upper, "tmp/a")
    whiteout(upper, "etc/passwd")
    put(upper, "etc/group", "root:x:0:\nx\n")
    assert changes(str(upper), [str(image)]) == [
        Change(path="/etc", kind="C"),
        Change(path="/etc/group", kind="C"),
        Change(path="/etc/passwd", kind="D"),
        Change(path="/tmp", kind="C"),
        Change(path="/tmp/a", kind="A"),
    ]


def test_changes_are_sorted_by_path(image: Path, upper: Path) -> None:
    for rel in ("tmp/z", "tmp/a", "etc/b", "bin/new"):
        put(upper, rel)
    result = changes(str(upper), [str(image)])
    assert [c.path for c in result] == sorted(c.path for c in result)
    assert [c.path for c in result] == ["/bin", "/bin/new", "/etc", "/etc/b", "/tmp",
                                        "/tmp/a", "/tmp/z"]


def test_changes_accepts_a_tuple_of_layers(image: Path, upper: Path) -> None:
    put(upper, "etc/x")
    assert changes(str(upper), (str(image),)) == changes(str(upper), [str(image)])


def test_changes_with_no_layers_reports_everything_added(upper: Path) -> None:
    put(upper, "etc/passwd")
    whiteout(upper, "gone")
    assert diff(upper) == ["A /etc", "A /etc/passwd"]


# -- against a real overlay mount -------------------------------------------------------------

OVERLAY_SCRIPT = """
import os, subprocess, sys
lower, upper, work, merged, commands = sys.argv[1:]
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}", merged], check=True)
done = subprocess.run(["sh", "-ec", commands], cwd=merged)
sys.exit(done.returncode)
"""


def overlay_run(tmp_path: Path, lower: Path, commands: str) -> Path:
    """Run shell COMMANDS in the merged dir of a real overlay over LOWER; return upper."""
    upper, work, merged = tmp_path / "kupper", tmp_path / "kwork", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", OVERLAY_SCRIPT,
         str(lower), str(upper), str(work), str(merged), commands],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert os.listdir(merged) == [], "the overlay must have died with its namespace"
    return upper


@pytest.mark.parametrize(("commands", "expected"), [
    pytest.param("touch tmp/a; rm etc/passwd; echo x >> etc/group",
                 ["C /etc", "C /etc/group", "D /etc/passwd", "C /tmp", "A /tmp/a"],
                 id="contract-example"),
    pytest.param("rm -rf usr/share/doc; mkdir usr/share/doc; echo n > usr/share/doc/NEW",
                 ["C /usr", "C /usr/share", "C /usr/share/doc", "A /usr/share/doc/NEW"],
                 id="dir-replaced"),
    pytest.param("rm -rf usr/share",
                 ["C /usr", "D /usr/share"], id="dir-deleted"),
    pytest.param("mkdir -p srv/a/b; echo x > srv/a/b/f",
                 ["A /srv", "A /srv/a", "A /srv/a/b", "A /srv/a/b/f"], id="new-tree"),
    pytest.param("touch tmp/x; rm tmp/x", [], id="created-and-removed"),
    pytest.param("echo 1 > etc/hosts; echo box > etc/hostname; touch etc/resolv.conf",
                 [], id="init-files-only"),
    pytest.param("rm etc/os-release; echo back > etc/os-release",
                 ["C /etc", "C /etc/os-release"], id="deleted-and-recreated"),
])
def test_real_overlay_upper(tmp_path: Path, image: Path, commands: str,
                            expected: list[str]) -> None:
    for name in ("hosts", "hostname", "resolv.conf"):  # as if merged with an init layer
        put(image, f"etc/{name}", "init")
    upper = overlay_run(tmp_path, image, commands)
    assert diff(upper, image) == expected
