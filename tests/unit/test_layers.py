"""images.layers: layer directories <-> layer tars, whiteouts both ways, safe unpacking.

Layer directories are laid out by hand in tmp_path the way overlayfs stores them (a
deletion is a 0:0 character device, a replaced directory carries
``trusted.overlay.opaque=y``); both need root. Tars are made with ``tarfile`` so each test
controls every header, including the malicious ones.
"""
from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from conftest import user_xattr_problem

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images import layers
from pytest_nsbox.images.layers import copy_tree, diff_id, unpack_tar, write_blob, write_tar
from pytest_nsbox.overlay.view import MergedView, is_opaque, is_whiteout

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="whiteouts, chown and trusted.* xattrs need root")


def put(root: Path, rel: str, text: str = "", mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def whiteout(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def opaque(root: Path, rel: str) -> Path:
    path = root / rel
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, "trusted.overlay.opaque", b"y")
    return path


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name for m in tar.getmembers()]


def layer_tar(layer: Path) -> bytes:
    out = io.BytesIO()
    write_tar(str(layer), out)
    return out.getvalue()


def make_tar(*entries: tuple[str, str, object]) -> bytes:
    """A tar of (name, kind, arg): kind file (arg=bytes), dir, symlink/hardlink (arg=target),
    chr (arg=(major, minor)), fifo."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, arg in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            info.mode = 0o644
            if kind == "file":
                data = arg if isinstance(arg, bytes) else b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(arg)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(arg)
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = arg  # type: ignore[misc]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return out.getvalue()


def unpack(data: bytes, dest: Path) -> layers.Unpacked:
    dest.mkdir(exist_ok=True)
    return unpack_tar(io.BytesIO(data), str(dest), "test.tar")


def tree(root: Path) -> dict[str, tuple]:
    """Everything about a layer directory that a layer carries."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(top) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if is_whiteout(st):
                out[rel] = ("whiteout",)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, int(st.st_mtime),
                            is_opaque(str(path)))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_uid)
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo", stat.S_IMODE(st.st_mode), st.st_uid)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            int(st.st_mtime), path.read_bytes(), st.st_nlink)
    return out


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    root = tmp_path / "layer"
    put(root, "etc/motd", "hello\n")
    put(root, "bin/tool", "#!/bin/sh\n", 0o4755)
    os.chown(root / "bin/tool", 1000, 1001)
    os.chmod(root / "bin/tool", 0o4755)  # after chown, which clears set-uid
    os.link(root / "bin/tool", root / "bin/tool2")
    os.symlink("/bin/tool", root / "bin/alias")
    whiteout(root, "etc/passwd")
    whiteout(root, "etc/zz-gone")
    opaque(root, "srv/data")
    put(root, "srv/data/new", "new\n")
    if user_xattr_problem(tmp_path) is None:  # tmpfs before Linux 6.6 has no user.*
        os.setxattr(root / "etc/motd", "user.origin", b"\xff\x00binary")
    os.mkfifo(root / "etc/pipe")
    return root


# -- directory -> tar ---------------------------------------------------------------------

def test_whiteouts_become_wh_files_and_opaque_marker_comes_first(layer: Path) -> None:
    names = tar_names(layer_tar(layer))
    assert "etc/.wh.passwd" in names and "etc/.wh.zz-gone" in names
    assert "srv/data/.wh..wh..opq" in names
    # The opaque marker is the first entry after its directory; whiteouts come before the
    # directory's other entries (OCI image spec, layer.md).
    assert names.index("srv/data/.wh..wh..opq") == names.index("srv/data") + 1
    etc = [n for n in names if n.startswith("etc/") and n.count("/") == 1 and n != "etc"]
    assert etc[:2] == ["etc/.wh.passwd", "etc/.wh.zz-gone"]
    assert names.index("etc") < names.index("etc/.wh.passwd")


