"""Box file methods take box paths as ``docker cp`` does: a relative path starts at ``/``.

Reference: Docker's ``docker container cp`` documentation ("The docker cp command assumes
container paths are relative to the container's / (root) directory. This means supplying the
initial forward slash is optional"), and moby's ``container.resolvePath``, which makes every
container path ``filepath.Join("/", path)`` (lexically cleaned, so ``..`` stops at ``/``)
with ``archive.PreserveTrailingDotOrSeparator`` keeping a trailing ``/``. The image's
WORKDIR plays no part; it is where commands start, not where paths start.
"""
from __future__ import annotations

import pytest

from pytest_nsbox import SpecError
from pytest_nsbox.runtime.box import _box_path

pytestmark = pytest.mark.sandbox(image="busybox")


def test_relative_paths_start_at_root_even_with_a_workdir(pytester: pytest.Pytester) -> None:
    """Issue 9 item 7's failing input: ``read_text("marker")`` in an image with
    ``WORKDIR /home/x`` read ``/home/x/marker``; docker cp reads ``/marker``. Every file
    method is checked against the same image, and commands still start in the WORKDIR
    (Docker's ``WorkingDir``)."""
    folder = pytester.path / "fixtures_images" / "withworkdir"
    folder.mkdir(parents=True)
    (folder / "Containerfile").write_text(
        "FROM busybox\n"
        "RUN mkdir -p /home/x && echo top > /marker && echo nested > /home/x/marker\n"
        "WORKDIR /home/x\n")
    pytester.makeini(f"[pytest]\nnsbox_store_dir = {pytester.path / 'store'}\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sandbox(image="withworkdir")
        def test_files(nsbox):
            assert nsbox.run("pwd; cat marker").stdout == "/home/x\\nnested\\n"
            assert nsbox.read_text("marker") == "top\\n"
            assert nsbox.read_bytes("marker") == b"top\\n"
            assert nsbox.read_text("home/x/marker") == "nested\\n"
            assert nsbox.exists("marker") and not nsbox.exists("nothing-here")
            assert nsbox.listdir("home/x") == ["marker"]
            assert nsbox.listdir(".") == nsbox.listdir("/")
            nsbox.write_text("written", "text")
            nsbox.write_bytes("home/x/bytes", b"\\x00\\xff")
            assert nsbox.run("cat /written").stdout == "text"
            assert nsbox.run(["od", "-An", "-tx1", "/home/x/bytes"]).stdout.split() == ["00", "ff"]
            assert not nsbox.exists("/home/x/written")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_dot_and_dotdot_are_resolved_from_root(nsbox) -> None:
    """``./a``, ``a/./b``, ``a/../b`` and ``..`` above the root, as moby's resolvePath
    cleans them (filepath.Join("/", path)): ``..`` at ``/`` stays at ``/``."""
    nsbox.run("mkdir -p /a/b && echo in-a > /a/f && echo top > /f", check=True)
    assert nsbox.read_text("./a/f") == "in-a\n"
    assert nsbox.read_text("a/./f") == "in-a\n"
    assert nsbox.read_text("a/b/../f") == "in-a\n"
    assert nsbox.read_text("a/../f") == "top\n"
    assert nsbox.read_text("../f") == "top\n"
    assert nsbox.read_text("../../../a/f") == "in-a\n"
    assert nsbox.read_text("/../a/f") == "in-a\n"
    assert nsbox.listdir("./a") == ["b", "f"]
    assert nsbox.listdir("..") == nsbox.listdir("/")
    assert nsbox.exists("a/b/..") and nsbox.exists("./a/b")
    nsbox.write_text("./a/b/../new", "n")
    assert nsbox.run("cat /a/new").stdout == "n"


def test_dotdot_cannot_leave_the_box(nsbox) -> None:
    """However many ``..`` a relative path has, it names a path in the box's root (and the
    kernel's RESOLVE_IN_ROOT keeps symlinks inside too)."""
    ours = nsbox.read_text("/etc/passwd")
    assert nsbox.read_text("../" * 20 + "etc/passwd") == ours
    assert nsbox.read_text("etc/../../../etc/passwd") == ours


def test_a_trailing_slash_means_a_directory(nsbox) -> None:
    """moby keeps a trailing separator (archive.PreserveTrailingDotOrSeparator): ``file/``
    is not the file. POSIX path resolution agrees (ENOTDIR)."""
    nsbox.run("mkdir -p /d && echo x > /d/file", check=True)
    assert nsbox.listdir("d/") == ["file"]
    assert nsbox.exists("d/") and nsbox.exists("d/.")
    assert not nsbox.exists("d/file/")
    with pytest.raises(NotADirectoryError):
        nsbox.read_text("d/file/")


@pytest.mark.parametrize(("given", "expected"), [
    ("marker", "/marker"), ("./a", "/a"), ("a/./b", "/a/b"), ("a/../b", "/b"),
    ("..", "/"), ("../..", "/"), ("../x", "/x"), (".", "/"), ("/", "/"), ("//x", "/x"),
    ("///x//y", "/x/y"), ("a/", "/a/"), ("a/.", "/a/"), ("a/b/..", "/a"), ("./", "/"),
])
def test_box_path_table(given: str, expected: str) -> None:
    """The path every file method opens: ``filepath.Join("/", path)`` plus the trailing
    separator moby preserves (moby container.resolvePath)."""
    assert _box_path(given, "path") == expected


@pytest.mark.parametrize("bad", ["", "a\0b", 5, None])
def test_box_path_refuses_what_is_not_a_path(bad: object) -> None:
    """Not paths at all: a NUL cannot reach the kernel, a non-string is no path. An empty
    string is refused too (moby would read it as "/"; in a test it is more likely a bug),
    with the SpecError our errors.py gives every bad value."""
    with pytest.raises(SpecError, match="not a path inside the box"):
        _box_path(bad, "path")  # type: ignore[arg-type]
