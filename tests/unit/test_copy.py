"""build.copy: COPY and ADD as BuildKit does them, against plain directories.

The image below a step is a stack of layer directories laid out by hand in tmp_path (in
overlay form: a deletion is a 0:0 character device, ``trusted.overlay.opaque=y`` marks a
replaced folder); the build context is a plain folder. Each ``World.step`` plans a copy,
writes it into a new empty layer and stacks that layer, so the next step sees it. What the
image then shows is read through ``MergedView``, as overlayfs would merge the layers.

References: the Dockerfile reference (moby/buildkit frontend/dockerfile/docs/reference.md,
sections COPY and ADD), BuildKit (frontend/dockerfile/dockerfile2llb/convert_copy.go
``dispatchCopy``, solver/llbsolver/file/backend.go ``docopy``, unpack.go,
frontend/dockerfile/dockerfile_copy_test.go, exclude_patterns_test.go), tonistiigi/fsutil
copy/copy.go, moby/go-archive archive.go ``Unpack``, moby/patternmatcher, and
tonistiigi/dchapes-mode (BSD setmode) for ``--chmod``.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import tarfile
import uuid
from pathlib import Path

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.build import copy as cp
from pytest_nsbox.model.image import Image
from pytest_nsbox.overlay.view import MergedView

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="owners, whiteouts and trusted.* xattrs need root")


class World:
    """A build context and an image (a stack of layer directories) in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ctx = root / "ctx"
        self.ctx.mkdir()
        self.layers: list[Path] = [root / "base"]
        self.layers[0].mkdir()
        (self.layers[0] / "etc").mkdir()
        (self.layers[0] / "etc/passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
            "app:x:1000:1000::/home/app:/bin/sh\n")
        (self.layers[0] / "etc/group").write_text("root:x:0:\ndaemon:x:1:\nstaff:x:50:\n")

    @property
    def base(self) -> Path:
        return self.layers[0]

    def dirs(self) -> list[str]:
        return [str(p) for p in self.layers]

    def plan(self, keyword: str, srcs: list[str], dest: str, source: cp.Source | None = None,
             **kw: object) -> cp.CopyPlan:
        return cp.plan(keyword, source or cp.Source.context(str(self.ctx)), srcs, dest,
                       lower=self.dirs(), where="Containerfile:2", **kw)  # type: ignore[arg-type]

    def step(self, keyword: str, srcs: list[str], dest: str, source: cp.Source | None = None,
             **kw: object) -> Path:
        """Plan and apply a copy as a new layer on top; returns the layer directory."""
        p = self.plan(keyword, srcs, dest, source, **kw)
        layer = self.root / f"layer{len(self.layers)}-{uuid.uuid4().hex[:6]}"
        layer.mkdir()
        p.apply(str(layer))
        self.layers.append(layer)
        return layer

    def view(self) -> MergedView:
        return MergedView(self.dirs())

    def lstat(self, path: str) -> os.stat_result | None:
        _parts, found = self.view().resolve(path, follow_last=False)
        return found.st if found else None

    def read(self, path: str) -> str:
        data = self.view().read_bytes(path)
        assert data is not None, f"{path} is not a file in the image"
        return data.decode()

    def listdir(self, path: str) -> list[str]:
        parts, _found = self.view().resolve(path)
        return sorted(self.view().listdir(parts))