def test_canonical_tar_is_deterministic_and_has_no_owner_names(user_xattrs: Path,
                                                               layer: Path) -> None:
    first, second = layer_tar(layer), layer_tar(layer)
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        for m in tar.getmembers():
            assert m.uname == "" and m.gname == ""
        tool = tar.getmember("bin/tool")
        assert (tool.uid, tool.gid, tool.mode) == (1000, 1001, 0o4755)
        assert tar.getmember("bin/tool2").islnk()
        assert tar.getmember("bin/tool2").linkname == "bin/tool"
        assert tar.getmember("bin/alias").linkname == "/bin/tool"
        assert tar.getmember("etc/motd").pax_headers["SCHILY.xattr.user.origin"]


def test_round_trip_keeps_everything_and_the_diff_id(user_xattrs: Path, layer: Path,
                                                      tmp_path: Path) -> None:
    data = layer_tar(layer)
    got = unpack(data, tmp_path / "back")
    assert got.diff_id == diff_id(str(layer)) == got.digest
    assert not got.compressed
    assert tree(tmp_path / "back") == tree(layer)
    assert os.getxattr(tmp_path / "back/etc/motd", "user.origin") == b"\xff\x00binary"
    assert stat.S_ISFIFO((tmp_path / "back/etc/pipe").lstat().st_mode)
    assert diff_id(str(tmp_path / "back")) == got.diff_id


def test_gzip_blob_digests_and_unpack(layer: Path, tmp_path: Path) -> None:
    out = io.BytesIO()
    digest, did, size = write_blob(str(layer), out, compress=True)
    blob = out.getvalue()
    assert blob[:2] == b"\x1f\x8b" and size == len(blob)
    assert did == diff_id(str(layer)) and digest != did
    got = unpack(blob, tmp_path / "back")
    assert (got.digest, got.diff_id, got.compressed) == (digest, did, True)
    again = io.BytesIO()
    assert write_blob(str(layer), again, compress=True)[0] == digest  # reproducible gzip


def test_a_layer_file_named_like_a_whiteout_is_refused(tmp_path: Path) -> None:
    put(tmp_path / "l", ".wh.sneaky")
    with pytest.raises(ImageError, match="reserves for whiteouts"):
        layer_tar(tmp_path / "l")


def test_device_nodes_are_not_exported(tmp_path: Path) -> None:
    root = tmp_path / "l"
    root.mkdir()
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(ImageError, match="device node"):
        layer_tar(root)


# -- tar -> directory ---------------------------------------------------------------------

def test_wh_files_become_overlay_whiteouts(tmp_path: Path) -> None:
    data = make_tar(("etc", "dir", None), ("etc/.wh.passwd", "file", b""),
                    ("a/b/.wh..wh..opq", "file", b""), ("a/b/keep", "file", b"k"),
                    ("x/.wh..wh.plnk", "file", b""))
    unpack(data, tmp_path / "l")
    assert is_whiteout((tmp_path / "l/etc/passwd").lstat())
    assert is_opaque(str(tmp_path / "l/a/b"))
    assert (tmp_path / "l/a/b/keep").read_bytes() == b"k"
    assert not (tmp_path / "l/x").exists()  # aufs bookkeeping is not applied


def test_a_whiteout_never_hides_an_entry_of_its_own_layer(tmp_path: Path) -> None:
    data = make_tar(("f", "file", b"mine"), (".wh.f", "file", b""))
    unpack(data, tmp_path / "l")
    assert (tmp_path / "l/f").read_bytes() == b"mine"


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    data = make_tar(("a", "file", b"1"), ("a", "dir", None), ("a/x", "file", b"2"),
                    ("b", "dir", None), ("b/y", "file", b""), ("b", "file", b"3"))
    unpack(data, tmp_path / "l")
    assert (tmp_path / "l/a/x").read_bytes() == b"2"
    assert (tmp_path / "l/b").read_bytes() == b"3"


