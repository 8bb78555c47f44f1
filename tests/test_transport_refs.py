"""Boxes on ``oci:``, ``oci-archive:`` and ``docker-archive:`` references that skopeo wrote,
named the way skopeo names them (``oci:/layout:app:1.0``)."""
from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_images import Fresh, _can_run  # the suite's private-store helper

from pytest_nsbox.errors import ImageError

pytestmark = [
    pytest.mark.skipif(_can_run() is not None, reason=f"nsbox: {_can_run()}"),
    pytest.mark.skipif(shutil.which("skopeo") is None,
                       reason="skopeo (Debian package; ci/setup installs it) writes the layouts"),
]


def skopeo(*args: str) -> None:
    result = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"skopeo {args}: {result.stderr}"


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Fresh, Path]]:
    """A private store, and an OCI layout holding two images skopeo named ``app:1.0`` and
    ``app:2.0`` (busybox, and busybox with ``/marker``)."""
    fresh = Fresh(tmp_path)
    try:
        fresh.store.get("busybox").save(str(tmp_path / "one"), "oci", tag="v1")
        with fresh.box("busybox") as box:
            box.write_text("/marker", "two\n")
            box.commit("two:v1").save(str(tmp_path / "two"), "oci", tag="v1")
        skopeo("copy", f"oci:{tmp_path / 'one'}:v1", f"oci:{tmp_path / 'layout'}:app:1.0")
        skopeo("copy", f"oci:{tmp_path / 'two'}:v1", f"oci:{tmp_path / 'layout'}:app:2.0")
        yield fresh, tmp_path / "layout"
    finally:
        fresh.close()


def marker(fresh: Fresh, ref: str) -> str:
    with fresh.box(ref) as box:
        return box.run("cat /marker 2>/dev/null || echo none", check=True).stdout.strip()


def test_a_box_on_a_ref_name_with_a_colon(layout: tuple[Fresh, Path]) -> None:
    """containers/image oci/internal ``SplitPathAndImage``: ``oci:PATH:REF`` splits at the
    first ':', so ``oci:/layout:app:1.0`` is ref ``app:1.0``, which ``skopeo copy`` wrote into
    index.json's ``org.opencontainers.image.ref.name`` (issue 9's failing input)."""
    fresh, path = layout
    names = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((path / "index.json").read_text())["manifests"]]
    assert names == ["app:1.0", "app:2.0"]
    assert marker(fresh, f"oci:{path}:app:1.0") == "none"
    assert marker(fresh, f"oci:{path}:app:2.0") == "two"


def test_source_indexes_and_the_only_image_rule(layout: tuple[Fresh, Path]) -> None:
    """containers/image ``ParseOCIReferenceName``: ``@N`` is the N-th manifest of
    index.json; with no ref, a layout of two images is "more than one image" (an error
    naming one to choose)."""
    fresh, path = layout
    assert fresh.store.get(f"oci:{path}:@1").id == fresh.store.get(f"oci:{path}:app:2.0").id
    assert fresh.store.get(f"oci:{path}:@0").id == fresh.store.get(f"oci:{path}:app:1.0").id
    with pytest.raises(ImageError, match=r"2 images in the layout; name one"):
        fresh.store.get(f"oci:{path}")
    with pytest.raises(ImageError, match=r"invalid source index @2, only 2"):
        fresh.store.get(f"oci:{path}:@2")
    with pytest.raises(ImageError, match=r"no image tagged 'app:3.0' \(tags: app:1.0, app:2.0\)"):
        fresh.store.get(f"oci:{path}:app:3.0")


def test_oci_archive_and_docker_archive_with_skopeos_names(
        layout: tuple[Fresh, Path], tmp_path: Path) -> None:
    """containers/image: ``oci-archive:PATH:REF`` splits as ``oci:`` does;
    ``docker-archive:PATH:NAME:TAG`` (docker/archive/transport.go ``ParseReference``) names
    the image whose RepoTags hold that docker reference, normalized
    (``ChooseManifestItem``), or ``@N``."""
    fresh, path = layout
    oci_tar, docker_tar = tmp_path / "oci.tar", tmp_path / "docker.tar"
    skopeo("copy", f"oci:{path}:app:2.0", f"oci-archive:{oci_tar}:app:2.0")
    skopeo("copy", f"oci:{path}:app:2.0", f"docker-archive:{docker_tar}:app:2.0")
    want = fresh.store.get(f"oci:{path}:app:2.0").layers
    for ref in (f"oci-archive:{oci_tar}:app:2.0", f"docker-archive:{docker_tar}:app:2.0",
                f"docker-archive:{docker_tar}:docker.io/library/app:2.0",
                f"docker-archive:{docker_tar}:@0", f"docker-archive:{docker_tar}"):
        assert fresh.store.get(ref).layers == want, ref
    assert marker(fresh, f"docker-archive:{docker_tar}:app:2.0") == "two"
    assert marker(fresh, f"oci-archive:{oci_tar}:app:2.0") == "two"
    with pytest.raises(ImageError, match=r"no image tagged 'docker.io/library/app:1.0'"):
        fresh.store.get(f"docker-archive:{docker_tar}:app:1.0")


def test_a_missing_path_says_where_the_path_ended(layout: tuple[Fresh, Path],
                                                  tmp_path: Path) -> None:
    """containers/image ``SplitPathAndImage``: the path ends at the first ':'; the error
    shows which path was looked for and which name, so a path with a ':' is explained."""
    fresh, _path = layout
    (tmp_path / "a:b").mkdir()
    with pytest.raises(ImageError) as info:
        fresh.store.get(f"oci:{tmp_path}/a:b:v1")
    text = str(info.value)
    assert f"{tmp_path}/a does not exist" in text
    assert "the path ends at the first ':'" in text and "'b:v1'" in text


def test_save_writes_a_ref_name_skopeo_reads(layout: tuple[Fresh, Path],
                                             tmp_path: Path) -> None:
    """image-spec annotations.md ``org.opencontainers.image.ref.name`` (the grammar
    containers/image ``ValidateImageName`` checks) allows ``app:1.0``, as skopeo writes."""
    fresh, _path = layout
    out = tmp_path / "saved"
    fresh.store.get("busybox").save(str(out), "oci", tag="app:9.9")
    skopeo("inspect", f"oci:{out}:app:9.9")
    loaded, busybox = fresh.store.get(f"oci:{out}:app:9.9"), fresh.store.get("busybox")
    assert ([fresh.store.diff_id_of(lid) for lid in loaded.layers]
            == [fresh.store.diff_id_of(lid) for lid in busybox.layers])