def put(root: Path, rel: str, text: str = "", mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def link(root: Path, rel: str, target: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


@pytest.fixture
def w(tmp_path: Path) -> World:
    return World(tmp_path)


def usrmerge(w: World) -> None:
    """A base layer whose /bin is a symlink to usr/bin (Debian 12 and later)."""
    put(w.base, "usr/bin/sh", "#!shell\n", 0o755)
    link(w.base, "bin", "usr/bin")


# -- the destination path is resolved inside the image --------------------------------------

def test_copy_rootfs_onto_a_usrmerge_bin_follows_the_symlink(w: World) -> None:
    """Issue 9's failing input: ``COPY rootfs /`` onto an image whose /bin is a symlink to
    usr/bin. Files land in /usr/bin and /bin stays a symlink, so /bin/sh still works (what
    moby/moby#47367 asks of BuildKit, which stops with "cannot copy to non-directory")."""
    usrmerge(w)
    put(w.ctx, "rootfs/bin/hello.sh", "echo hi\n", 0o755)
    put(w.ctx, "rootfs/etc/app.conf", "x=1\n")
    layer = w.step("COPY", ["rootfs"], "/")
    st = w.lstat("/bin")
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert os.readlink(w.base / "bin") == "usr/bin"
    assert w.listdir("/bin") == ["hello.sh", "sh"]
    assert w.read("/bin/sh") == "#!shell\n"
    assert w.read("/usr/bin/hello.sh") == "echo hi\n"
    assert w.read("/etc/app.conf") == "x=1\n"
    assert not (layer / "bin").exists() and not (layer / "bin").is_symlink()
    assert (layer / "usr/bin/hello.sh").is_file()


def test_an_absolute_symlink_in_the_destination_starts_at_the_image_root(w: World,
                                                                          tmp_path: Path
                                                                          ) -> None:
    """containerd ``fs.RootPath`` (fsutil copy.go ``Copy``): an absolute link target in the
    destination is taken inside the image, never on the host."""
    host = f"/tmp/nsbox-h2-{uuid.uuid4().hex[:8]}"
    (w.base / "srv/app").mkdir(parents=True)
    link(w.base, "opt/app", "/srv/app")
    link(w.base, "opt/hostly", host)
    put(w.ctx, "f.txt", "data\n")
    layer = w.step("COPY", ["f.txt"], "/opt/app/")
    assert (layer / "srv/app/f.txt").read_text() == "data\n"
    w.step("COPY", ["f.txt"], "/opt/hostly/")
    assert w.read(host + "/f.txt") == "data\n"
    assert not os.path.exists(host)


def test_a_chain_of_symlinks_in_the_destination_is_followed(w: World) -> None:
    """``fs.RootPath`` follows links to links (up to a bound) inside the image."""
    (w.base / "real/dir").mkdir(parents=True)
    link(w.base, "a", "b")
    link(w.base, "b", "/c")
    link(w.base, "c", "real/../real/dir")
    put(w.ctx, "f.txt", "chain\n")
    layer = w.step("COPY", ["f.txt"], "/a/x")
    assert (layer / "real/dir/x").read_text() == "chain\n"
    assert w.listdir("/real/dir") == ["x"]
    for name in ("a", "b", "c"):
        st = w.lstat("/" + name)
        assert st is not None and stat.S_ISLNK(st.st_mode)


def test_dotdot_in_a_destination_symlink_never_leaves_the_image(w: World) -> None:
    """``..`` stops at the image's root (``FollowSymlinkInScope``), however many there are,
    and the layer being written is the only thing written to."""
    marker = f"nsbox-h2-{uuid.uuid4().hex[:8]}"
    link(w.base, "deep/esc", f"../../../../../../../tmp/{marker}")
    put(w.ctx, "f.txt", "kept in\n")
    layer = w.step("COPY", ["f.txt"], "/deep/esc/")
    assert (layer / f"tmp/{marker}/f.txt").read_text() == "kept in\n"
    assert not os.path.exists(f"/tmp/{marker}")


def test_a_symlink_loop_in_the_destination_is_a_clear_error(w: World) -> None:
    """Too many levels of links (ELOOP) is an error, not a hang."""
    link(w.base, "loop1", "loop2")
    link(w.base, "loop2", "loop1")
    put(w.ctx, "f.txt")
    with pytest.raises(ImageError, match="too many levels of symbolic links"):
        w.step("COPY", ["f.txt"], "/loop1/")


def test_a_destination_naming_a_symlink_to_a_file_writes_its_target(w: World) -> None:
    """fsutil ``Copy`` resolves the whole destination with ``fs.RootPath`` (the last
    component too): ``COPY f /etc/link`` writes where the link points; the link stays."""
    put(w.base, "etc/real.conf", "old\n")
    link(w.base, "etc/link.conf", "real.conf")
    link(w.base, "etc/dangling.conf", "/var/new/made.conf")
    put(w.ctx, "f.conf", "new\n")
    w.step("COPY", ["f.conf"], "/etc/link.conf")
    assert w.read("/etc/real.conf") == "new\n"
    st = w.lstat("/etc/link.conf")
    assert st is not None and stat.S_ISLNK(st.st_mode)
    w.step("COPY", ["f.conf"], "/etc/dangling.conf")
    assert w.read("/var/new/made.conf") == "new\n"


def test_a_file_inside_a_copied_folder_replaces_a_symlink_of_the_image(w: World) -> None:
    """fsutil ``ensureEmptyFileTarget``: an entry below the copied folder replaces a file or
    symlink of the image (it is not written through)."""
    put(w.base, "etc/shadowed", "keep\n")
    link(w.base, "app/cfg", "/etc/shadowed")
    put(w.ctx, "app/cfg", "own\n")
    w.step("COPY", ["app"], "/app")
    st = w.lstat("/app/cfg")
    assert st is not None and stat.S_ISREG(st.st_mode)
    assert w.read("/app/cfg") == "own\n"
    assert w.read("/etc/shadowed") == "keep\n"


def test_link_does_not_follow_the_images_symlinks(w: World) -> None:
    """Dockerfile reference, COPY --link: the files are copied as into an empty image, so a
    symlink in the destination path is not followed (``/bin`` becomes a folder of the new
    layer)."""
    usrmerge(w)
    put(w.ctx, "rootfs/bin/hello.sh", "echo hi\n", 0o755)
    layer = w.step("COPY", ["rootfs"], "/", link=True)
    assert (layer / "bin").is_dir() and not (layer / "bin").is_symlink()
    assert w.listdir("/bin") == ["hello.sh"]


# -- sources ---------------------------------------------------------------------------

def test_a_source_symlink_is_copied_as_its_targets_content_under_its_own_name(
        w: World) -> None:
    """Issue 9's failing input: ``B/foo.txt -> ../A/bar.txt``, ``COPY B/foo.txt /into/``
    gives /into/foo.txt (a file holding bar.txt's content), as BuildKit does (dispatchCopy:
    ``FollowSymlinks``; fsutil ``prepareTargetDir`` names it ``filepath.Base(src)``)."""
    put(w.ctx, "A/bar.txt", "bar\n", 0o640)
    link(w.ctx, "B/foo.txt", "../A/bar.txt")
    w.step("COPY", ["B/foo.txt"], "/into/")
    assert w.listdir("/into") == ["foo.txt"]
    st = w.lstat("/into/foo.txt")
    assert st is not None and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert w.read("/into/foo.txt") == "bar\n"
    link(w.ctx, "C/chain", "/B/foo.txt")  # a link to a link, absolute in the context
    w.step("COPY", ["C/chain"], "/into/")
    assert w.listdir("/into") == ["chain", "foo.txt"]
    assert w.read("/into/chain") == "bar\n"
    link(w.ctx, "loop/a", "b")
    link(w.ctx, "loop/b", "a")
    with pytest.raises(ImageError, match=r"COPY loop/a: /loop/a: too many levels of symbolic "
                                         r"links \(a loop\?\) in the build context"):
        w.plan("COPY", ["loop/a"], "/x")


def test_a_source_symlink_to_a_folder_copies_the_folders_contents(w: World) -> None:
    """A source that is a link to a folder is followed; its contents are copied."""
    put(w.ctx, "real/x.txt", "x\n")
    link(w.ctx, "alias", "real")
    w.step("COPY", ["alias"], "/d")
    assert w.listdir("/d") == ["x.txt"]


def test_symlinks_inside_a_copied_folder_stay_symlinks(w: World) -> None:
    """fsutil ``copier.copy``: below the source, a symlink is copied as a symlink (its
    target as written), dangling or not."""
    put(w.ctx, "dir/real.txt", "r\n")
    link(w.ctx, "dir/rel", "real.txt")
    link(w.ctx, "dir/abs", "/etc/passwd")
    link(w.ctx, "dir/dangling", "../nowhere")
    layer = w.step("COPY", ["dir"], "/d/")
    assert os.readlink(layer / "d/rel") == "real.txt"
    assert os.readlink(layer / "d/abs") == "/etc/passwd"
    assert os.readlink(layer / "d/dangling") == "../nowhere"


def test_a_source_symlink_leaving_the_context_resolves_inside_it(w: World) -> None:
    """BuildKit resolves a source link inside the context's root (``fs.RootPath`` on the
    local source): ``../../../etc/hostname`` and ``/etc/hostname`` both name
    <context>/etc/hostname, never the host's file."""
    link(w.ctx, "B/up", "../../../../etc/hostname")
    link(w.ctx, "B/abs", "/etc/hostname")
    with pytest.raises(ImageError, match=r"Containerfile:2: COPY B/up: a symlink to "
                                         r"'\.\./\.\./\.\./\.\./etc/hostname', which resolves "
                                         r"inside the build context .* to /etc/hostname"):
        w.plan("COPY", ["B/up"], "/x")
    put(w.ctx, "etc/hostname", "in-context\n")
    w.step("COPY", ["B/up", "B/abs"], "/got/")
    assert w.read("/got/up") == "in-context\n"
    assert w.read("/got/abs") == "in-context\n"


def test_dotdot_and_a_leading_slash_in_a_source_stay_in_the_context(w: World) -> None:
    """Dockerfile reference, COPY: "a source path with a leading slash or one that
    navigates outside the build context ... automatically removes any parent directory
    navigation"."""
    put(w.ctx, "etc/passwd", "ctx passwd\n")
    w.step("COPY", ["../../etc/passwd", "/etc/passwd"], "/p/")
    assert w.read("/p/passwd") == "ctx passwd\n"
    with pytest.raises(ImageError, match=r"COPY \.\./\.\./nothing: outside the build context; "
                                         r"Docker reads it as /nothing"):
        w.plan("COPY", ["../../nothing"], "/x")


def test_a_missing_source_names_the_instruction_and_the_context(w: World) -> None:
    with pytest.raises(ImageError, match=r"^Containerfile:2: COPY nope\.txt: not found in the "
                                         r"build context "):
        w.plan("COPY", ["nope.txt"], "/x")


def test_urls_are_an_offline_error(w: World) -> None:
    """ADD of a URL needs the network, which builds do not have: a clear error naming the
    line and suggesting a download into the context. COPY never takes a URL
    (dispatchCopy: "source can't be a URL for COPY")."""
    with pytest.raises(ImageError, match=r"Containerfile:2: ADD https://example\.com/a\.tgz: "
                                         r"a URL, and nsbox builds have no network; download "
                                         r"it into the build context"):
        w.plan("ADD", ["https://example.com/a.tgz"], "/x/")
    with pytest.raises(ImageError, match="no network"):
        w.plan("ADD", ["git@github.com:moby/buildkit.git"], "/x/")
    with pytest.raises(ImageError, match=r"COPY http://example\.com/f: COPY takes no URL"):
        w.plan("COPY", ["http://example.com/f"], "/x/")
    put(w.ctx, "f")
    with pytest.raises(ImageError, match="--checksum"):
        w.plan("ADD", ["f"], "/x/", checksum="sha256:" + "0" * 64)


# -- wildcards, several sources, folders ----------------------------------------------

def test_wildcards_match_as_go_filepath_match(w: World) -> None:
    """Dockerfile reference, "Pattern matching": Go ``filepath.Match``; dot files match
    ``*`` (unlike a shell), ``[[]`` escapes a bracket, ``[^a]`` negates, ``?`` is one
    character, and a wildcard in a middle component descends (fsutil
    ``ResolveWildcards``)."""
    for name in ("a.txt", ".hidden.txt", "b.md", "arr[0].txt", "sub/c.txt", "sub/d/e.txt"):
        put(w.ctx, name, name)
    w.step("COPY", ["*.txt"], "/t/")
    assert w.listdir("/t") == [".hidden.txt", "a.txt", "arr[0].txt"]
    w.step("COPY", ["arr[[]0].txt"], "/e/")
    assert w.listdir("/e") == ["arr[0].txt"]
    w.step("COPY", ["[^a]*.md", "?.md"], "/m/")
    assert w.listdir("/m") == ["b.md"]
    w.step("COPY", ["s*/*.txt"], "/s/")
    assert w.listdir("/s") == ["c.txt"]


def test_a_wildcard_matching_nothing_adds_nothing(w: World) -> None:
    """BuildKit testEmptyWildcard: ``COPY foo nomatch* /`` copies foo (dispatchCopy sets
    ``AllowEmptyWildcard``; docopy copies nothing for an empty match)."""
    put(w.ctx, "foo", "contents0")
    w.step("COPY", ["foo", "nomatch*"], "/")
    assert w.read("/foo") == "contents0"
    layer = w.step("COPY", ["nomatch*"], "/else/")
    assert list(layer.iterdir()) == []


def test_several_sources_need_a_folder_destination(w: World) -> None:
    """Dockerfile reference, COPY: "If you specify multiple source files, either directly
    or using a wildcard, then the destination must be a directory (must end with a slash
    /)"; a folder the image already has counts as one. One wildcard match to a file name is
    a file (BuildKit testCopyWildcards: ``COPY f*.go foo2.go``); several folders merge into
    one, as BuildKit's exclude_patterns_test.go does with ``ADD dir* /5``."""
    put(w.ctx, "a.go", "a")
    put(w.ctx, "b.go", "b")
    put(w.ctx, "foo.go", "foo")
    with pytest.raises(ImageError, match=r"Containerfile:2: COPY: more than one source "
                                         r"\(a\.go, b\.go\) needs a destination folder ending "
                                         r"in '/'; e.g. `COPY a b /x/`"):
        w.plan("COPY", ["a.go", "b.go"], "/x")
    with pytest.raises(ImageError, match="more than one source"):
        w.plan("COPY", ["*.go"], "/x")
    (w.base / "have").mkdir()
    w.step("COPY", ["a.go", "b.go"], "/have")
    assert w.listdir("/have") == ["a.go", "b.go"]
    w.step("COPY", ["f*.go"], "/foo2.go")
    assert w.read("/foo2.go") == "foo"
    put(w.ctx, "d1/one", "1")
    put(w.ctx, "d2/two", "2")
    w.step("COPY", ["d*"], "/merged")
    assert w.listdir("/merged") == ["one", "two"]


def test_a_folder_source_copies_its_contents_not_itself(w: World) -> None:
    """Dockerfile reference: "If the source is a directory, the contents of the directory
    are copied"; BuildKit testCopyWildcards: ``sub/dir1/``, ``sub/dir1/.`` and ``sub/dir1``
    all copy dir1's contents, relative destinations start at the working directory."""
    put(w.ctx, "sub/dir1/dir2/foo", "foo-contents")
    for src, dest in (("sub/dir1/", "subdest4"), ("sub/dir1/.", "subdest5"),
                      ("sub/dir1", "subdest6")):
        w.step("COPY", [src], dest, workdir="/work")
        assert w.read(f"/work/{dest}/dir2/foo") == "foo-contents"
    w.step("COPY", ["."], "all/", workdir="/work")
    assert w.read("/work/all/sub/dir1/dir2/foo") == "foo-contents"


def test_a_file_destination_without_slash_is_its_name_and_with_slash_a_folder(
        w: World) -> None:
    """Dockerfile reference, COPY Destination: ``COPY test.txt /abs`` creates a file at
    /abs, ``COPY test.txt /abs/`` creates /abs/test.txt; a folder already there takes the
    file inside it; missing folders are made."""
    put(w.ctx, "test.txt", "t")
    w.step("COPY", ["test.txt"], "/abs")
    st = w.lstat("/abs")
    assert st is not None and stat.S_ISREG(st.st_mode)
    w.step("COPY", ["test.txt"], "/dir/")
    assert w.listdir("/dir") == ["test.txt"]
    w.step("COPY", ["test.txt"], "/dir")
    assert w.listdir("/dir") == ["test.txt"]
    w.step("COPY", ["test.txt"], "/deep/er/name.txt")
    assert w.read("/deep/er/name.txt") == "t"
    w.step("COPY", ["test.txt"], ".", workdir="/wd")
    assert w.listdir("/wd") == ["test.txt"]


def test_a_file_onto_a_folder_and_a_folder_onto_a_file_are_errors(w: World) -> None:
    """Dockerfile reference: a directory onto an existing file is an error, and so is a
    file onto a directory of the same name (fsutil: "cannot copy to non-directory",
    "cannot replace to directory ... with file")."""
    put(w.base, "etc/hosts.d/x")
    put(w.base, "srv/file", "f")
    put(w.ctx, "tree/hosts.d", "a file now")
    put(w.ctx, "dir/inner", "i")
    with pytest.raises(ImageError, match=r"COPY tree: cannot replace the folder "
                                         r"/etc/hosts\.d of the image with the file"):
        w.step("COPY", ["tree"], "/etc/")
    with pytest.raises(ImageError, match=r"COPY dir: cannot copy the folder /dir onto "
                                         r"/srv/file, a file in the image"):
        w.step("COPY", ["dir"], "/srv/file")
    with pytest.raises(ImageError, match=r"/srv/file is a file in the image, not a folder"):
        w.step("COPY", ["dir/inner"], "/srv/file/x")


# -- metadata ---------------------------------------------------------------------------

def test_files_keep_mode_and_mtime_and_context_files_are_owned_by_root(w: World) -> None:
    """Dockerfile reference: "File permissions are preserved"; "Without this flag
    (--chown), files are created with UID and GID of 0" (the context's owners are reset).
    fsutil ``copyFileInfo`` keeps the mtime; nested folders take the source's mode."""
    f = put(w.ctx, "app/run.sh", "#!/bin/sh\n", 0o750)
    os.chown(f, 1234, 4321)
    os.utime(f, (1_000_000_000, 1_000_000_000))
    (w.ctx / "app/private").mkdir(mode=0o700)
    w.step("COPY", ["app"], "/app")
    st = w.lstat("/app/run.sh")
    assert st is not None
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 0, 0)
    assert st.st_mtime == 1_000_000_000
    d = w.lstat("/app/private")
    assert d is not None and stat.S_IMODE(d.st_mode) == 0o700


def test_chown_names_come_from_the_images_passwd_and_group(w: World) -> None:
    """Dockerfile reference, COPY --chown: names from the image's /etc/passwd and
    /etc/group, a user alone also gives the group (by name: its passwd gid; by number:
    the same number); an unknown name fails the build."""
    put(w.ctx, "f")
    for spec, expected in (("daemon", (1, 1)), ("app:staff", (1000, 50)), ("55", (55, 55)),
                           ("10:11", (10, 11)), ("root:daemon", (0, 1)), ("7:staff", (7, 50))):
        w.step("COPY", ["f"], "/f", chown=spec)
        st = w.lstat("/f")
        assert st is not None and (st.st_uid, st.st_gid) == expected, spec
    with pytest.raises(ImageError, match=r"Containerfile:2: COPY: --chown=nobody: no user "
                                         r"'nobody' in the image's /etc/passwd"):
        w.plan("COPY", ["f"], "/f", chown="nobody")
    with pytest.raises(ImageError, match=r"no group 'wheel' in the image's /etc/group"):
        w.plan("COPY", ["f"], "/f", chown="app:wheel")


def test_chown_and_chmod_apply_to_the_folders_made_for_the_destination(w: World) -> None:
    """fsutil 183e7fb "copy: fix custom chmod for parent directories": missing destination
    folders get the --chmod number and the --chown owner; copied entries get both too."""
    put(w.ctx, "dir/f", "x", 0o600)
    w.step("COPY", ["dir"], "/made/here", chown="10:20", chmod="750")
    for path in ("/made", "/made/here", "/made/here/f"):
        st = w.lstat(path)
        assert st is not None
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10, 20, 0o750), path


