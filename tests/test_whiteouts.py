"""Whiteouts of imported layers as a running box sees them, whatever their order in the tar."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_images import Fresh, _can_run  # the suite's private-store helper

from pytest_nsbox.images import layers
from pytest_nsbox.kernel.arch import oci_platform as host_platform

pytestmark = pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def tar_of(*entries: tuple[str, bytes | None]) -> bytes:
    """A layer tar of (name, file content, or None for a directory), in the order given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Layout:
    """An OCI image layout written by hand (image-spec image-layout.md), one image in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest).write_bytes(data)
        return "sha256:" + digest

    def write(self, tag: str, base: Path, tars: list[bytes]) -> None:
        """The image ``tag``: the layer directory ``base`` (gzip'd), then ``tars`` as given."""
        gz = io.BytesIO()
        digest, diff_id, size = layers.write_blob(str(base), gz, compress=True)
        self.blob(gz.getvalue())
        descs = [{"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size}]
        diff_ids = [diff_id]
        for data in tars:
            descs.append({"mediaType": OCI_LAYER, "digest": self.blob(data), "size": len(data)})
            diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
        arch, _variant = host_platform()
        config = json.dumps({"architecture": arch, "os": "linux",
                             "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": self.blob(config), "size": len(config)},
            "layers": descs}).encode()
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": self.blob(manifest), "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
        (self.root / "index.json").write_text(json.dumps(index))


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Fresh]:
    f = Fresh(tmp_path)
    yield f
    f.close()


LOWER = tar_of(("a", None), ("a/b", None), ("a/b/old", b"old\n"), ("a/keep", b"keep\n"))
WHITEOUT = ("a/.wh.b", b"")
CONTENT = [("a/b", None), ("a/b/c", None), ("a/b/c/new", b"new\n")]


@pytest.mark.parametrize("upper", [
    pytest.param([WHITEOUT, *CONTENT], id="whiteout-first"),
    pytest.param([*CONTENT, WHITEOUT], id="whiteout-last"),
    pytest.param([CONTENT[2], WHITEOUT], id="no-directory-entries"),
    pytest.param([("a/b/c/new", b"new\n"), ("a/b/.wh..wh..opq", b"")], id="opaque-marker-last"),
])
def test_a_box_lists_only_the_new_layers_entries(
        fresh: Fresh, tmp_path: Path, upper: list[tuple[str, bytes | None]]) -> None:
    """OCI image-spec layer.md "Whiteouts": whiteouts apply only to lower layers, the
    same layer's entries are not hidden, and entry order does not matter. Issue 9's
    failing input: layer 1 ``a/b/old``, layer 2 ``a/.wh.b`` and ``a/b/c/new``; in the box
    ``/a/b`` holds only ``c``."""
    busybox = Path(fresh.store.get("busybox").layer_dirs[0])
    layout = Layout(tmp_path / "layout")
    layout.write("t", busybox, [LOWER, tar_of(*upper)])
    with fresh.box(f"oci:{layout.root}:t") as box:
        assert box.listdir("/a/b") == ["c"]
        assert box.run("ls -A /a/b", check=True).stdout == "c\n"
        assert box.read_text("/a/b/c/new") == "new\n"
        assert box.read_text("/a/keep") == "keep\n"
        assert not box.exists("/a/b/old")
        assert box.diff() == []
