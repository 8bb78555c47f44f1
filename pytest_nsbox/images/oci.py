"""OCI image layouts and ``docker save`` archives: import (``load``) and export (``save``).

Import reads an OCI layout directory (``oci-layout``, ``index.json``, ``blobs/``), an OCI
archive (the same in a tar), or a ``docker save`` tar: classic (``manifest.json`` naming
``<id>.json`` and ``<id>/layer.tar``) or Docker 25+ (``manifest.json`` naming ``blobs/``,
plus an OCI layout). Every blob is checked against its digest, every layer's uncompressed
tar against the config's ``rootfs.diff_ids``; a multi-platform index picks linux and the
host's architecture. Export writes what import reads: an OCI layout with gzip'd layers, or
a Docker 25 style archive with uncompressed layers that both old and new tools read.
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Callable
from typing import IO, Any, Literal

from filelock import FileLock

from ..errors import ImageError
from ..kernel.arch import oci_platform
from ..kernel.fs import remove_tree
from ..model.image import Image
from ..model.image_records import Descriptor
from . import layers as layerfs, refs
from .content import LOCK_TIMEOUT, ContentStore, canonical_json
from .refs import check_digest

OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_TYPES = (
    OCI_LAYER, OCI_LAYER_GZIP, DOCKER_LAYER, DOCKER_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
ZSTD_TYPES = ("application/vnd.oci.image.layer.v1.tar+zstd",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
REF_NAME = "org.opencontainers.image.ref.name"


# -- sources: where blobs are read from ---------------------------------------------------

class Source:
    """Files of a layout or archive, by relative path."""

    name: str

    def open(self, rel: str) -> IO[bytes]:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def read(self, rel: str, limit: int = 64 << 20) -> bytes:
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{self.name}: {rel} is larger than {limit >> 20} MiB; not a "
                             f"manifest or config")
        return data

    def blob_rel(self, digest: str) -> str:
        check_digest(digest, self.name)
        return "blobs/sha256/" + digest.split(":", 1)[1]


def _clean(rel: str, where: str) -> str:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts:
        raise ImageError(f"{where}: path {rel!r} leaves the archive; refused")
    return "/".join(parts)


class DirSource(Source):
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path

    def _full(self, rel: str) -> str:
        full = os.path.join(self.path, _clean(rel, self.name))
        real = os.path.realpath(full)
        if not real.startswith(os.path.realpath(self.path) + os.sep):
            raise ImageError(f"{self.name}: {rel} is a symlink out of the layout; refused")
        return full

    def open(self, rel: str) -> IO[bytes]:
        try:
            return open(self._full(rel), "rb")
        except FileNotFoundError:
            raise ImageError(f"{self.name}: {rel} is missing; the layout is incomplete") from None

    def exists(self, rel: str) -> bool:
        return os.path.isfile(self._full(rel))


# What ``docker load`` takes besides a plain tar, by magic number (moby
# pkg/archive ``DetectCompression``), and tarfile's mode for each.
_TarMode = Literal["r:", "r:gz", "r:bz2", "r:xz"]
_COMPRESSIONS: tuple[tuple[bytes, _TarMode | None, str], ...] = (
    (b"\x1f\x8b\x08", "r:gz", "gzip"),
    (b"BZh", "r:bz2", "bzip2"),
    (b"\xfd7zXZ\x00", "r:xz", "xz"),
    (b"\x28\xb5\x2f\xfd", None, "zstd"),
)


def _tar_mode(path: str, what: str) -> _TarMode:
    """tarfile's read mode for the archive at ``path``: its compression is told by its
    first bytes, as ``docker load`` tells it, so a file that is no tar gets one reason
    (tarfile's ``r:*`` would list what each of its four readers said)."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, mode, name in _COMPRESSIONS:
        if head.startswith(magic):
            if mode is None:
                raise ImageError(f"{what}: {name}-compressed, which this Python cannot read; "
                                 f"decompress it first (e.g. `zstd -d`)")
            return mode
    return "r:"


class TarSource(Source):
    """A ``docker save`` or OCI archive; ``what`` names it in errors (``path``, or the
    reference it was given by) and ``kind`` says what it should have been."""

    def __init__(self, path: str, what: str | None = None,
                 kind: str = "docker save output or an OCI archive") -> None:
        self.path = path
        self.name = path
        what = what or path
        try:
            self.tar = tarfile.open(path, _tar_mode(path, what))
            self.members = {_clean(m.name, path): m for m in self.tar.getmembers()
                            if m.isfile() or m.islnk()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                      else " ".join(str(exc).split()) or type(exc).__name__)
            raise ImageError(f"{what}: not a tar archive ({kind}): {reason}") from None

    def open(self, rel: str) -> IO[bytes]:
        m = self.members.get(_clean(rel, self.name))
        f = self.tar.extractfile(m) if m is not None else None
        if f is None:
            raise ImageError(f"{self.name}: {rel} is missing from the archive")
        return f

    def exists(self, rel: str) -> bool:
        return _clean(rel, self.name) in self.members

    def close(self) -> None:
        self.tar.close()


def verified(data: bytes, digest: str, where: str) -> bytes:
    got = "sha256:" + layerfs.sha256_hex(data)
    if got != digest:
        raise ImageError(f"{where}: content of {digest} has digest {got}; it was changed or "
                         f"damaged (refused)")
    return data


def parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{where}: not valid JSON ({exc})") from None


# -- import -------------------------------------------------------------------------------

def load_ref(store: ContentStore, ref: str, start: str) -> Image:
    """``oci:PATH[:REF]``, ``oci-archive:PATH[:REF]`` or ``docker-archive:PATH[:NAME:TAG]``,
    split as skopeo splits them (``refs.parse``: the path ends at the first ``:``); a
    relative PATH starts at folder ``start``."""
    parsed = refs.parse(ref)
    full = os.path.abspath(os.path.join(start, parsed.path))
    if not os.path.exists(full):
        hint = ""
        if parsed.name is not None or parsed.index is not None:
            hint = (f" (as in skopeo, the path ends at the first ':', so this names "
                    f"{parsed.name or f'@{parsed.index}'!r} in {parsed.path!r}; a path that "
                    f"holds ':' cannot be named: link it elsewhere)")
        raise ImageError(f"image {ref!r}: {full} does not exist{hint}")
    if parsed.transport == "oci" and not os.path.isdir(full):
        raise ImageError(f"image {ref!r}: {full} is not an OCI layout directory; for a tar use "
                         f"'docker-archive:' or 'oci-archive:'")
    if parsed.transport != "oci" and os.path.isdir(full):
        raise ImageError(f"image {ref!r}: {full} is a directory; for an OCI layout directory "
                         f"use 'oci:{parsed.path}'")
    return load_path(store, full, tag=parsed.name, ref=ref, index=parsed.index)


def load_path(store: ContentStore, path: str, tag: str | None = None,
              ref: str | None = None, index: int | None = None) -> Image:
    """Import the image at ``path`` (a layout directory or an archive): the one tagged
    ``tag``, the ``index``-th, or the only one."""
    if os.path.isdir(path):
        source: Source = DirSource(path)
        if not source.exists("index.json"):
            raise ImageError(f"{path}: not an OCI layout (no index.json)")
        with store.using():
            return _load_oci(store, source, tag, ref or f"oci:{path}" + (f":{tag}" if tag else ""),
                             index)
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such file or directory")
    kinds = {"docker-archive": "docker save output", "oci-archive": "an OCI archive"}
    kind = kinds.get((ref or "").partition(":")[0], "docker save output or an OCI archive")
    tsource = TarSource(path, ref, kind)
    try:
        with store.using():
            if tsource.exists("manifest.json"):
                return _load_docker(store, tsource, tag, ref, index)
            if tsource.exists("index.json"):
                return _load_oci(store, tsource, tag, ref or f"oci-archive:{path}", index)
        raise ImageError(f"{path}: neither a docker save archive (manifest.json) nor an OCI "
                         f"archive (index.json)")
    finally:
        tsource.close()


def pick_platform(manifests: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """The entry of an index for linux on this host's architecture."""
    arch, variant = oci_platform()
    candidates = []
    for entry in manifests:
        plat = entry.get("platform") or {}
        if plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch:
            candidates.append(entry)
    if variant:
        exact = [e for e in candidates if (e.get("platform") or {}).get("variant") == variant]
        candidates = exact or candidates
    # Attestation manifests (buildkit's "unknown/unknown") never match linux/<arch>.
    if candidates:
        return candidates[0]
    have = ", ".join(f"{(e.get('platform') or {}).get('os')}/"
                     f"{(e.get('platform') or {}).get('architecture')}" for e in manifests)
    raise ImageError(f"{where}: no image for linux/{arch} in the index (it has: {have})")


def _media_type(doc: dict[str, Any], declared: str | None) -> str:
    kind = doc.get("mediaType") or declared
    if kind:
        return str(kind)
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _load_oci(store: ContentStore, source: Source, tag: str | None, ref: str,
              number: int | None = None) -> Image:
    index = parse_json(source.read("index.json"), f"{source.name}/index.json")
    entries = index.get("manifests") or []
    if number is not None:
        entry = _nth(entries, number, source.name, "manifest(s) in index.json")
    elif tag is not None:
        chosen = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == tag]
        if not chosen:
            names = sorted({(e.get("annotations") or {}).get(REF_NAME, "?") for e in entries})
            raise ImageError(f"{source.name}: no image tagged {tag!r} (tags: {', '.join(names)})")
        entry = chosen[0]
    elif len(entries) == 1:
        entry = entries[0]
    elif entries and all("platform" in e for e in entries):
        entry = pick_platform(entries, source.name)
    else:
        names = sorted({(e.get("annotations") or {}).get(REF_NAME, "?") for e in entries})
        raise ImageError(f"{source.name}: {len(entries)} images in the layout; name one, e.g. "
                         f"oci:{source.name}:{names[0] if names else 'latest'}")
    return _load_entry(store, source, entry, ref, tags=[])


def _nth(items: list[Any], number: int, where: str, what: str) -> Any:
    """The ``@number`` image of a layout or archive (containers/image ``sourceIndex``)."""
    if number >= len(items):
        raise ImageError(f"{where}: invalid source index @{number}, only {len(items)} {what}")
    return items[number]


def _load_entry(store: ContentStore, source: Source, entry: dict[str, Any], ref: str,
                tags: list[str], depth: int = 0) -> Image:
    digest = check_digest(entry.get("digest"), source.name)
    where = f"{source.name}: manifest {digest[:19]}"
    data = verified(source.read(source.blob_rel(digest)), digest, where)
    doc = parse_json(data, where)
    kind = _media_type(doc, entry.get("mediaType"))
    if kind in INDEX_TYPES:
        if depth > 2:
            raise ImageError(f"{where}: indexes nested too deep")
        return _load_entry(store, source, pick_platform(doc.get("manifests") or [], where),
                           ref, tags, depth + 1)
    if kind not in MANIFEST_TYPES:
        raise ImageError(f"{where}: media type {kind!r} is not an image manifest")
    return import_manifest(store, doc, where, ref, tags,
                           lambda d: source.open(source.blob_rel(d)),
                           lambda d: source.read(source.blob_rel(d)))


def import_manifest(store: ContentStore, doc: dict[str, Any], where: str, ref: str,
                    tags: list[str], open_blob: Callable[[str], IO[bytes]],
                    read_blob: Callable[[str], bytes],
                    progress: Callable[[int, int, dict[str, Any], bool], None] | None = None
                    ) -> Image:
    """Record the image a manifest describes, importing the layers the store lacks."""
    if doc.get("schemaVersion") != 2:
        raise ImageError(f"{where}: schemaVersion {doc.get('schemaVersion')!r}; only image "
                         f"manifests of schema 2 are supported")
    conf = doc.get("config") or {}
    config_digest = check_digest(conf.get("digest"), where)
    raw = verified(read_blob(config_digest), config_digest, f"{where}: config")
    config = parse_json(raw, f"{where}: config {config_digest[:19]}")
    descriptors = doc.get("layers") or []
    diff_ids = ((config.get("rootfs") or {}).get("diff_ids")) or []
    if len(diff_ids) != len(descriptors):
        raise ImageError(f"{where}: the config lists {len(diff_ids)} diff_ids for "
                         f"{len(descriptors)} layers; the image is inconsistent")
    ids = []
    for i, (desc, did) in enumerate(zip(descriptors, diff_ids, strict=True)):
        kind = desc.get("mediaType") or OCI_LAYER_GZIP
        lwhere = f"{where}: layer {i + 1}/{len(descriptors)}"
        if kind in ZSTD_TYPES:
            raise ImageError(f"{lwhere}: zstd-compressed layers are not supported; use gzip "
                             f"(skopeo copy --dest-compress-format gzip)")
        if kind not in LAYER_TYPES:
            raise ImageError(f"{lwhere}: media type {kind!r} is not a layer")
        digest = check_digest(desc.get("digest"), lwhere)
        check_digest(did, f"{lwhere}: diff_id")
        cached = store.blob_layer(digest) or _have_layer(store, did)
        if progress is not None:
            progress(i, len(descriptors), desc, cached is not None)
        if cached is None:
            cached = import_layer(store, functools.partial(open_blob, digest), digest, kind,
                                  did, f"{lwhere} ({digest[:19]})", size=desc.get("size"))
        else:
            store.map_blob(digest, cached, kind)
        ids.append(cached)
    store.put_blob(config_digest, raw)
    return store.put_image(ref=ref, base=None, layer_ids=ids, config=config,
                           config_digest=config_digest, tags=tags)


def _have_layer(store: ContentStore, diff_id: str) -> str | None:
    lid = diff_id.split(":", 1)[1]
    return lid if os.path.isdir(store.path("layers", lid)) else None


class _Tee(io.RawIOBase):
    def __init__(self, raw: IO[bytes], out: IO[bytes]) -> None:
        self.raw, self.out = raw, out

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        b[:len(data)] = data
        self.out.write(data)
        return len(data)


def import_layer(store: ContentStore, opener: Callable[[], IO[bytes]], digest: str | None,
                 media_type: str, diff_id: str, where: str, size: int | None = None,
                 keep_blob: bool = True, created: str | None = None,
                 created_by: str | None = None) -> str:
    """Unpack one layer blob into the store, checking its digest and diff_id; its id.
    ``created``/``created_by`` are recorded for a new layer (default: now, and where it
    was imported from)."""
    key = (digest or diff_id).split(":", 1)[1]
    os.makedirs(store.dirs.locks, exist_ok=True)
    with FileLock(os.path.join(store.dirs.locks, f"blob-{key}.lock"), timeout=LOCK_TIMEOUT):
        done = (store.blob_layer(digest) if digest else None) or _have_layer(store, diff_id)
        if done is not None:
            return done
        tmp = store.new_tmp("import")
        blob_tmp = store.path("tmp", f"blob-{key}.{secrets.token_hex(4)}")
        try:
            with opener() as raw, open(blob_tmp, "wb") as out:
                got = layerfs.unpack_tar(_Tee(raw, out) if keep_blob else raw,  # type: ignore[arg-type]
                                         tmp, where)
            if digest is not None and got.digest != digest:
                raise ImageError(f"{where}: the blob has digest {got.digest}, not {digest}; it "
                                 f"was changed or damaged (refused)")
            if size is not None and got.size != size:
                raise ImageError(f"{where}: the blob is {got.size} bytes, not {size}; refused")
            if got.diff_id != diff_id:
                raise ImageError(f"{where}: the uncompressed layer has digest {got.diff_id}, but "
                                 f"the config's diff_id is {diff_id}; refused")
            if got.compressed and not media_type.endswith("gzip"):
                media_type = OCI_LAYER_GZIP
            elif not got.compressed and media_type.endswith("gzip"):
                media_type = OCI_LAYER
            blob = Descriptor(digest=got.digest, media_type=media_type, size=got.size)
            lid = store.add_layer(tmp, created_by=created_by or f"imported from {where}",
                                  diff_id=diff_id, blob=blob if keep_blob else None,
                                  created=created)
            if keep_blob:
                final = store.blob_path(got.digest)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(blob_tmp, final)
            store.map_blob(got.digest, lid, media_type)
            return lid
        finally:
            if os.path.isdir(tmp):
                remove_tree(tmp)
            if os.path.exists(blob_tmp):
                os.unlink(blob_tmp)


def _load_docker(store: ContentStore, source: TarSource, pick: str | None,
                 ref: str | None, number: int | None = None) -> Image:
    where = f"{source.name}/manifest.json"
    manifest = parse_json(source.read("manifest.json"), where)
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"{where}: expected a list of images")
    if number is not None:
        item = _nth(manifest, number, source.name, "manifest item(s) in manifest.json")
    elif pick is not None:
        # As containers/image's ChooseManifestItem: RepoTags compared as normalized docker
        # references ("app:1.0" is "docker.io/library/app:1.0").
        try:
            wanted: str | None = refs.docker_name(pick, pick)
        except ImageError:
            wanted = None  # not a docker reference: only an exact RepoTags entry matches
        chosen = [m for m in manifest
                  if any(t == pick or (wanted is not None and refs.same_docker_name(t, wanted))
                         for t in (m.get("RepoTags") or []))]
        if not chosen:
            tags = sorted(t for m in manifest for t in (m.get("RepoTags") or []))
            raise ImageError(f"{source.name}: no image tagged {pick!r} (tags: "
                             f"{', '.join(tags) or 'none'})")
        item = chosen[0]
    elif len(manifest) == 1:
        item = manifest[0]
    else:
        tags = [t for m in manifest for t in (m.get("RepoTags") or [])]
        raise ImageError(f"{source.name}: {len(manifest)} images in the archive; name one, e.g. "
                         f"docker-archive:{source.name}:{tags[0] if tags else 'name:tag'}")
    config_rel = _clean(str(item.get("Config", "")), where)
    raw = source.read(config_rel)
    m = re.fullmatch(r"(?:blobs/sha256/)?([0-9a-f]{64})(?:\.json)?", config_rel)
    config_digest = "sha256:" + layerfs.sha256_hex(raw)
    if m and "sha256:" + m.group(1) != config_digest:
        raise ImageError(f"{source.name}: config {config_rel} has digest {config_digest}; it "
                         f"was changed or damaged (refused)")
    config = parse_json(raw, f"{source.name}: {config_rel}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layer_rels = [_clean(str(rel), where) for rel in item.get("Layers") or []]
    if len(diff_ids) != len(layer_rels):
        raise ImageError(f"{source.name}: config lists {len(diff_ids)} diff_ids for "
                         f"{len(layer_rels)} layers")
    ids = []
    for i, (rel, did) in enumerate(zip(layer_rels, diff_ids, strict=True)):
        lwhere = f"{source.name}: layer {i + 1}/{len(layer_rels)} ({rel})"
        check_digest(did, lwhere)
        bm = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", rel)
        digest = "sha256:" + bm.group(1) if bm else None
        have = (store.blob_layer(digest) if digest else None) or _have_layer(store, did)
        if have is None:
            have = import_layer(store, functools.partial(source.open, rel), digest,
                                DOCKER_LAYER, did, lwhere)
        ids.append(have)
    store.put_blob(config_digest, raw)
    tags = [str(t) for t in item.get("RepoTags") or []]
    name = ref or (tags[0] if tags else config_digest)
    return store.put_image(ref=name, base=None, layer_ids=ids, config=config,
                           config_digest=config_digest, tags=tags)


# -- export -------------------------------------------------------------------------------

def split_ref(ref: str) -> tuple[str | None, str]:
    """``(name, tag)`` of an image's ref for naming it in an archive."""
    if not ref or ref.startswith(("sha256:", "oci:", "oci-archive:", "docker-archive:")) \
            or " " in ref:
        return None, "latest"
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, "latest"


def save(image: Image, path: str, format: str = "oci", tag: str | None = None) -> str:
    if format not in ("oci", "docker-archive"):
        raise ImageError(f"save(format={format!r}): use 'oci' (a layout directory) or "
                         f"'docker-archive' (a docker save tar)")
    store = _exportable(image, "saved")
    path = os.path.abspath(os.fspath(path))
    name, default_tag = split_ref(image.ref)
    if tag is not None:
        if ":" in tag and format == "docker-archive":
            name, _, tag = tag.rpartition(":")
        elif format == "docker-archive" and "/" in tag:
            raise ImageError(f"save(tag={tag!r}): a docker tag is one word, e.g. 'v1' or "
                             f"'app:v1'")
        elif not refs.valid_oci_ref_name(tag):
            raise ImageError(f"save(tag={tag!r}): not an OCI ref name (letters and digits "
                             f"joined by '-._:@+', e.g. 'v1' or 'app:1.0', as skopeo writes)")
    tag = tag or default_tag
    with store.using():
        writer = _Exporter(store, image, compress=format == "oci")
        if format == "oci":
            writer.to_layout(path, tag)
        else:
            writer.to_archive(path, f"{name or 'nsbox/' + image.id[7:19]}:{tag}")
    return path


def _exportable(image: Image, what: str) -> ContentStore:
    """The store of ``image``; ``ImageError`` when it cannot be ``what`` (saved, pushed):
    based on ``host``, or of no store."""
    if image.from_host_os:
        raise ImageError(f"image {image.ref!r} is based on 'host': its bottom layer is this "
                         f"machine's own /, which cannot be {what}; base the image on busybox, "
                         f"scratch or an imported image to have it {what}")
    store: ContentStore | None = image.store
    if store is None:
        raise ImageError(f"image {image.ref!r} does not come from an image store; get it "
                         f"with nsbox_images.get()")
    return store


def image_blobs(image: Image, put: Callable[[str, str, int], None], what: str = "pushed"
                ) -> tuple[bytes, bytes]:
    """``(config, manifest)`` of ``image`` as ``save(format="oci")`` writes them (OCI
    media types, gzip'd layers, the config as imported where its diff_ids still hold);
    each layer blob is first handed to ``put(path, digest, size)``, the file lasting until
    ``put`` returns. Raises ``ImageError`` for an image that cannot be ``what``."""
    store = _exportable(image, what)
    with store.using():
        writer = _Exporter(store, image, compress=True)
        try:
            layers = writer._layers(put)
            config = writer._config([d for _g, d, _s, _k in layers])
            return config, writer._manifest(config, layers)
        finally:
            shutil.rmtree(writer.tmpdir, ignore_errors=True)


class _Exporter:
    def __init__(self, store: ContentStore, image: Image, compress: bool) -> None:
        self.store = store
        self.image = image
        self.compress = compress
        self.tmpdir = store.new_tmp("export")

    def _layers(self, put: Callable[[str, str, int], None]) -> list[tuple[str, str, int, str]]:
        """Each layer as (digest, diff_id, size, media type), written through ``put``."""
        out = []
        for lid in self.image.layers:
            info = self.store.layer_info(lid)
            blob = info.blob if info is not None else None
            if info is not None and blob is not None and os.path.exists(
                    self.store.blob_path(blob.digest)):
                # The blob as imported: the same diff_id (and, kept as it came, digest) as
                # where it came from, whatever our own tar of the directory would give.
                gz = blob.media_type.endswith("gzip")
                src = self.store.blob_path(blob.digest)
                did = info.diff_id
                if gz == self.compress:
                    put(src, blob.digest, blob.size)
                    out.append((blob.digest, did, blob.size, self._type()))
                    continue
                tmp = os.path.join(self.tmpdir, secrets.token_hex(6))
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    w = layerfs.HashingWriter(fout)
                    if gz:
                        with gzip.GzipFile(fileobj=fin, mode="rb") as gzin:
                            shutil.copyfileobj(gzin, w)
                    else:
                        with gzip.GzipFile(filename="", mode="wb", fileobj=w,
                                           mtime=0) as gzout:
                            shutil.copyfileobj(fin, gzout)
                put(tmp, w.digest(), w.size)
                out.append((w.digest(), did, w.size, self._type()))
                continue
            tmp = os.path.join(self.tmpdir, secrets.token_hex(6))
            with open(tmp, "wb") as f:
                digest, did, size = layerfs.write_blob(self.store.path("layers", lid)
                                                       if os.path.isdir(self.store.path(
                                                           "layers", lid))
                                                       else self.store.layer_path(lid),
                                                       f, self.compress)
            put(tmp, digest, size)
            out.append((digest, did, size, self._type()))
        return out

    def _type(self) -> str:
        return OCI_LAYER_GZIP if self.compress else OCI_LAYER

    def _config(self, diff_ids: list[str]) -> bytes:
        config = dict(self.image.config or {})
        rec = self.store.record(self.image.id)
        digest = rec.config_digest if rec is not None else None
        if (digest and (config.get("rootfs") or {}).get("diff_ids") == diff_ids
                and os.path.exists(self.store.blob_path(digest))):
            with open(self.store.blob_path(digest), "rb") as f:
                return f.read()
        if not config:
            arch, _variant = oci_platform()
            config = {"architecture": arch, "os": "linux",
                      "config": {"Env": [f"{k}={v}" for k, v in self.image.env.items()],
                                 "WorkingDir": self.image.workdir},
                      "history": [{"created_by": f"nsbox built-in {self.image.ref}"}
                                  for _ in diff_ids]}
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        return canonical_json(config)

    def _manifest(self, config: bytes, layers: list[tuple[str, str, int, str]]) -> bytes:
        return canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + layerfs.sha256_hex(config),
                       "size": len(config)},
            "layers": [{"mediaType": kind, "digest": d, "size": s} for d, _i, s, kind in layers],
        })

    def _platform(self) -> dict[str, str]:
        config = self.image.config or {}
        arch, _variant = oci_platform()
        return {"architecture": config.get("architecture") or arch,
                "os": config.get("os") or "linux"}

    def to_layout(self, path: str, tag: str) -> None:
        fresh = not os.path.exists(path)
        if not fresh:
            if not os.path.isdir(path) or (os.listdir(path)
                                           and not os.path.isfile(os.path.join(path,
                                                                               "oci-layout"))):
                raise ImageError(f"save({path!r}): exists and is not an OCI layout; give a new "
                                 f"or empty folder")
        target = path if not fresh else f"{path}.{secrets.token_hex(4)}.tmp"
        try:
            os.makedirs(os.path.join(target, "blobs", "sha256"), exist_ok=True)

            def put(src: str, digest: str, _size: int) -> None:
                dest = os.path.join(target, "blobs", "sha256", digest.split(":", 1)[1])
                if not os.path.exists(dest):
                    tmp = f"{dest}.tmp"
                    shutil.copyfile(src, tmp)
                    os.rename(tmp, dest)

            def put_bytes(data: bytes) -> str:
                digest = "sha256:" + layerfs.sha256_hex(data)
                tmp = os.path.join(self.tmpdir, secrets.token_hex(6))
                with open(tmp, "wb") as f:
                    f.write(data)
                put(tmp, digest, len(data))
                return digest

            layers = self._layers(put)
            config = self._config([d for _g, d, _s, _k in layers])
            put_bytes(config)
            manifest = self._manifest(config, layers)
            mdigest = put_bytes(manifest)
            with open(os.path.join(target, "oci-layout"), "w", encoding="utf-8") as lf:
                json.dump(OCI_LAYOUT, lf)
            index_path = os.path.join(target, "index.json")
            index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            if os.path.exists(index_path):
                with open(index_path, "rb") as f:
                    index = parse_json(f.read(), index_path)
            index["manifests"] = [e for e in index.get("manifests") or []
                                  if (e.get("annotations") or {}).get(REF_NAME) != tag]
            index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": mdigest,
                                       "size": len(manifest), "annotations": {REF_NAME: tag},
                                       "platform": self._platform()})
            tmp_index = f"{index_path}.{secrets.token_hex(4)}.tmp"
            with open(tmp_index, "wb") as out:
                out.write(canonical_json(index))
            os.rename(tmp_index, index_path)
            if fresh:
                os.rename(target, path)
        except BaseException:
            if fresh and os.path.isdir(target):
                shutil.rmtree(target)
            raise
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def to_archive(self, path: str, repo_tag: str) -> None:
        tmp_path = f"{path}.{secrets.token_hex(4)}.tmp"
        try:
            with tarfile.open(tmp_path, "w", format=tarfile.PAX_FORMAT) as tar:
                written: set[str] = set()

                def add_file(rel: str, src: str, size: int) -> None:
                    if rel in written:
                        return
                    written.add(rel)
                    info = tarfile.TarInfo(rel)
                    info.size, info.mode, info.mtime = size, 0o644, 0
                    with open(src, "rb") as f:
                        tar.addfile(info, f)

                def add_bytes(rel: str, data: bytes) -> None:
                    if rel in written:
                        return
                    written.add(rel)
                    info = tarfile.TarInfo(rel)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))

                for d in ("blobs", "blobs/sha256"):
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                layers = self._layers(lambda src, digest, size: add_file(
                    "blobs/sha256/" + digest.split(":", 1)[1], src, size))
                config = self._config([d for _g, d, _s, _k in layers])
                chex = layerfs.sha256_hex(config)
                add_bytes(f"blobs/sha256/{chex}", config)
                manifest = self._manifest(config, layers)
                mhex = layerfs.sha256_hex(manifest)
                add_bytes(f"blobs/sha256/{mhex}", manifest)
                name, _, tag = repo_tag.rpartition(":")
                add_bytes("index.json", canonical_json({
                    "schemaVersion": 2, "mediaType": OCI_INDEX,
                    "manifests": [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{mhex}",
                                   "size": len(manifest),
                                   "annotations": {"io.containerd.image.name": repo_tag,
                                                   REF_NAME: tag}}]}))
                add_bytes("manifest.json", json.dumps([{
                    "Config": f"blobs/sha256/{chex}", "RepoTags": [repo_tag],
                    "Layers": ["blobs/sha256/" + g.split(":", 1)[1] for g, _d, _s, _k in layers],
                }]).encode())
                add_bytes("oci-layout", json.dumps(OCI_LAYOUT).encode())
            os.rename(tmp_path, path)
        except BaseException:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
            raise
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