def test_bad_chmod_values_are_refused(w: World) -> None:
    """dispatchCopy: "invalid chmod parameter ... it should be octal string and between 0
    and 07777"; a symbolic mode must parse as chmod(1)."""
    put(w.ctx, "f")
    for bad in ("8", "17777", "01000000000000000007777", "u+q", "a", "u", "go", ",", "z",
                "q+r", "u+x,"):
        with pytest.raises(ImageError, match=r"--chmod="):
            w.plan("COPY", ["f"], "/f", chmod=bad)


D, SUID, SGID, STICKY = stat.S_IFDIR, 0o4000, 0o2000, 0o1000
# tonistiigi/dchapes-mode mode_test.go ``TestApply``, the cases with umask 0:
# (mode before, mode after, chmod argument). The four ``-X`` cases follow the copy that
# moby/buildkit vendors (vendor/github.com/tonistiigi/dchapes-mode/mode.go), where ``-X``
# is ``-x`` (moby/buildkit#5835); plus ``=`` with ``X`` as the Dockerfile reference shows.
DCHAPES_APPLY = [
    (0o777, 0o000, "="), (0o777, 0o777, "+"), (0o421, 0o421, "+"), (0o777, 0o777, "-"),
    (0o421, STICKY | 0o421, "+t"), (STICKY | 0o421, 0o421, "-t"),
    (0, 0o400, "u+r"), (0, 0o200, "u+w"), (0, 0o100, "u+x"), (0, 0, "u+X"),
    (0o001, 0o101, "u+X"), (D, D | 0o100, "u+X"), (0, SUID, "u+s"),
    (0, 0o040, "g+r"), (0, 0o020, "g+w"), (0, 0o010, "g+x"), (0, 0, "g+X"),
    (0o100, 0o110, "g+X"), (D, D | 0o010, "g+X"), (0, SGID, "g+s"),
    (0, 0o004, "o+r"), (0, 0o002, "o+w"), (0, 0o001, "o+x"), (0, 0, "o+X"),
    (0o100, 0o101, "o+X"), (D, D | 0o001, "o+X"), (0, 0, "o+s"),
    (0, 0o421, "0421"), (0, STICKY | SUID | SGID | 0o421, "07421"),
    (0, 0o444, "+r"), (0, 0o222, "+w"), (0, 0o111, "+x"), (0, 0, "+X"), (0o010, 0o111, "+X"),
    (D, D | 0o111, "+X"), (0, SUID | SGID, "+s"),
    (0o777, 0o333, "-r"), (0o777, 0o555, "-w"), (0o777, 0o666, "-x"), (0o777, 0o666, "-X"),
    (D | 0o777, D | 0o666, "-X"), (SUID | SGID | 0o777, 0o777, "-s"),
    (0o777, 0o377, "u-r"), (0o777, 0o577, "u-w"), (0o777, 0o677, "u-x"),
    (0o777, 0o677, "u-X"), (D | 0o777, D | 0o677, "u-X"), (SUID | 0o777, 0o777, "u-s"),
    (0, 0o600, "u=rw"), (0o777, 0o677, "u=rw"), (0o777, 0o077, "u="), (0, 0o666, "=rw"),
    (0o777, 0o666, "=rw"),
    (0o042, 0o442, "u=g"), (0o742, 0o442, "u=g"), (0o722, 0o022, "u=g-w"),
    (0o742, 0o442, "u=g-w"), (0o762, 0o462, "u=g-w"), (0o772, 0o572, "u=g-w"),
    (0o021, 0o121, "u+o"), (0o021, 0o221, "u+g"), (0o021, 0o321, "u+go"),
    (0, 0o764, "a=r,ug=rw,u+x"), (0o777, 0o764, "a=r,ug=rw,u+x"),
    (0, STICKY | 0o624, "o+r,g+w,a+t,g-s,u+og"),
    (SGID | 0o100, STICKY | 0o724, "o+r,g+w,a+t,g-s,u+og"),
    (D | SUID | SGID, D | SUID | STICKY | 0o624, "o+r,g+w,a+t,g-s,u+og"),
    (0o777, 0o644, "644"), (0o777, 0o755, "go-w"), (0, 0o755, "u=rwx,go=rx"),
    (0, 0o755, "u=rwx,go=u-w"), (0o777, 0o700, "go="), (0o770, 0o755, "go=u-w"),
    (0o670, 0o644, "go=u-w"), (0o570, 0o555, "go=u-w"), (0o370, 0o311, "go=u-w"),
    (0o700, 0o755, "u=rwX,go=rX"), (0o600, 0o644, "u=rwX,go=rX"),
    (D | 0o700, D | 0o755, "u=rwX,go=rX"), (0o766, 0o777, "=rw,+X"), (0o666, 0o666, "=rwX"),
]


