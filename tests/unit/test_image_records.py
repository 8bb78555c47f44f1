"""model.image_records: the image store's records (image, layer info, tag, step cache, blob
link) as frozen dataclasses; records written by older versions still read, new ones written
under the same JSON names, a malformed one an error naming its file and field.

Written from the OCI image spec (descriptor.md "Properties": ``mediaType``, ``digest``,
``size``; config.md ``rootfs.diff_ids``; "ImageID") and from the store's own first layout
(git e159ce6, ``images/store.py`` ``add_layer``/``put_image``/``tag``/``map_blob`` and the
build's step cache), whose files every version since has written in the same shape.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_nsbox.errors import ImageError
from pytest_nsbox.images.content import read_record, write_record
from pytest_nsbox.images.store import ImageStore
from pytest_nsbox.model.image_records import (BlobLink, Descriptor, ImageRecord, LayerInfo,
                                              StepCacheEntry, TagRecord)
from pytest_nsbox.state import StateDirs

BUSYBOX = "f863cd2fb05d9afec8127881851c42445535aa36c57259f0c7cfc2da0e03bf35"
COMMITTED = "20439650cbaa07d05ed744b427e9fe3ce29f93d3b6fa43a3fdfbd7cec3f6f0e3"
BLOB = "sha256:f1c3182ad0d1fb4331a2f89cad1e2ae2ad5cbb6a4be1e089a42b2fe543e10b62"
BUILTIN_KEY = "cb3399806faf1b29504675e6b696c2d4ad6a87891ef31c51128df0baf9f939cc"
IMAGE_HEX = "067fb63bf409e20bff307c9380ac32d3ff42004e479addf4d9ed0c57a8b8e6aa"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# The files as versions up to this one wrote them (json.dump(indent=1, sort_keys=True)).
OLD_FILES: dict[str, dict[str, Any]] = {
    f"images/{IMAGE_HEX}.json": {
        "base": None, "config_digest": f"sha256:{IMAGE_HEX}",
        "id": f"sha256:{IMAGE_HEX}", "layers": [BUSYBOX, COMMITTED],
        "config": {
            "architecture": "amd64", "os": "linux", "created": "2026-11-30T08:48:41Z",
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "A=1=2"],
                       "WorkingDir": "/srv", "Labels": {"team": "qa"}},
            "history": [{"created": "1970-01-01T00:00:00Z",
                         "created_by": "nsbox built-in busybox"},
                        {"created": "2026-11-30T08:48:41Z",
                         "created_by": "nsbox commit of box box-ae04367567ec"}],
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{BUSYBOX}",
                                                      f"sha256:{COMMITTED}"]}}},
    # a layer imported from a layout: the blob it came as
    f"layerinfo/{BUSYBOX}.json": {
        "blob": {"digest": BLOB, "mediaType": GZIP, "size": 1036290},
        "created": "2026-11-30T06:05:49Z", "created_by": "imported from /tmp/layout",
        "diff_id": f"sha256:{BUSYBOX}", "id": BUSYBOX, "size": 2043904},
    # a layer made here (commit, build step): no blob
    f"layerinfo/{COMMITTED}.json": {
        "blob": None, "created": "2026-11-30T08:13:59Z",
        "created_by": "nsbox commit of box box-0f214d2e98f5",
        "diff_id": f"sha256:{COMMITTED}", "id": COMMITTED, "size": 24576},
    # a built-in's layer, recorded when its diff_id was first asked for: no "blob" key
    f"layerinfo/{BUILTIN_KEY}.json": {
        "builtin": True, "created": "1970-01-01T00:00:00Z",
        "created_by": "nsbox built-in layer cb3399806faf",
        "diff_id": f"sha256:{BUSYBOX}", "id": BUILTIN_KEY, "size": 2043904},
    "tags/app%3Av1.json": {"id": f"sha256:{IMAGE_HEX}", "ref": "app:v1"},
    "cache/8ebaae4d426fb0e3f2f523f6f34d414c030eebe61a8a6f0fa885cb832bd65200.json": {
        "created_by": "RUN ln -s loop1 /loop2", "image": "lp", "layer": COMMITTED},
    f"blobmap/{BLOB[7:]}.json": {"digest": BLOB, "layer": BUSYBOX, "mediaType": GZIP},
}


def old_store(tmp_path: Path) -> ImageStore:
    """A store whose records are all in the older versions' files, with its two layers."""
    root = tmp_path / "store"
    for rel, data in OLD_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(data, indent=1, sort_keys=True))
    for lid in (BUSYBOX, COMMITTED):
        (root / "layers" / lid).mkdir(parents=True)
    return ImageStore(StateDirs(store=str(root), run=str(tmp_path / "run")))


