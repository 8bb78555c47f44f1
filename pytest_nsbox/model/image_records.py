"""The image store's records as data: what is written under the store for images and layers.

One frozen dataclass per kind of file (the layout is in ``images/content.py``)::

    images/<hex>.json    ImageRecord     an image: its layers, base and OCI config
    layerinfo/<id>.json  LayerInfo       a layer: diff_id, size, when and by what made,
                                         and the blob it came as (a Descriptor)
    tags/<ref>.json      TagRecord       a name -> an image id
    cache/<key>.json     StepCacheEntry  a Containerfile step -> the layer it made
    blobmap/<hex>.json   BlobLink        a compressed blob -> the layer it unpacked to

Names are the OCI image spec's: ``digest`` (``sha256:<64 hex>`` of the bytes, descriptor.md
"Digests"), ``diff_id`` (the digest of the uncompressed layer tar, config.md
``rootfs.diff_ids``), ``size`` (bytes), ``media_type``. A descriptor's media type is written
under its JSON name ``mediaType`` (descriptor.md "Properties"), as the store has always
written it, so stores shared with older pytest-nsbox versions read both ways.

Every record is read by ``model/jsondata.py``'s strict codec (``from_json``): a file of
another shape raises ``DataError`` naming it and the field. Records written by every
version since the store's first layout (git e159ce6) have the shapes read here: fields
added since have defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from .jsondata import from_json, to_json

R = TypeVar("R", bound="Record")

#: The Python name and the JSON name of the one field spelled differently on disk.
_MEDIA_TYPE = ("media_type", "mediaType")


def _renamed(data: Any, old: str, new: str) -> Any:
    """``data`` with key ``old`` renamed ``new`` when it is an object holding it."""
    if isinstance(data, dict) and old in data and new not in data:
        data = dict(data)
        data[new] = data.pop(old)
    return data


class Record:
    """A record's JSON form: its fields by name (``media_type`` as ``mediaType``)."""

    def to_json(self) -> dict[str, Any]:
        """The record as written: an object of its fields."""
        return _renamed(to_json(self), *_MEDIA_TYPE)  # type: ignore[no-any-return]

    @classmethod
    def from_json(cls: type[R], data: Any, where: str) -> R:
        """The record in JSON value ``data``; raises ``jsondata.DataError`` naming
        ``where`` and the field for an unknown or missing field or a wrong value."""
        return from_json(cls, _renamed(data, *reversed(_MEDIA_TYPE)), where)


@dataclass(frozen=True)
class Descriptor(Record):
    """An OCI content descriptor (descriptor.md): ``media_type`` (e.g.
    ``application/vnd.oci.image.layer.v1.tar+gzip``), ``digest`` (``sha256:<64 hex>`` of
    the blob's bytes) and ``size`` (its length in bytes)."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class LayerInfo(Record):
    """``layerinfo/<id>.json``: one layer of the store.

    ``id`` is its directory's name under ``layers/``: the hex of ``diff_id`` for layers
    built, committed, imported or pulled; a built-in's own key (``builtin`` true) for the
    built-ins' layers. ``diff_id`` is ``sha256:<hex>`` of its uncompressed tar as
    ``layers.diff_id`` writes it (or as the imported config lists it). ``created`` is when
    it was made (RFC 3339, UTC), ``created_by`` the instruction or action that made it,
    ``size`` the bytes of its files. ``blob`` is the compressed blob it was imported or
    pulled as, kept under ``blobs/`` so an export gives back the same digest; None for a
    layer made here.
    """

    id: str
    diff_id: str
    created: str
    created_by: str
    size: int
    blob: Descriptor | None = None
    builtin: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = to_json(self)
        data["blob"] = self.blob.to_json() if self.blob is not None else None
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> LayerInfo:
        if isinstance(data, dict) and isinstance(data.get("blob"), dict):
            data = {**data, "blob": _renamed(data["blob"], *reversed(_MEDIA_TYPE))}
        return super().from_json(data, where)


@dataclass(frozen=True)
class ImageRecord(Record):
    """``images/<hex>.json``: an image of the store.

    ``id`` is ``sha256:<64 hex>``: the digest of its OCI config (OCI image spec
    "ImageID"), or for one based on ``host`` the digest of a marker and its config.
    ``base`` is None (the layers are the whole image) or ``"host"`` (they go over the
    built-in host image). ``layers`` are the store's layer ids, bottom first, without the
    base's. ``config`` is the OCI image configuration (config.md) as JSON, kept as it came:
    an imported config's digest is the image's id. ``config_digest`` is the digest of the
    config blob kept under ``blobs/`` (imports, and images made here not based on host);
    None when there is none.
    """

    id: str
    base: str | None
    layers: tuple[str, ...]
    config: dict[str, Any]
    config_digest: str | None = None

    @property
    def created(self) -> str:
        """The config's ``created`` (RFC 3339), ``""`` when it has none."""
        return str(self.config.get("created") or "")


@dataclass(frozen=True)
class TagRecord(Record):
    """``tags/<ref>.json``: the name ``ref`` (``app``, ``127.0.0.1:5000/busybox:1``) names
    image ``id``."""

    ref: str
    id: str


@dataclass(frozen=True)
class StepCacheEntry(Record):
    """``cache/<key>.json``: the Containerfile step whose cache key is the file's name made
    ``layer``; ``created_by`` is the instruction, ``image`` the image it was built for."""

    layer: str
    created_by: str
    image: str


@dataclass(frozen=True)
class BlobLink(Record):
    """``blobmap/<hex>.json``: the compressed blob ``digest`` (of ``media_type``) unpacked
    to ``layer``, so a second pull or import of it downloads and unpacks nothing."""

    digest: str
    layer: str
    media_type: str