@pytest.mark.parametrize("before,after,spec", DCHAPES_APPLY)
def test_symbolic_chmod_is_bsd_setmode_as_buildkit_applies_it(before: int, after: int,
                                                              spec: str) -> None:
    """COPY --chmod in symbolic form (Dockerfile 1.14) is applied by BuildKit with
    tonistiigi/dchapes-mode (BSD ``setmode``, umask 0); these are that library's own
    ``TestApply`` vectors. (GNU chmod differs in corners, e.g. ``g=u`` keeps set-gid.)"""
    st_mode = before if before & stat.S_IFMT(0o170000) else stat.S_IFREG | before
    assert oct(cp.Chmod.parse(spec, "here").apply(st_mode)) == oct(stat.S_IMODE(after))


def test_symbolic_chmod_capital_x_is_execute_for_folders(w: World) -> None:
    """Dockerfile reference, COPY --chmod: ``u=rwX,go=rX`` sets folders to 755 and files
    to 644, keeping the execute bit of files that have it."""
    put(w.ctx, "t/plain.txt", "", 0o600)
    put(w.ctx, "t/tool", "", 0o700)
    (w.ctx / "t/sub").mkdir(mode=0o700)
    w.step("COPY", ["t"], "/t", chmod="u=rwX,go=rX")
    modes = {p: stat.S_IMODE(w.lstat(f"/t/{p}").st_mode)  # type: ignore[union-attr]
             for p in ("plain.txt", "tool", "sub")}
    assert modes == {"plain.txt": 0o644, "tool": 0o755, "sub": 0o755}