def test_a_digest_mismatch_is_for_the_caller_to_see(tmp_path: Path) -> None:
    data = make_tar(("f", "file", b"x"))
    got = unpack(data, tmp_path / "l")
    assert got.digest == "sha256:" + layers.sha256_hex(data)


def test_zstd_layers_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="zstd"):
        unpack(b"\x28\xb5\x2f\xfd" + b"\0" * 100, tmp_path / "l")


def test_garbage_is_not_a_layer(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a readable layer tar"):
        unpack(gzip.compress(b"not a tar at all" * 100), tmp_path / "l")


# -- malicious tars -----------------------------------------------------------------------

@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host directory next to the layer that no tar may touch."""
    host = tmp_path / "host"
    put(host, "secret", "untouched\n")
    return host


def snapshot(path: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(top) / name
            out[str(p)] = "dir" if p.is_dir() else p.read_bytes()
    return out


@pytest.mark.parametrize("entries, match", [
    ([("../host/secret", "file", b"pwned")], "climbs out"),
    ([("a/../../host/secret", "file", b"pwned")], "climbs out"),
    ([("/etc/evil", "file", b"pwned")], "absolute path"),
    ([("esc", "symlink", "../host"), ("esc/secret", "file", b"pwned")],
     "through the symlink 'esc'"),
    ([("esc", "symlink", "/"), ("esc/tmp/evil", "file", b"pwned")],
     "through the symlink 'esc'"),
    ([("d", "dir", None), ("d/esc", "symlink", "../../host"), ("d/esc/x/y", "file", b"")],
     "through the symlink 'd/esc'"),
    ([("link", "hardlink", "../host/secret")], "climbs out"),
    ([("link", "hardlink", "/etc/passwd")], "absolute path"),
    ([("esc", "symlink", "../host"), ("link", "hardlink", "esc/secret")],
     "through the symlink 'esc'"),
    ([("link", "hardlink", "nothing-here")], "not an earlier entry"),
    ([("dev/sda", "chr", (8, 0))], "device node"),
    ([("dev/mem", "chr", (1, 1))], "device node"),
])
def test_malicious_tars_are_refused_and_the_host_is_untouched(
        tmp_path: Path, victim: Path, entries: list, match: str) -> None:
    before = snapshot(victim)
    with pytest.raises(ImageError, match=match) as info:
        unpack(make_tar(*entries), tmp_path / "layer")
    assert "test.tar: entry" in str(info.value)
    assert snapshot(victim) == before
    assert not Path("/etc/evil").exists() and not Path("/tmp/evil").exists()


def test_whiteout_devices_in_a_tar_are_accepted(tmp_path: Path) -> None:
    unpack(make_tar(("gone", "chr", (0, 0))), tmp_path / "l")
    assert is_whiteout((tmp_path / "l/gone").lstat())


# -- copy_tree ----------------------------------------------------------------------------

def test_copy_tree_keeps_a_layer_as_it_is(layer: Path, tmp_path: Path) -> None:
    os.setxattr(layer / "etc/motd", "trusted.overlay.origin", b"\0\1")
    dest = tmp_path / "copy"
    dest.mkdir()
    copy_tree(str(layer), str(dest), skip=frozenset({"etc/pipe"}))
    want = tree(layer)
    del want["etc/pipe"]
    assert tree(dest) == want
    assert "trusted.overlay.origin" not in os.listxattr(dest / "etc/motd")
    assert diff_id(str(dest)) != diff_id(str(layer))  # the fifo is gone


def test_copy_tree_refuses_overlay_redirects(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    os.setxattr(src / "d", "trusted.overlay.redirect", b"/x")
    (tmp_path / "dst").mkdir()
    with pytest.raises(ImageError, match="redirect"):
        copy_tree(str(src), str(tmp_path / "dst"))


# -- MergedView ---------------------------------------------------------------------------

def test_merged_view_follows_layers_whiteouts_opaque_dirs_and_symlinks(tmp_path: Path) -> None:
    low, mid, top = tmp_path / "low", tmp_path / "mid", tmp_path / "top"
    put(low, "usr/bin/sh", "sh")
    os.symlink("usr/bin", low / "bin")
    put(low, "etc/passwd", "root")
    put(low, "srv/old", "old")
    whiteout(mid, "etc/passwd")
    opaque(mid, "srv")
    put(mid, "srv/new", "new")
    put(top, "etc/group", "g")
    view = MergedView([str(low), str(mid), str(top)])
    parts, found = view.resolve("/bin/sh")
    assert parts == ("usr", "bin", "sh") and found is not None
    assert view.read_bytes("/bin/sh") == b"sh"
    assert view.resolve("/etc/passwd")[1] is None
    assert view.read_bytes("/etc/group") == b"g"
    assert view.resolve("/srv/old")[1] is None
    assert view.read_bytes("/srv/new") == b"new"
    # '..' after a symlink goes up from where the link points, as the kernel does.
    assert view.resolve("/bin/../etc/group")[0] == ("usr", "etc", "group")
    assert view.resolve("/nope/deeper/x") == (("nope", "deeper", "x"), None)


# -- whiteouts as the image spec defines them, whatever the entry order --------------------

def _lower(tmp_path: Path) -> Path:
    """Layer 1 of the issue's example: ``a/b/old`` (plus a file beside ``b``)."""
    low = tmp_path / "low"
    put(low, "a/b/old", "old")
    put(low, "a/b/c/older", "older")
    put(low, "a/keep", "keep")
    return low


def _merged(lower: Path, upper: Path, path: str) -> bytes | str | None:
    """What the image shows at ``path``: file bytes, "dir", or None (overlay lookup)."""
    found = MergedView([str(lower), str(upper)]).resolve(path)[1]
    if found is None:
        return None
    return "dir" if stat.S_ISDIR(found.st.st_mode) else Path(found.path).read_bytes()


def _entries_orders(*entries: tuple[str, str, object]) -> list[tuple[tuple[str, str, object], ...]]:
    import itertools

    return list(itertools.permutations(entries))


WHITEOUT_AND_CONTENT = _entries_orders(
    ("a/.wh.b", "file", b""), ("a/b/c/new", "file", b"new"), ("a/b", "dir", None),
    ("a/b/c", "dir", None))


@pytest.mark.parametrize("entries", WHITEOUT_AND_CONTENT,
                         ids=[" ".join(e[0] for e in o) for o in WHITEOUT_AND_CONTENT])
def test_a_whiteout_with_content_of_its_own_layer_makes_an_opaque_dir(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """OCI image-spec layer.md "Whiteouts": a whiteout applies only to lower layers; files
    in the same layer are not hidden; entries may come in any order. So ``a/.wh.b`` with
    ``a/b/c/new`` in layer 2 over ``a/b/old`` in layer 1 shows ``/a/b`` holding only ``c``,
    which in overlay form is an opaque ``a/b``."""
    low = _lower(tmp_path)
    unpack(make_tar(*entries), tmp_path / "up")
    assert is_opaque(str(tmp_path / "up/a/b"))
    assert sorted(os.listdir(tmp_path / "up/a/b")) == ["c"]
    assert _merged(low, tmp_path / "up", "/a/b/old") is None
    assert _merged(low, tmp_path / "up", "/a/b/c/older") is None
    assert _merged(low, tmp_path / "up", "/a/b/c/new") == b"new"
    assert _merged(low, tmp_path / "up", "/a/keep") == b"keep"  # the whiteout's siblings stay


@pytest.mark.parametrize("entries", [
    (("a/.wh.b", "file", b""), ("a/b/c/new", "file", b"new")),
    (("a/b/c/new", "file", b"new"), ("a/.wh.b", "file", b"")),
], ids=["whiteout-first", "content-first"])
def test_the_issue_example_without_directory_entries(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """OCI image-spec layer.md "Whiteouts" (the failing input of issue 9, item 8): layer 1
    ``a/b/old``; layer 2 ``a/.wh.b`` and ``a/b/c/new``, no directory entries, either order."""
    low = tmp_path / "low"
    put(low, "a/b/old", "old")
    unpack(make_tar(*entries), tmp_path / "up")
    view = MergedView([str(low), str(tmp_path / "up")])
    assert view.resolve("/a/b/old")[1] is None
    assert view.resolve("/a/b/c")[1] is not None
    assert tree(tmp_path / "up")["a/b"][-1] is True  # opaque
    assert "a/b/old" not in tree(tmp_path / "up")


@pytest.mark.parametrize("entries", _entries_orders(
    ("a/.wh.b", "file", b""), ("a/b", "dir", None)))
def test_a_whiteout_and_an_empty_dir_of_the_same_name(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """OCI image-spec layer.md "Whiteouts": the whiteout hides the lower ``a/b``; the
    layer's own (empty) ``a/b`` stays: an empty opaque directory."""
    low = _lower(tmp_path)
    unpack(make_tar(*entries), tmp_path / "up")
    assert is_opaque(str(tmp_path / "up/a/b")) and os.listdir(tmp_path / "up/a/b") == []
    assert _merged(low, tmp_path / "up", "/a/b") == "dir"
    assert _merged(low, tmp_path / "up", "/a/b/old") is None


@pytest.mark.parametrize("entries", _entries_orders(
    ("a/b/.wh..wh..opq", "file", b""), ("a/b/new", "file", b"new"), ("a/b/c/x", "file", b"x")))
def test_an_opaque_marker_hides_only_the_lower_children(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """OCI image-spec layer.md "Opaque Whiteout": ``.wh..wh..opq`` hides every lower child
    of its directory, not the siblings in its own layer, wherever it comes in the tar."""
    low = _lower(tmp_path)
    unpack(make_tar(*entries), tmp_path / "up")
    assert is_opaque(str(tmp_path / "up/a/b"))
    assert _merged(low, tmp_path / "up", "/a/b/old") is None
    assert _merged(low, tmp_path / "up", "/a/b/c/older") is None
    assert _merged(low, tmp_path / "up", "/a/b/new") == b"new"
    assert _merged(low, tmp_path / "up", "/a/b/c/x") == b"x"
    assert _merged(low, tmp_path / "up", "/a/keep") == b"keep"


@pytest.mark.parametrize(("kind", "arg", "expected"), [
    ("file", b"mine", b"mine"),
    ("symlink", "keep", b"keep"),  # a/b -> keep, the lower a/keep
])
@pytest.mark.parametrize("first", ["whiteout", "entry"])
def test_a_whiteout_and_a_file_of_the_same_name(tmp_path: Path, kind: str, arg: object,
                                                 expected: bytes, first: str) -> None:
    """OCI image-spec layer.md "Whiteouts": a whiteout never hides an entry of its own
    layer; the layer's file (or link) at the path replaces the lower directory."""
    low = _lower(tmp_path)
    wh, entry = ("a/.wh.b", "file", b""), ("a/b", kind, arg)
    unpack(make_tar(*((wh, entry) if first == "whiteout" else (entry, wh))), tmp_path / "up")
    st = (tmp_path / "up/a/b").lstat()
    assert not is_whiteout(st) and not stat.S_ISDIR(st.st_mode)
    assert MergedView([str(low), str(tmp_path / "up")]).read_bytes("/a/b") == expected
    assert _merged(low, tmp_path / "up", "/a/b/old") is None


def test_a_lone_whiteout_is_a_whiteout_device(tmp_path: Path) -> None:
    """OCI image-spec layer.md "Whiteouts": ``a/.wh.b`` alone removes the lower ``a/b``."""
    low = _lower(tmp_path)
    unpack(make_tar(("a/.wh.b", "file", b"")), tmp_path / "up")
    assert is_whiteout((tmp_path / "up/a/b").lstat())
    assert _merged(low, tmp_path / "up", "/a/b") is None
    assert _merged(low, tmp_path / "up", "/a/keep") == b"keep"


@pytest.mark.parametrize("entries", _entries_orders(
    (".wh.a", "file", b""), ("a/.wh.b", "file", b"")))
def test_a_whiteout_below_a_whiteout_of_the_same_layer(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """OCI image-spec layer.md "Whiteouts": ``.wh.a`` removes all of the lower ``a``; a
    whiteout below it changes nothing, in either order (it must not bring ``a`` back as a
    directory)."""
    low = _lower(tmp_path)
    unpack(make_tar(*entries), tmp_path / "up")
    assert is_whiteout((tmp_path / "up/a").lstat())
    assert _merged(low, tmp_path / "up", "/a") is None


@pytest.mark.parametrize("entries", _entries_orders(
    ("a", "file", b"file"), ("a/.wh.b", "file", b"")))
def test_a_whiteout_below_a_file_of_the_same_layer(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """OCI image-spec layer.md: the layer's file ``a`` replaces the lower directory ``a``
    already; ``a/.wh.b`` below it hides nothing more and is not an error, in either order."""
    low = _lower(tmp_path)
    unpack(make_tar(*entries), tmp_path / "up")
    assert (tmp_path / "up/a").read_bytes() == b"file"
    assert _merged(low, tmp_path / "up", "/a") == b"file"


@pytest.mark.parametrize("entries", [
    (("a/b", "chr", (0, 0)), ("a/b/c/new", "file", b"new")),
    (("a/b", "chr", (0, 0)), ("a/b", "dir", None), ("a/b/c/new", "file", b"new")),
], ids=["implicit-dir", "dir-entry"])
def test_a_directory_over_a_whiteout_device_is_opaque(
        tmp_path: Path, entries: tuple[tuple[str, str, object], ...]) -> None:
    """overlayfs (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
    directories"): a directory made where a whiteout was is opaque, so a tar in overlay
    form (0:0 devices) followed by content gets the same merged view as ``.wh.``."""
    low = _lower(tmp_path)
    unpack(make_tar(*entries), tmp_path / "up")
    assert is_opaque(str(tmp_path / "up/a/b"))
    assert _merged(low, tmp_path / "up", "/a/b/old") is None
    assert _merged(low, tmp_path / "up", "/a/b/c/new") == b"new"


def test_the_unpacked_layer_exports_as_an_opaque_marker(tmp_path: Path) -> None:
    """OCI image-spec layer.md "Opaque Whiteout": the opaque directory made from a whiteout
    plus content goes back out as ``.wh..wh..opq`` (canonical tar), and imports the same."""
    unpack(make_tar(("a/b/c/new", "file", b"new"), ("a/.wh.b", "file", b"")), tmp_path / "up")
    data = layer_tar(tmp_path / "up")
    assert "a/b/.wh..wh..opq" in tar_names(data)
    assert "a/.wh.b" not in tar_names(data)
    unpack(data, tmp_path / "again")
    assert tree(tmp_path / "again") == tree(tmp_path / "up")


def test_a_store_without_user_xattrs_refuses_a_layer_that_has_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer's ``SCHILY.xattr.user.*`` PAX records (image-spec layer.md, "File
    Attributes": xattrs are part of a layer) need a store that holds user.* xattrs; where
    the filesystem has none (tmpfs before Linux 6.6) the import says so, not an OSError."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.pax_headers = {"SCHILY.xattr.user.origin": "x"}
        tar.addfile(info, io.BytesIO(b""))

    def no_user_xattrs(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_user_xattrs)
    with pytest.raises(ImageError, match=r"test.tar: entry 'f': the image store's filesystem "
                                         r"cannot hold its extended attribute user.origin .*"
                                         r"nsbox_store_dir or NSBOX_STORE"):
        unpack(out.getvalue(), tmp_path / "l")
