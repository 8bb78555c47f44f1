"""Layered images end to end: Containerfile builds, the step cache, diff and commit, OCI and
docker-archive export checked by real tools (skopeo, umoci), imports of what real tools
made, safe unpacking, xdist workers sharing one build, and the store's list/rm/prune.

Most tests use a store of their own in a temporary directory (a "fresh" store: nothing
cached from earlier runs) and run boxes from it through an ``Engine`` holding that store.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pytest_nsbox
from pytest_nsbox import Box
from pytest_nsbox.errors import ImageError
from pytest_nsbox import image_commands as image_commands
from pytest_nsbox.runtime.commit import commit_box
from pytest_nsbox.runtime.engine import Engine, check_host, default_engine
from pytest_nsbox.state import StateDirs

REPO = Path(pytest_nsbox.__file__).resolve().parent.parent
INIT_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}
MOUNTS = {"/proc", "/dev", "/sys"}


def _can_run() -> str | None:
    try:
        check_host()
    except Exception as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")
needs_tools = pytest.mark.skipif(not (shutil.which("skopeo") and shutil.which("umoci")),
                                 reason="skopeo and umoci (Debian packages; ci/setup installs "
                                        "them) check what we write")


class Fresh:
    """An image store of its own, and an Engine whose boxes use it."""

    def __init__(self, root: Path) -> None:
        self.dirs = StateDirs(store=str(root / "store"), run=default_engine().dirs.run)
        self.host = Engine(dirs=self.dirs)
        self.store = self.host.store
        self.store.images_dir = str(root / "fixtures_images")
        self.lines: list[str] = []
        self.store.progress = self.lines.append

    def box(self, image: str, **keys: object) -> Box:
        return Box(image=image, engine=self.host, **keys)

    def image_dir(self, name: str, containerfile: str, **files: str) -> Path:
        folder = Path(self.store.images_dir or "") / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Containerfile").write_text(containerfile)
        for rel, text in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return folder

    def close(self) -> None:
        self.host.release_owner_lock()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fresh]:
    f = Fresh(tmp_path)
    yield f
    f.close()


def run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{cmd}: {result.stderr}"
    return result.stdout


def box_tree(box: Box) -> dict[str, str]:
    """What the box sees of its root filesystem: path -> kind (and md5 of files)."""
    out: dict[str, str] = {}
    for kind in ("d", "l", "f"):
        for path in box.run(f"find / -xdev -type {kind}", check=True).stdout.split():
            out[path] = kind
    for line in box.run("find / -xdev -type f | xargs md5sum", check=True).stdout.splitlines():
        digest, path = line.split(maxsplit=1)
        out[path] = "f " + digest
    for path in (*INIT_FILES, *MOUNTS, "/"):
        out.pop(path, None)
    return out


def dir_tree(root: Path) -> dict[str, str]:
    import hashlib

    out: dict[str, str] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(top) / name
            rel = "/" + str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "l"
            elif path.is_dir():
                out[rel] = "d"
            else:
                out[rel] = "f " + hashlib.md5(path.read_bytes()).hexdigest()
    for path in MOUNTS:
        out.pop(path, None)
    return out


APP = """\
FROM busybox
ENV GREETING=hello
RUN echo welcome > /etc/motd && mkdir -p /app && echo 1 > /app/version
COPY --chown=daemon hello.sh /app/
RUN rm /etc/motd && chmod 755 /app/hello.sh
WORKDIR /app
LABEL purpose=test
"""
HELLO = '#!/bin/sh\necho "$GREETING from $(pwd)"\n'


def built(lines: list[str]) -> list[str]:
    """The progress lines of steps that ran (not cached)."""
    return [line for line in lines if re.search(r" step \d+/\d+: ", line)
            and not line.endswith("(cached)")]


# -- build and cache ----------------------------------------------------------------------

def test_three_steps_make_three_layers_and_a_rebuild_runs_none(fresh: Fresh) -> None:
    fresh.image_dir("app", APP, **{"hello.sh": HELLO})
    started = time.monotonic()
    image = fresh.store.build("app")
    first = time.monotonic() - started
    busybox = fresh.store.get("busybox")
    assert len(image.layers) == 1 + 3 and image.layers[0] == busybox.layers[0]
    assert len(built(fresh.lines)) == 3
    assert image.env["GREETING"] == "hello" and image.workdir == "/app"
    assert image.labels == {"purpose": "test"}
    assert [h.get("empty_layer", False) for h in image.history] == \
        [False, True, False, False, False, True, True]

    fresh.lines.clear()
    fresh.store._cache.clear()
    started = time.monotonic()
    again = fresh.store.build("app")
    second = time.monotonic() - started
    print(f"\nfirst build {first:.3f} s, cached rebuild {second:.3f} s, "
          f"ratio {second / first:.3f}")
    assert again.id == image.id and again.layers == image.layers
    assert sum("(cached)" in line for line in fresh.lines) == 3
    assert built(fresh.lines) == []

    # A changed COPY source invalidates that step and the ones after it, not the ones before.
    (Path(fresh.store.images_dir or "") / "app/hello.sh").write_text(HELLO + "# changed\n")
    fresh.lines.clear()
    changed = fresh.store.build("app")
    assert changed.layers[:2] == image.layers[:2] and changed.layers[2:] != image.layers[2:]
    assert sum("(cached)" in line for line in fresh.lines) == 1


def test_a_later_rm_hides_the_file_and_diff_is_docker_diff(fresh: Fresh) -> None:
    fresh.image_dir("app", APP, **{"hello.sh": HELLO})
    fresh.store.build("app")
    with fresh.box("app") as box:
        assert not box.exists("/etc/motd")
        assert box.run("./hello.sh", check=True).stdout == "hello from /app\n"
        assert box.run("stat -c %U:%a /app/hello.sh; cat /app/version").stdout == \
            "daemon:755\n1\n"
        assert box.diff() == []
        box.run("touch /tmp/a; rm /etc/passwd; echo x >> /etc/group", check=True)
        assert [str(c) for c in box.diff()] == [
            "C /etc", "C /etc/group", "D /etc/passwd", "C /tmp", "A /tmp/a"]


def test_build_errors_name_the_file_line_and_what_went_wrong(fresh: Fresh) -> None:
    folder = fresh.image_dir("bad", "FROM busybox\nRUN echo oops >&2; exit 3\n")
    with pytest.raises(ImageError) as info:
        fresh.store.build("bad")
    text = str(info.value)
    assert f"{folder}/Containerfile:2: RUN echo oops >&2; exit 3 exited with status 3" in text
    assert "oops" in text
    fresh.image_dir("bad", "FROM busybox\nCOPY ../../etc/passwd /x\n")
    with pytest.raises(ImageError, match=r"Containerfile:2: COPY \.\./\.\./etc/passwd: outside"):
        fresh.store.build("bad")
    fresh.image_dir("bad", "FROM busybox\nRUNN true\n")
    with pytest.raises(ImageError, match="Containerfile:2: RUNN: 'RUNN' is not supported"):
        fresh.store.build("bad")
    fresh.image_dir("bad", "FROM nonesuch-image\n")
    with pytest.raises(ImageError, match="Containerfile:1: FROM nonesuch-image: .*unknown"):
        fresh.store.build("bad")
    fresh.image_dir("loop", "FROM loop\n")
    with pytest.raises(ImageError, match="refers back to itself"):
        fresh.store.build("loop")
    assert os.listdir(fresh.store.path("tmp")) == []  # nothing half-built left behind


def test_from_another_fixtures_image_and_network_option(fresh: Fresh) -> None:
    fresh.image_dir("base", "FROM busybox\nRUN echo base > /base\n")
    fresh.image_dir("child", "FROM base\nWORKDIR /work/dir\nRUN pwd > here && "
                             "ip -o link | cut -d: -f2 | tr -d ' ' > /links\n"
                             "RUN --network=host ip -o link | wc -l > /hostlinks\n")
    child = fresh.store.get("child")
    base = fresh.store.get("base")
    assert child.layers[:2] == base.layers
    with fresh.box("child") as box:
        assert box.read_text("/base") == "base\n"
        assert box.read_text("/work/dir/here") == "/work/dir\n"
        assert box.read_text("/links").split() == ["lo"]  # RUN has no network by default


def test_host_based_fixture_image_installs_a_python_tool(tmp_path: Path) -> None:
    """fixtures_images/pytool: FROM host, COPY a source tree, RUN pip install."""
    f = Fresh(tmp_path)
    try:
        f.store.images_dir = str(REPO / "fixtures_images")
        image = f.store.get("pytool")
        assert image.from_host_os
        # Layers of host-based images live in the run directory (tmpfs), never on the host
        # root's filesystem: overlayfs refuses those as "overlapping" lower layers.
        root_dev = os.stat("/").st_dev
        for d in image.layer_dirs[1:]:
            assert os.stat(d).st_dev != root_dev
        with f.box("pytool") as box:
            result = box.run("greet; greet box; which greet; pwd", check=True)
            assert result.stdout.split("\n")[:4] == [
                "hello, nsbox", "hello, box", "/usr/local/bin/greet", "/srv"]
            assert not box.exists("/src/greet/build")
            committed = commit_box(box)
            assert committed.from_host_os
        with pytest.raises(ImageError, match="based on 'host'.*cannot be saved"):
            committed.save(str(tmp_path / "x"), "oci")
    finally:
        f.close()


# -- commit, save, load -------------------------------------------------------------------

@needs_tools
def test_commit_save_is_read_by_real_tools_and_loads_back(fresh: Fresh, tmp_path: Path) -> None:
    fresh.image_dir("app", APP, **{"hello.sh": HELLO})
    fresh.store.build("app")
    with fresh.box("app") as box:
        box.run("touch /tmp/a; rm /etc/passwd; echo x >> /etc/group; mkdir -p /srv/d; "
                "ln -s /app/hello.sh /srv/d/link; ln /app/version /srv/d/hard", check=True)
        image = commit_box(box, "committed:v1")
        seen = box_tree(box)
    assert image.ref == "committed:v1" and len(image.layers) == 5
    assert fresh.store.get("committed:v1").id == image.id

    layout, archive = tmp_path / "layout", tmp_path / "image.tar"
    image.save(str(layout), "oci")
    image.save(str(archive), format="docker-archive")
    for transport in (f"oci:{layout}:v1", f"docker-archive:{archive}"):
        info = json.loads(run("skopeo", "inspect", transport))
        assert len(info["Layers"]) == 5
        assert "GREETING=hello" in info["Env"]
    run("umoci", "unpack", "--image", f"{layout}:v1", str(tmp_path / "bundle"))
    assert dir_tree(tmp_path / "bundle" / "rootfs") == seen
    # docker-archive through skopeo into an OCI layout, unpacked by umoci: the same tree.
    run("skopeo", "copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'via'}:v1")
    run("umoci", "unpack", "--image", f"{tmp_path / 'via'}:v1", str(tmp_path / "bundle2"))
    assert dir_tree(tmp_path / "bundle2" / "rootfs") == seen

    run("skopeo", "copy", f"oci:{layout}:v1", f"oci-archive:{tmp_path / 'oci.tar'}:v1")
    want = [fresh.store.diff_id_of(lid) for lid in image.layers]
    for source in (str(layout), str(archive), str(tmp_path / "oci.tar")):
        other = Fresh(tmp_path / f"other-{uuid.uuid4().hex[:6]}")
        try:
            loaded = other.store.load(source)
            assert [other.store.diff_id_of(lid) for lid in loaded.layers] == want
            assert loaded.id == image.id
            with other.box(loaded.id) as box:
                assert box_tree(box) == seen
        finally:
            other.close()


@needs_tools
def test_an_image_made_by_umoci_with_whiteout_and_opaque_dir_imports_and_runs(
        fresh: Fresh, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    busybox = Path(fresh.store.get("busybox").layer_dirs[0])
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:t")
    run("umoci", "unpack", "--image", f"{layout}:t", str(tmp_path / "b1"))
    run("cp", "-a", f"{busybox}/.", str(tmp_path / "b1/rootfs"))
    (tmp_path / "b1/rootfs/etc/motd").write_text("motd\n")
    (tmp_path / "b1/rootfs/srv/data").mkdir(parents=True)
    (tmp_path / "b1/rootfs/srv/data/old").write_text("old\n")
    run("umoci", "repack", "--image", f"{layout}:t", str(tmp_path / "b1"))
    run("umoci", "unpack", "--image", f"{layout}:t", str(tmp_path / "b2"))
    (tmp_path / "b2/rootfs/etc/motd").unlink()  # umoci writes etc/.wh.motd
    run("umoci", "repack", "--image", f"{layout}:t", str(tmp_path / "b2"))
    # An opaque directory, packed by GNU tar and added verbatim.
    (tmp_path / "op/srv/data").mkdir(parents=True)
    (tmp_path / "op/srv/data/.wh..wh..opq").write_text("")
    (tmp_path / "op/srv/data/new").write_text("new\n")
    run("tar", "-C", str(tmp_path / "op"), "-cf", str(tmp_path / "op.tar"), "srv")
    run("umoci", "raw", "add-layer", "--image", f"{layout}:t", str(tmp_path / "op.tar"))
    run("skopeo", "copy", f"oci:{layout}:t", f"docker-archive:{tmp_path / 'd.tar'}:umoci/bb:1")

    for ref in (f"oci:{layout}:t", f"docker-archive:{tmp_path / 'd.tar'}"):
        image = fresh.store.get(ref)
        assert len(image.layers) == 3
        with fresh.box(ref) as box:
            assert box.run("echo ok", check=True).stdout == "ok\n"
            assert not box.exists("/etc/motd")
            assert box.listdir("/srv/data") == ["new"]
            assert box.diff() == []
    assert fresh.store.get("umoci/bb:1").layers == image.layers


def _docker_archive(path: Path, layer: bytes) -> None:
    import hashlib

    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    chex = hashlib.sha256(config).hexdigest()
    with tarfile.open(path, "w") as tar:
        for name, data in ((f"{chex}.json", config), ("l1/layer.tar", layer),
                           ("manifest.json", json.dumps([{"Config": f"{chex}.json",
                                                          "RepoTags": ["evil:1"],
                                                          "Layers": ["l1/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _evil_layer(*entries: tuple[str, str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, arg in entries:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, arg
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, arg
                tar.addfile(info)
            else:
                info.size = len(arg)
                tar.addfile(info, io.BytesIO(arg.encode()))
    return out.getvalue()


@pytest.mark.parametrize("entries, match", [
    ([("../../../../../../tmp/nsbox-evil-{tag}", "file", "x")], "climbs out"),
    ([("esc", "symlink", "/tmp"), ("esc/nsbox-evil-{tag}", "file", "x")], "through the symlink"),
    ([("ok", "file", "fine"), ("link", "hardlink", "/etc/shadow")], "absolute path"),
    ([("link", "hardlink", "../../../etc/shadow")], "climbs out"),
])
def test_malicious_archives_are_refused_and_nothing_is_imported(
        fresh: Fresh, tmp_path: Path, entries: list, match: str) -> None:
    tag = uuid.uuid4().hex[:8]
    entries = [(n.format(tag=tag), k, a.format(tag=tag)) for n, k, a in entries]
    archive = tmp_path / "evil.tar"
    _docker_archive(archive, _evil_layer(*entries))
    shadow = Path("/etc/shadow").stat() if Path("/etc/shadow").exists() else None
    with pytest.raises(ImageError, match=match) as info:
        fresh.store.load(str(archive))
    assert "entry" in str(info.value)
    assert not Path(f"/tmp/nsbox-evil-{tag}").exists()
    if shadow is not None:
        assert Path("/etc/shadow").stat().st_nlink == shadow.st_nlink
    assert os.listdir(fresh.store.path("tmp")) == []
    assert not os.path.isdir(fresh.store.path("layers")) or \
        os.listdir(fresh.store.path("layers")) == []
    assert fresh.store.tags() == {}


def test_a_changed_blob_in_a_layout_is_rejected_by_digest(fresh: Fresh, tmp_path: Path) -> None:
    fresh.image_dir("small", "FROM busybox\nRUN echo data > /data\n")
    image = fresh.store.build("small")
    layout = tmp_path / "layout"
    image.save(str(layout))
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"][7:])
                          .read_text())
    top = layout / "blobs/sha256" / manifest["layers"][-1]["digest"][7:]
    data = bytearray(top.read_bytes())
    other = Fresh(tmp_path / "other")
    try:
        # Same size, other bytes: a gzip stream that decodes to a different tar.
        import gzip

        tar = bytearray(gzip.decompress(bytes(data)))
        tar[tar.index(b"data\n")] = ord("D")
        top.write_bytes(gzip.compress(bytes(tar), mtime=0))
        with pytest.raises(ImageError, match="digest .* not sha256:|changed or damaged"):
            other.store.load(str(layout))
        assert os.listdir(other.store.path("tmp")) == []
    finally:
        other.close()


def test_a_multi_platform_index_picks_this_hosts_architecture(fresh: Fresh,
                                                              tmp_path: Path) -> None:
    import hashlib

    from pytest_nsbox.kernel.arch import oci_platform as host_platform

    fresh.image_dir("small", "FROM busybox\nRUN echo mine > /arch\n")
    layout = tmp_path / "layout"
    fresh.store.build("small").save(str(layout), tag="mine")
    index = json.loads((layout / "index.json").read_text())
    mine = index["manifests"][0]
    bogus = b'{"schemaVersion": 2, "layers": []}'
    bhex = hashlib.sha256(bogus).hexdigest()
    (layout / "blobs/sha256" / bhex).write_bytes(bogus)
    arch, _ = host_platform()
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [
                  {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": f"sha256:{bhex}", "size": len(bogus),
                   "platform": {"os": "linux", "architecture": "s390x"}},
                  {**mine, "platform": {"os": "linux", "architecture": arch}}]}
    raw = json.dumps(nested).encode()
    nhex = hashlib.sha256(raw).hexdigest()
    (layout / "blobs/sha256" / nhex).write_bytes(raw)
    index["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json",
                           "digest": f"sha256:{nhex}", "size": len(raw),
                           "annotations": {"org.opencontainers.image.ref.name": "multi"}}]
    (layout / "index.json").write_text(json.dumps(index))
    with fresh.box(f"oci:{layout}:multi") as box:
        assert box.read_text("/arch") == "mine\n"


# -- xdist --------------------------------------------------------------------------------

def test_two_xdist_workers_build_a_new_image_once(pytester: pytest.Pytester) -> None:
    name = f"xd{uuid.uuid4().hex[:10]}"
    folder = pytester.path / "fixtures_images" / name
    folder.mkdir(parents=True)
    (folder / "Containerfile").write_text(
        f"FROM busybox\nRUN sleep 1 && echo {name} > /name\nRUN echo two > /two\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_uses_image(nsbox_factory, n):
            import os
            name = [d for d in os.listdir("fixtures_images")][0]
            box = nsbox_factory(image=name)
            assert box.read_text("/name") == name + "\\n"
            assert box.read_text("/two") == "two\\n"
    """)
    store = pytester.path / "store"
    pytester.makeini(f"[pytest]\nnsbox_store_dir = {store}\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    log = (store / "build.log").read_text().splitlines()
    mine = [line for line in log if f"image={name} " in line]
    assert len(mine) == 2, mine  # each of the two RUN steps built by one worker only
    assert {line.split(" step=")[1].split()[0] for line in mine} == {"2/3", "3/3"}


# -- list, rm, prune ----------------------------------------------------------------------

def test_list_remove_and_prune(fresh: Fresh) -> None:
    fresh.image_dir("one", "FROM busybox\nRUN echo 1 > /one\n")
    fresh.image_dir("two", "FROM one\nRUN echo 2 > /two\n")
    two = fresh.store.get("two")
    one = fresh.store.get("one")
    listed = {tuple(r["tags"]): r for r in image_commands.list_images(fresh.store)}
    assert set(listed) == {("one",), ("two",)}
    assert listed[("two",)]["layers"] == 3 and listed[("two",)]["size"] > 0
    assert image_commands.prune(fresh.store) == []  # everything is in use
    assert image_commands.remove(fresh.store, "two") == ["two", two.id]
    removed = image_commands.prune(fresh.store)
    assert removed == [two.layers[-1]]
    assert os.path.isdir(fresh.store.path("layers", one.layers[-1]))
    with pytest.raises(ImageError, match="no such tag or image id"):
        image_commands.remove(fresh.store, "two")
    fresh.store._cache.clear()
    rebuilt = fresh.store.get("two")  # the cache entry went with the layer: built anew
    assert rebuilt.layers[:2] == one.layers
    assert image_commands.build(fresh.store, "one").id == one.id