# -- --exclude, --parents, .dockerignore -------------------------------------------------

def _exclude_context(w: World) -> None:
    """The context of BuildKit's testExcludedFilesOnCopy."""
    for name, text in (("dir1/file-101.png", "2"), ("dir1/file-102.txt", "3"),
                       ("dir1/file-103.jpeg", "4"), ("dir2/file-201.pdf", "6"),
                       ("dir2/file-202.jpeg", "7"), ("dir2/file-203.png", "8"),
                       ("dir3/file-301.mp3", "9"), ("dir3/file-302.mpeg", "10"),
                       ("dir4/file-401.txt", "11")):
        put(w.ctx, name, text)
    link(w.ctx, "dir4/file-402.txt", "file-401.txt")
    link(w.ctx, "dir4/file-403.txt", "file-404.txt")


def test_exclude_follows_buildkits_exclude_tests(w: World) -> None:
    """BuildKit frontend/dockerfile/exclude_patterns_test.go (builders 1, 3, 4 and 6):
    patterns apply to paths inside each copied folder."""
    _exclude_context(w)
    w.step("COPY", ["."], "/1", exclude=["*/*.png", "*/*.jpeg"])
    assert w.listdir("/1/dir1") == ["file-102.txt"]
    assert w.listdir("/1/dir2") == ["file-201.pdf"]
    assert w.listdir("/1/dir4") == ["file-401.txt", "file-402.txt", "file-403.txt"]
    w.step("ADD", ["dir3/"], "/3/", exclude=["*.mp3"])
    assert w.listdir("/3") == ["file-302.mpeg"]
    w.step("COPY", ["dir*"], "/4/",
           exclude=["*.mp3", "*.jpeg", "*.png", "*.pdf", "*.txt"])
    assert w.listdir("/4") == ["file-302.mpeg"]
    w.step("ADD", ["dir*"], "/6", exclude=["*"])
    assert w.listdir("/6") == []
    with pytest.raises(ImageError, match=r"--exclude"):
        w.plan("COPY", ["."], "/x", exclude=["!"])