def test_records_written_by_older_versions_still_read(tmp_path: Path) -> None:
    """Every kind of store file, exactly as the store has written it since git e159ce6,
    reads as its dataclass, and the image it records resolves (by id and by tag)."""
    store = old_store(tmp_path)
    record = store.record(IMAGE_HEX)
    assert record == ImageRecord(id=f"sha256:{IMAGE_HEX}", base=None,
                                 layers=(BUSYBOX, COMMITTED),
                                 config=OLD_FILES[f"images/{IMAGE_HEX}.json"]["config"],
                                 config_digest=f"sha256:{IMAGE_HEX}")
    assert record.created == "2026-11-30T08:48:41Z"
    assert store.records() == [record]
    assert store.layer_info(BUSYBOX) == LayerInfo(
        id=BUSYBOX, diff_id=f"sha256:{BUSYBOX}", created="2026-11-30T06:05:49Z",
        created_by="imported from /tmp/layout", size=2043904,
        blob=Descriptor(digest=BLOB, media_type=GZIP, size=1036290))
    made_here = store.layer_info(COMMITTED)
    assert made_here is not None and made_here.blob is None and not made_here.builtin
    builtin = store.layer_info(BUILTIN_KEY)
    assert builtin is not None and builtin.builtin and builtin.blob is None
    assert store.diff_id_of(BUILTIN_KEY) == f"sha256:{BUSYBOX}"  # read, not recomputed
    assert store.layer_created(COMMITTED) == "2026-11-30T08:13:59Z"
    assert store.tags() == {"app:v1": f"sha256:{IMAGE_HEX}"}
    assert store.cached_step("8ebaae4d426fb0e3f2f523f6f34d414c030eebe61a8a6f0fa885cb832bd65200"
                             ) == COMMITTED
    assert store.blob_layer(BLOB) == BUSYBOX
    for ref in (f"sha256:{IMAGE_HEX}", IMAGE_HEX[:12], "app:v1"):
        image = store.get(ref)
        assert image.id == f"sha256:{IMAGE_HEX}" and image.layers == (BUSYBOX, COMMITTED)
        assert image.env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "A": "1=2"}
        assert (image.workdir, image.labels) == ("/srv", {"team": "qa"})
        assert [h["created_by"] for h in image.history] == [
            "nsbox built-in busybox", "nsbox commit of box box-ae04367567ec"]


@pytest.mark.parametrize("rel", sorted(OLD_FILES))
def test_records_are_written_as_older_versions_read_them(tmp_path: Path, rel: str) -> None:
    """What this version writes is what it read, key for key: a descriptor's media type
    under its JSON name ``mediaType`` (descriptor.md), so a store shared with an older
    pytest-nsbox reads both ways (a built-in layer's record gains ``"blob": null``, which
    older versions read as no blob)."""
    kind = {"images": ImageRecord, "layerinfo": LayerInfo, "tags": TagRecord,
            "cache": StepCacheEntry, "blobmap": BlobLink}[rel.split("/")[0]]
    store = old_store(tmp_path)
    record = read_record(kind, store.path(rel))
    assert record is not None
    out = tmp_path / "out.json"
    write_record(str(out), record)
    written = json.loads(out.read_text())
    expected = dict(OLD_FILES[rel])
    if kind is LayerInfo:
        expected.setdefault("blob", None)
        expected.setdefault("builtin", False)
    assert written == expected
    assert read_record(kind, str(out)) == record


@pytest.mark.parametrize(("rel", "text", "match"), [
    (f"layerinfo/{COMMITTED}.json", "{not json", "unreadable store record"),
    (f"layerinfo/{COMMITTED}.json",
     json.dumps({**OLD_FILES[f"layerinfo/{COMMITTED}.json"], "size": "24k"}),
     "(LayerInfo): size: expected int, got '24k'"),
    (f"layerinfo/{BUSYBOX}.json",
     json.dumps({**OLD_FILES[f"layerinfo/{BUSYBOX}.json"],
                 "blob": {"digest": BLOB, "size": 1}}),
     "(LayerInfo): blob: missing field 'media_type'"),
    (f"images/{IMAGE_HEX}.json",
     json.dumps({k: v for k, v in OLD_FILES[f"images/{IMAGE_HEX}.json"].items()
                 if k != "layers"}),
     "(ImageRecord): missing field 'layers'"),
    (f"images/{IMAGE_HEX}.json",
     json.dumps({**OLD_FILES[f"images/{IMAGE_HEX}.json"], "layers": [BUSYBOX, 7]}),
     "(ImageRecord): layers[1]: expected str, got 7"),
    ("tags/app%3Av1.json", json.dumps({"ref": "app:v1", "id": "x", "colour": "red"}),
     "(TagRecord): unknown field 'colour'"),
])
def test_a_malformed_record_is_an_error_naming_the_file_and_field(
        tmp_path: Path, rel: str, text: str, match: str) -> None:
    """As the box record (crun ``status.c``): a store file that does not parse is one
    ``ImageError`` naming the file, the field, and what to do (remove it, or prune)."""
    store = old_store(tmp_path)
    Path(store.path(rel)).write_text(text)
    kind = {"images": ImageRecord, "layerinfo": LayerInfo,
            "tags": TagRecord}[rel.split("/")[0]]
    with pytest.raises(ImageError, match=re.escape(match)) as info:
        read_record(kind, store.path(rel))
    assert store.path(rel) in str(info.value)
    assert "images prune" in str(info.value)