def test_exclude_with_an_exception_keeps_only_what_it_names(w: World) -> None:
    """fsutil TestCopyIncludeExclude: ``**`` with ``!bar/baz`` copies bar/baz only, making
    bar for it."""
    put(w.ctx, "src/foo", "f")
    put(w.ctx, "src/bar/baz/foo3", "3")
    put(w.ctx, "src/bar/other", "o")
    w.step("COPY", ["src"], "/x", exclude=["**", "!bar/baz"])
    assert w.listdir("/x") == ["bar"]
    assert w.listdir("/x/bar") == ["baz"]
    assert w.read("/x/bar/baz/foo3") == "3"


def test_parents_keeps_the_source_folders(w: World) -> None:
    """Dockerfile reference, COPY --parents: ``./x/a.txt ./y/a.txt`` keep x/ and y/; a
    ``/./`` pivot keeps only what follows it; ``**`` crosses folders."""
    for name in ("x/a.txt", "y/a.txt", "x/y/a.txt", "x/y/b.txt", "src/a.txt", "src/x/b.txt",
                 "src/x/y/c.txt", "src/x/y/d.md"):
        put(w.ctx, name, name)
    w.step("COPY", ["./x/a.txt", "./y/a.txt"], "/no_parents/")
    assert w.listdir("/no_parents") == ["a.txt"]
    w.step("COPY", ["./x/a.txt", "./y/a.txt"], "/parents/", parents=True)
    assert w.read("/parents/x/a.txt") == "x/a.txt"
    assert w.read("/parents/y/a.txt") == "y/a.txt"
    w.step("COPY", ["./x/./y/*.txt"], "/pivot/", parents=True)
    assert w.listdir("/pivot/y") == ["a.txt", "b.txt"]
    w.step("COPY", ["./src/**/*.txt"], "/deep/", parents=True)
    assert w.read("/deep/src/a.txt") == "src/a.txt"
    assert w.read("/deep/src/x/y/c.txt") == "src/x/y/c.txt"
    assert w.listdir("/deep/src/x/y") == ["c.txt"]
    with pytest.raises(ImageError, match=r"COPY ./nope/a.txt: not found"):
        w.plan("COPY", ["./nope/a.txt"], "/p/", parents=True)


def test_dockerignore_hides_what_it_names_from_every_copy(w: World) -> None:
    """BuildKit sends the context without what .dockerignore names
    (dockerui ``MainContext``: ``llb.ExcludePatterns``); ``!`` re-includes; a
    ``<Containerfile>.dockerignore`` wins over .dockerignore (dockerui config.go)."""
    for name in ("app.py", "mod/x.pyc", "mod/x.py", ".git/HEAD", "build/out.o",
                 "build/keep.txt", "notes.md"):
        put(w.ctx, name, name)
    (w.ctx / ".dockerignore").write_text("# comment\n**/*.pyc\n/.git\nbuild\n"
                                         "!build/keep.txt\n*.md\n")
    w.step("COPY", ["."], "/app/")
    assert w.listdir("/app") == [".dockerignore", "app.py", "build", "mod"]
    assert w.listdir("/app/mod") == ["x.py"]
    assert w.listdir("/app/build") == ["keep.txt"]
    w.step("COPY", ["*"], "/star/")  # (the folders' contents: a folder copies its contents)
    assert w.listdir("/star") == [".dockerignore", "app.py", "keep.txt", "x.py"]
    with pytest.raises(ImageError, match=r"COPY notes.md: excluded by the context's ignore "
                                         r"file"):
        w.plan("COPY", ["notes.md"], "/n")
    own = w.ctx / "Containerfile"
    own.write_text("FROM busybox\n")
    (w.ctx / "Containerfile.dockerignore").write_text("app.py\n")
    source = cp.Source.context(str(w.ctx), str(own))
    w.step("COPY", ["."], "/own/", source=source)
    assert "app.py" not in w.listdir("/own") and "notes.md" in w.listdir("/own")


# -- --from, heredocs, the cache key ---------------------------------------------------

def test_copy_from_an_image_reads_its_merged_layers_and_keeps_owners(w: World,
                                                                     tmp_path: Path) -> None:
    """COPY --from reads "the filesystem root of the image or stage": the stage's layers
    as overlayfs merges them (a whiteout deletes, an opaque folder hides what is below),
    with the owners found there."""
    low, high = tmp_path / "s1", tmp_path / "s2"
    put(low, "out/old.txt", "old")
    put(low, "out/gone.txt", "gone")
    put(low, "out/opq/hidden", "h")
    f = put(high, "out/new.txt", "new")
    os.chown(f, 123, 456)
    (high / "out/opq").mkdir(parents=True)
    os.setxattr(high / "out/opq", "trusted.overlay.opaque", b"y")
    put(high, "out/opq/visible", "v")
    os.mknod(high / "out/gone.txt", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    link(high, "out/link", "/out/new.txt")
    stage = Image(ref="build", id="sha256:x", layers=("a", "b"),
                  layer_dirs=(str(low), str(high)))
    source = cp.Source.image(stage, "stage 'build'")
    w.step("COPY", ["/out"], "/res", source=source)
    assert w.listdir("/res") == ["link", "new.txt", "old.txt", "opq"]
    assert w.listdir("/res/opq") == ["visible"]
    st = w.lstat("/res/new.txt")
    assert st is not None and (st.st_uid, st.st_gid) == (123, 456)
    w.step("COPY", ["/out/link"], "/linked", source=source)
    assert w.read("/linked") == "new"
    with pytest.raises(ImageError, match=r"COPY /out/gone.txt: not found in stage 'build'"):
        w.plan("COPY", ["/out/gone.txt"], "/x", source=source)


def test_heredoc_contents_become_0644_files(w: World) -> None:
    """dispatchCopy: a heredoc source is ``llb.Mkfile(name, 0644, data)`` copied like a
    file (into a folder under its name, or as the destination's name)."""
    w.step("COPY", [], "/docs/", contents=[("EOF", "hello\n"), ("two", b"2\n")])
    assert w.read("/docs/EOF") == "hello\n"
    st = w.lstat("/docs/two")
    assert st is not None and stat.S_IMODE(st.st_mode) == 0o644
    w.step("COPY", [], "/named.txt", contents=[("EOF", "x")], chmod="755", chown="app")
    st = w.lstat("/named.txt")
    assert st is not None and (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 1000)


def test_the_cache_key_follows_content_modes_and_names_but_not_mtimes(w: World) -> None:
    """Dockerfile reference, ADD from a URL: "mtime isn't included in the determination of
    whether or not the file has changed"; content, names and modes are."""
    f = put(w.ctx, "d/f.txt", "one")

    def key() -> str:
        return w.plan("COPY", ["d"], "/d").key

    first = key()
    os.utime(f, (5, 5))
    assert key() == first
    f.write_text("two")
    second = key()
    assert second != first
    f.chmod(0o600)
    third = key()
    assert third != second
    f.rename(w.ctx / "d/g.txt")
    assert key() != third
    assert w.plan("COPY", ["d"], "/e").key != key()
    assert w.plan("COPY", ["d"], "/d", chmod="600").key != key()


# -- ADD: local archives -----------------------------------------------------------------

def make_tar(*entries: tarfile.TarInfo | tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o640
                info.uid, info.gid = 7, 8
                info.mtime = 1_500_000_000
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def entry(name: str, kind: bytes, linkname: str = "", mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    info.mtime = 1_400_000_000
    return info


@pytest.mark.parametrize("compress", ["plain", "gzip", "bzip2", "xz"])
def test_add_extracts_a_local_tar_told_by_content(w: World, compress: str) -> None:
    """Dockerfile reference, "Adding local tar archives": a tar, uncompressed or in gzip,
    bzip2 or xz, is extracted into the destination, whatever its name; entries keep their
    mode, owner and mtime (go-archive ``createTarFile``)."""
    data = make_tar(entry("pkg", tarfile.DIRTYPE), ("pkg/mod.py", b"print(1)\n"))
    packed = {"plain": data, "gzip": gzip.compress(data), "bzip2": bz2.compress(data),
              "xz": lzma.compress(data)}[compress]
    (w.ctx / "bundle.bin").write_bytes(packed)
    layer = w.step("ADD", ["bundle.bin"], "/opt")
    assert w.read("/opt/pkg/mod.py") == "print(1)\n"
    st = os.lstat(layer / "opt/pkg/mod.py")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == \
        (0o640, 7, 8, 1_500_000_000)
    (w.ctx / "second.tar").write_bytes(make_tar(("pkg/other.py", b"2\n")))
    w.step("ADD", ["bundle.bin", "second.tar"], "/both")  # archives extract into the folder
    assert w.listdir("/both/pkg") == ["mod.py", "other.py"]
    w.step("ADD", ["bundle.bin"], "/raw.bin", unpack=False)
    assert (w.view().read_bytes("/raw.bin") or b"") == packed
    w.step("COPY", ["bundle.bin"], "/copied.bin")
    assert (w.view().read_bytes("/copied.bin") or b"") == packed


def test_add_copies_a_file_that_only_looks_like_an_archive(w: World) -> None:
    """Dockerfile reference, note under "Adding local tar archives": an empty file named
    .tar.gz is not recognized and is copied to the destination; so is a gzip of
    something that is not a tar (BuildKit ``isArchivePath``)."""
    (w.ctx / "empty.tar.gz").write_bytes(b"")
    (w.ctx / "text.gz").write_bytes(gzip.compress(b"just text\n" * 100))
    w.step("ADD", ["empty.tar.gz", "text.gz"], "/d/")
    assert w.listdir("/d") == ["empty.tar.gz", "text.gz"]


def test_add_overwrites_files_and_merges_folders(w: World) -> None:
    """Dockerfile reference: the result is "the union of whatever existed at the
    destination path and the contents of the source tree, with conflicts resolved in favor
    of the content being added, on a file-by-file basis"."""
    put(w.base, "srv/keep.txt", "keep")
    put(w.base, "srv/over.txt", "old")
    (w.ctx / "a.tar").write_bytes(make_tar(("over.txt", b"new"), ("added.txt", b"add")))
    w.step("ADD", ["a.tar"], "/srv/")
    assert w.listdir("/srv") == ["added.txt", "keep.txt", "over.txt"]
    assert w.read("/srv/over.txt") == "new"


def test_add_entries_resolve_with_the_destination_as_root(w: World) -> None:
    """BuildKit unpacks with ``chrootarchive.Untar`` rooted at the destination: an entry
    below a symlink follows it there, an absolute link target starts at the destination
    (go-archive ``resolveArchivePath``), and an entry without its folders gets 0755 root
    folders (``createImpliedDirectories``)."""
    (w.base / "opt/usr/lib").mkdir(parents=True)
    link(w.base, "opt/lib", "/usr/lib")
    (w.ctx / "a.tar").write_bytes(make_tar(("lib/x.so", b"so"), ("new/deep/y", b"y")))
    layer = w.step("ADD", ["a.tar"], "/opt")
    assert w.read("/opt/usr/lib/x.so") == "so"
    assert not (layer / "usr").exists()
    st = os.lstat(layer / "opt/new/deep")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)


def test_add_through_a_symlink_the_archive_made_stays_in_the_destination(w: World) -> None:
    """The "tar-slip" shape: an entry ``esc -> /etc`` (or ``../../..``) then ``esc/x``.
    go-archive resolves the parent inside the destination (``resolveArchivePath``), so
    ``esc/x`` lands in <dest>/etc/x and nothing outside the layer is written. A destination
    that is a symlink of the image is followed first (unpack.go: ``fs.RootPath``)."""
    (w.base / "real").mkdir()
    link(w.base, "dest", "/real")
    (w.ctx / "slip.tar").write_bytes(make_tar(
        entry("esc", tarfile.SYMTYPE, "/etc"), ("esc/x", b"abs"),
        entry("up", tarfile.SYMTYPE, "../../../../.."), ("up/y", b"rel")))
    layer = w.step("ADD", ["slip.tar"], "/dest/")
    assert (layer / "real/etc/x").read_text() == "abs"
    assert (layer / "real/y").read_text() == "rel"
    assert os.readlink(layer / "real/esc") == "/etc"
    assert w.read("/etc/passwd").startswith("root:")  # the image's own /etc is untouched
    assert sorted(p.name for p in layer.iterdir()) == ["real"]


def test_add_a_folder_entry_replaces_a_symlink_as_go_archive_does(w: World) -> None:
    """go-archive ``Unpack``: an existing non-folder at an entry's path is removed and
    replaced, a folder entry onto a symlink too (unlike COPY, which follows it)."""
    usrmerge(w)
    (w.ctx / "root.tar").write_bytes(make_tar(entry("bin", tarfile.DIRTYPE),
                                              ("bin/tool", b"t")))
    w.step("ADD", ["root.tar"], "/")
    st = w.lstat("/bin")
    assert st is not None and stat.S_ISDIR(st.st_mode)
    assert w.listdir("/bin") == ["tool"]


def test_add_a_folder_over_a_replaced_folder_hides_the_old_contents(w: World) -> None:
    """An archive replacing /d by a file and then by a folder leaves only the new folder's
    entries, as removing and re-creating it does: the layer's folder is opaque."""
    put(w.base, "d/old", "old")
    (w.ctx / "a.tar").write_bytes(make_tar(("d", b"file"), entry("d", tarfile.DIRTYPE),
                                           ("d/new", b"n")))
    w.step("ADD", ["a.tar"], "/")
    assert w.listdir("/d") == ["new"]


def test_add_hardlinks_within_the_destination(w: World) -> None:
    """go-archive ``resolveHardlinkTarget``: a hardlink names an earlier entry or a file
    already at the destination (copied up into the layer first), never one outside."""
    put(w.base, "data/base.txt", "base")
    (w.ctx / "a.tar").write_bytes(make_tar(("one", b"1"), entry("two", tarfile.LNKTYPE, "one"),
                                           entry("three", tarfile.LNKTYPE, "/base.txt")))
    layer = w.step("ADD", ["a.tar"], "/data")
    assert os.stat(layer / "data/one").st_ino == os.stat(layer / "data/two").st_ino
    assert w.read("/data/three") == "base"
    (w.ctx / "b.tar").write_bytes(make_tar(entry("x", tarfile.LNKTYPE, "../../etc/passwd")))
    with pytest.raises(ImageError, match=r"archive entry 'x': a hardlink to "
                                         r"'\.\./\.\./etc/passwd', outside the destination"):
        w.step("ADD", ["b.tar"], "/data")


@pytest.mark.parametrize("bad,problem", [
    (entry("../escape", tarfile.REGTYPE), "outside the destination"),
    (entry("a/../../escape", tarfile.REGTYPE), "outside the destination"),
    (entry("dir/.wh.file", tarfile.REGTYPE), "mark deletions in a layer"),
    (entry("null", tarfile.CHRTYPE), "a device node"),
])
def test_add_refuses_entries_a_layer_cannot_hold(w: World, bad: tarfile.TarInfo,
                                                 problem: str) -> None:
    """go-archive ``Unpack`` refuses names outside the destination ("invalid entry
    name"); a layer cannot hold device nodes nor names that mark deletions (OCI image
    spec, layer.md, whiteouts): each is refused with the entry named."""
    (w.ctx / "bad.tar").write_bytes(make_tar(bad))
    with pytest.raises(ImageError, match=rf"Containerfile:2: ADD bad\.tar: archive entry "
                                         rf"'{bad.name}': .*{problem}"):
        w.step("ADD", ["bad.tar"], "/x/")


def test_add_a_cut_short_archive_is_a_clear_error(w: World) -> None:
    """A damaged archive fails the step naming the source."""
    data = gzip.compress(make_tar(("big", b"x" * 100_000)))
    (w.ctx / "cut.tgz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError, match=r"ADD cut\.tgz: not a readable tar archive"):
        w.step("ADD", ["cut.tgz"], "/x/")


def test_add_chown_owns_every_extracted_entry(w: World) -> None:
    """BuildKit ``unpack`` passes --chown as ``ChownOpts``: every entry gets that owner."""
    (w.ctx / "a.tar").write_bytes(make_tar(entry("d", tarfile.DIRTYPE), ("d/f", b"f")))
    w.step("ADD", ["a.tar"], "/o", chown="app:staff")
    for path in ("/o/d", "/o/d/f"):
        st = w.lstat(path)
        assert st is not None and (st.st_uid, st.st_gid) == (1000, 50), path


# -- the pieces -------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,name,expected", [
    ("*", ".hidden", True), ("a?c", "abc", True), ("a?c", "ac", False),
    ("[a-c]x", "bx", True), ("[^a-c]x", "bx", False), ("[^a-c]x", "dx", True),
    ("\\*", "*", True), ("\\*", "a", False), ("[", "[", None), ("[]]", "]", None),
    ("a[\\]]b", "a]b", True), ("[z-a]", "m", False),
])
def test_match_regex_is_go_filepath_match(pattern: str, name: str, expected: bool | None
                                          ) -> None:
    """Go ``path/filepath.Match`` (match.go): ``^`` negates a class, ``\\`` escapes, an
    unclosed or empty class is ``ErrBadPattern`` (None here)."""
    regex = cp.match_regex(pattern)
    if expected is None:
        assert regex is None
    else:
        assert regex is not None and bool(regex.fullmatch(name)) is expected


@pytest.mark.parametrize("patterns,path,expected", [
    (["*.pyc"], "x.pyc", True), (["*.pyc"], "a/x.pyc", False), (["**/*.pyc"], "a/b/x.pyc", True),
    (["build"], "build/out.o", True), (["build", "!build/keep"], "build/keep", False),
    (["**"], "any/thing", True), (["docs/**"], "docs/a/b", True), (["**/foo"], "foo", True),
    (["a?c"], "abc", True), (["a/*/c"], "a/b/c", True), (["a/*/c"], "a/b/d/c", False),
])
def test_patterns_are_moby_patternmatcher(patterns: list[str], path: str, expected: bool
                                          ) -> None:
    """moby/patternmatcher ``MatchesOrParentMatches`` (the .dockerignore rules)."""
    assert cp.Patterns(patterns).matches(path) is expected


@pytest.mark.parametrize("dest,workdir,expected", [
    ("/abs", "/w", "/abs"), ("/abs/", "/w", "/abs/"), ("rel", "/w", "/w/rel"),
    (".", "/w", "/w/"), ("", "/w", "/w/"), ("a/.", "/w", "/w/a/"), ("../up", "/w/x", "/w/up"),
    ("/../..", "/", "/"),
])
def test_destinations_are_cleaned_keeping_the_trailing_slash(dest: str, workdir: str,
                                                              expected: str) -> None:
    """BuildKit ``pathRelativeToWorkingDir`` / ``system.NormalizePath(.., keepSlash)``."""
    assert cp.dest_path(dest, workdir) == expected
