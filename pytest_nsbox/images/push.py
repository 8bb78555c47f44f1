"""Pushing to a registry, as the OCI distribution spec's "Push" section describes it.

Each blob (the layers, then the config) goes up in the first way that works, the order
containers/image's ``docker/docker_image_dest.go`` tries (``TryReusingBlobWithOptions``,
``PutBlobWithOptions``):

1. ``HEAD /v2/<name>/blobs/<digest>``: ``200`` and the registry has it; nothing is sent.
2. A cross-repository mount, for a blob known to be in another repository of the same
   registry (``registry.known_locations``: pulled from or pushed to there): ``HEAD`` it
   there, then ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``; ``201`` is
   a mount. A ``202`` is an upload session the registry opened instead (it cannot mount),
   and the upload goes on in it, as the spec allows.
3. An upload: ``POST /v2/<name>/blobs/uploads/`` opens a session (``202``, ``Location``);
   a blob of at most ``chunk_size`` bytes goes in one ``PUT <location>?digest=<digest>``
   (the spec's monolithic "POST then PUT"), a larger one in ``PATCH`` chunks with
   ``Content-Range: <start>-<end>`` (inclusive, in order; a ``416`` answer's ``Range``
   says where to resume), closed by an empty ``PUT <location>?digest=<digest>``. Each
   answer's ``Location`` is used for the next request. A failed upload is cancelled with
   ``DELETE <location>``.

Then ``PUT /v2/<name>/manifests/<tag>`` with the manifest's media type.

Layers are pushed as gzip'd tars. A layer is compressed once: the blob and its digest are
kept in the store (``layer_blob``: ``blobs/sha256/<hex>`` and the layer's ``LayerInfo.blob``),
so a second push computes nothing, and its ``HEAD`` finds what the registry already has.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import os
import re
import secrets
import shutil
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import IO

from filelock import FileLock

from ..errors import ImageError
from ..model.image import Image
from ..model.image_records import Descriptor, LayerInfo
from . import layers as layerfs
from .content import LOCK_TIMEOUT, ContentStore, write_record
from .oci import OCI_LAYER_GZIP, OCI_MANIFEST, image_blobs
from .refs import Reference, looks_like_registry_ref
from .registry import Client, error_text, known_locations, record_location

#: Blobs up to this many bytes are uploaded in one PUT; larger ones in PATCH chunks of it.
CHUNK_SIZE = 16 << 20
#: How often a chunk refused with 416 is sent again from where the registry says.
MAX_RESUMES = 3
_RANGE = re.compile(r"(?:bytes=)?(\d+)-(\d+)")


def layer_blob(store: ContentStore, lid: str) -> Descriptor:
    """The gzip'd blob of layer ``lid``, made once and kept: ``blobs/sha256/<hex>`` holds
    it, its ``LayerInfo.blob`` names it, and the blob map points back at the layer (a pull
    of that digest elsewhere finds it here). A layer imported as a gzip blob already has
    one; one imported uncompressed is compressed from that tar; one made here from its
    directory's tar, which must give its recorded diff_id.

    Raises ``ImageError`` when the layer is missing, or its files no longer give its
    diff_id (they were changed in the store)."""
    info = _info(store, lid)
    if _kept_gzip(store, info):
        assert info.blob is not None
        return info.blob
    os.makedirs(store.dirs.locks, exist_ok=True)
    with FileLock(os.path.join(store.dirs.locks, f"gzip-{lid}.lock"), timeout=LOCK_TIMEOUT):
        info = _info(store, lid)
        if _kept_gzip(store, info):
            assert info.blob is not None
            return info.blob
        os.makedirs(store.path("tmp"), exist_ok=True)
        tmp = store.path("tmp", f"gzip-{lid[:16]}.{secrets.token_hex(4)}")
        try:
            with open(tmp, "wb") as out:
                digest, diff_id, size = _compress(store, lid, info, out)
            if diff_id != info.diff_id:
                raise ImageError(f"layer {lid[:12]}: its files give diff_id {diff_id}, not the "
                                 f"recorded {info.diff_id}: it was changed in the store "
                                 f"{store.dirs.store}; remove its images and build or pull "
                                 f"them again")
            final = store.blob_path(digest)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        blob = Descriptor(digest=digest, media_type=OCI_LAYER_GZIP, size=size)
        write_record(store.path("layerinfo", f"{lid}.json"), dataclasses.replace(info, blob=blob))
        store.map_blob(digest, lid, OCI_LAYER_GZIP)
        return blob


def _info(store: ContentStore, lid: str) -> LayerInfo:
    store.layer_path(lid)  # raises, naming the layer, when it is gone
    info = store.layer_info(lid)
    if info is None:  # a built-in: its diff_id is computed (and recorded) on first use
        store.diff_id_of(lid)
        info = store.layer_info(lid)
    assert info is not None
    return info


def _kept_gzip(store: ContentStore, info: LayerInfo) -> bool:
    blob = info.blob
    return (blob is not None and blob.media_type.endswith("gzip")
            and os.path.exists(store.blob_path(blob.digest)))


def _compress(store: ContentStore, lid: str, info: LayerInfo, out: IO[bytes]
              ) -> tuple[str, str, int]:
    """Write the layer gzip'd to ``out``: ``(digest, diff_id, size)`` as
    ``layers.write_blob`` returns them; from its uncompressed blob when it has one (the
    tar as imported), else from its directory."""
    plain = info.blob
    if plain is None or not os.path.exists(store.blob_path(plain.digest)):
        return layerfs.write_blob(store.layer_path(lid), out, compress=True)
    outer = layerfs.HashingWriter(out)
    with open(store.blob_path(plain.digest), "rb") as src:
        # As layers.write_blob compresses: no name, mtime 0, so the blob is reproducible.
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0,
                           compresslevel=6) as gz:
            inner = layerfs.HashingWriter(gz)  # type: ignore[arg-type]
            shutil.copyfileobj(src, inner)
    return outer.digest(), inner.digest(), outer.size


@dataclass(frozen=True)
class Pushed:
    """What one push did: ``ref`` (normalized) now names manifest ``digest``; of its
    blobs (layers and config), ``uploaded`` were sent (``bytes_uploaded`` bytes),
    ``mounted`` mounted from another repository, ``present`` already there; in
    ``seconds``."""

    ref: str
    digest: str
    uploaded: int
    mounted: int
    present: int
    bytes_uploaded: int
    seconds: float


@dataclass(frozen=True)
class Blob:
    """A blob to push: ``digest``, ``size`` and where its bytes are: a file ``path``
    or ``data``."""

    digest: str
    size: int
    path: str | None = None
    data: bytes | None = None

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")


class Pusher:
    """Pushes blobs and manifests to one repository (``dest``, a tag), over https unless
    its registry is in ``insecure``, with the credentials a pull would use."""

    def __init__(self, store: ContentStore, dest: Reference, insecure: Collection[str] = (),
                 chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ImageError(f"push chunk size {chunk_size}: must be at least 1 byte")
        self.store = store
        self.dest = dest
        self.client = Client(store, dest, insecure, push=True)
        self.chunk_size = chunk_size
        self.repository = f"{dest.registry}/{dest.repository}"
        self.counts = {"uploaded": 0, "mounted": 0, "present": 0}
        self.bytes_uploaded = 0

    def _fail(self, what: str, status: int, body: bytes) -> ImageError:
        hint = ""
        if status in (401, 403):
            source = f"from {self.client.creds[2]}" if self.client.creds else "(none found)"
            hint = (f"; the credentials {source} may not allow pushing to "
                    f"{self.dest.repository}")
        return ImageError(f"push to {self.dest}: {what}: registry {self.dest.registry} "
                          f"answered HTTP {status}{error_text(body)}{hint}")

    def exists(self, digest: str, repository: str | None = None) -> bool:
        """Whether ``repository`` (default: the destination's) holds blob ``digest``."""
        repo = repository or self.dest.repository
        resp = self.client.request("HEAD", f"/v2/{repo}/blobs/{digest}",
                                   reads=repository if repository != self.dest.repository
                                   else None)
        resp.read()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        if repository is not None:
            return False  # another repository we may not read: no mount from there
        raise self._fail(f"checking blob {digest[:19]}", resp.status, b"")

    def blob(self, blob: Blob) -> str:
        """Make the destination hold ``blob``; says how: ``already there``, ``mounted from
        <registry/repository>`` or ``uploaded``."""
        how = self._blob(blob)
        record_location(self.store, blob.digest, self.repository)
        return how

    def _blob(self, blob: Blob) -> str:
        if self.exists(blob.digest):
            self.counts["present"] += 1
            return "already there"
        session = None
        for location in known_locations(self.store, blob.digest):
            registry, _, repo = location.partition("/")
            if registry != self.dest.registry or repo == self.dest.repository:
                continue
            if not self.exists(blob.digest, repo):
                continue
            query = urllib.parse.urlencode({"mount": blob.digest, "from": repo})
            resp = self.client.request("POST", f"/v2/{self.dest.repository}/blobs/uploads/?{query}",
                                       headers={"Content-Length": "0"}, reads=repo)
            body = resp.read(65536)
            if resp.status == 201:
                self.counts["mounted"] += 1
                return f"mounted from {location}"
            if resp.status == 202 and resp.getheader("Location"):
                session = resp.getheader("Location")  # no mount: an upload session instead
                break
        if session is None:
            resp = self.client.request("POST", f"/v2/{self.dest.repository}/blobs/uploads/",
                                       headers={"Content-Length": "0"})
            body = resp.read(65536)
            if resp.status != 202 or not resp.getheader("Location"):
                raise self._fail(f"starting the upload of blob {blob.digest[:19]}",
                                 resp.status, body)
            session = resp.getheader("Location")
        assert session is not None
        try:
            self._upload(session, blob)
        except BaseException:
            self._cancel(session)
            raise
        self.counts["uploaded"] += 1
        self.bytes_uploaded += blob.size
        return "uploaded"

    def _upload(self, session: str, blob: Blob) -> None:
        with blob.open() as src:
            if blob.size <= self.chunk_size:
                self._close(session, blob, src, blob.size)
                return
            offset = 0
            resumes = 0
            while offset < blob.size:
                src.seek(offset)
                data = src.read(min(self.chunk_size, blob.size - offset))
                end = offset + len(data) - 1
                resp = self.client.request(
                    "PATCH", session, body=data,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(len(data)),
                             "Content-Range": f"{offset}-{end}"})
                body = resp.read(65536)
                session = resp.getheader("Location") or session
                if resp.status == 202:
                    offset = end + 1
                    continue
                got = _RANGE.fullmatch((resp.getheader("Range") or "").strip())
                if resp.status == 416 and got and resumes < MAX_RESUMES:
                    resumes += 1
                    offset = int(got.group(2)) + 1  # "0-<last valid byte>"
                    continue
                raise self._fail(f"uploading bytes {offset}-{end} of blob {blob.digest[:19]}",
                                 resp.status, body)
            self._close(session, blob, None, 0)

    def _close(self, session: str, blob: Blob, src: IO[bytes] | None, size: int) -> None:
        """The closing ``PUT <session>?digest=``, with the whole blob (``src``) or none."""
        parts = urllib.parse.urlsplit(self.client.url(session))
        query = "&".join(q for q in (parts.query, urllib.parse.urlencode(
            {"digest": blob.digest})) if q)
        url = urllib.parse.urlunsplit(parts._replace(query=query))
        resp = self.client.request("PUT", url, body=src if size else None,
                                   headers={"Content-Type": "application/octet-stream",
                                            "Content-Length": str(size)})
        body = resp.read(65536)
        if resp.status != 201:
            raise self._fail(f"uploading blob {blob.digest[:19]}", resp.status, body)

    def _cancel(self, session: str) -> None:
        """``DELETE`` an upload session that failed (the spec's "SHOULD"); best effort."""
        try:
            self.client.request("DELETE", session).read()
        except ImageError:
            pass

    def manifest(self, data: bytes, media_type: str = OCI_MANIFEST) -> str:
        """``PUT`` manifest ``data`` to the destination's tag; returns its digest."""
        tag = self.dest.tag or "latest"
        resp = self.client.request("PUT", f"/v2/{self.dest.repository}/manifests/{tag}",
                                   body=data, headers={"Content-Type": media_type,
                                                       "Content-Length": str(len(data))})
        body = resp.read(65536)
        if not 200 <= resp.status < 300:
            raise self._fail(f"putting manifest {tag!r}", resp.status, body)
        return "sha256:" + layerfs.sha256_hex(data)

    def result(self, digest: str, started: float) -> Pushed:
        return Pushed(ref=str(self.dest), digest=digest, uploaded=self.counts["uploaded"],
                      mounted=self.counts["mounted"], present=self.counts["present"],
                      bytes_uploaded=self.bytes_uploaded, seconds=time.monotonic() - started)


def destination(dest: str) -> Reference:
    """``dest`` (``registry/repository[:tag]``, ``docker://`` allowed) parsed: a push
    names its registry (Docker Hub's is ``docker.io``) and a tag (default ``latest``), not a
    digest. Raises ``ImageError`` naming what is wrong."""
    if not looks_like_registry_ref(dest) or dest.startswith("sha256:"):
        raise ImageError(f"push destination {dest!r}: name its registry, e.g. "
                         f"127.0.0.1:5000/{dest.partition('@')[0]} (Docker Hub's is "
                         f"docker.io/...)")
    parsed = Reference.parse(dest)
    if parsed.digest:
        raise ImageError(f"push destination {dest!r}: a digest cannot be pushed to; name a "
                         f"tag, e.g. {parsed.registry}/{parsed.repository}:v1")
    return parsed


def push(store: ContentStore, image: Image, dest: str, insecure: Collection[str] = (),
         chunk_size: int = CHUNK_SIZE) -> Pushed:
    """Push ``image`` (of ``store``) to ``dest`` (``registry/repository[:tag]``): its
    layers gzip'd (each compressed once, ``layer_blob``), its config, then its OCI
    manifest under the tag. ``insecure`` are the registries reached over plain http.
    Progress is one line per blob (``store.say``). Raises ``ImageError`` for an image
    based on ``host`` (its bottom layer is this machine's ``/``), a destination with a
    digest, an unreachable registry, refused credentials, or a refused blob or manifest.
    """
    started = time.monotonic()
    ref = destination(dest)
    pusher = Pusher(store, ref, insecure, chunk_size)
    with store.using():
        if not image.from_host_os:  # image_blobs refuses those, saying why
            for lid in image.layers:
                layer_blob(store, lid)
        blobs: list[Blob] = []

        def put(path: str, digest: str, size: int) -> None:
            if not path.startswith(store.path("blobs") + os.sep):
                raise ImageError(f"image {image.ref!r}: layer blob {digest[:19]} is not kept "
                                 f"in the store")  # layer_blob made every one
            blobs.append(Blob(digest=digest, size=size, path=path))

        config, manifest = image_blobs(image, put)
    digest = send(pusher, blobs, config, manifest, f"push {ref}")
    store.say(f"nsbox: pushed {image.ref} to {ref} ({digest}; {pusher.counts['uploaded']} "
              f"blobs uploaded, {pusher.counts['mounted']} mounted, "
              f"{pusher.counts['present']} already there, "
              f"{pusher.bytes_uploaded / 1048576:.1f} MiB)")
    return pusher.result(digest, started)


def send(pusher: Pusher, layers: Sequence[Blob], config: bytes, manifest: bytes,
         label: str, say: Callable[[str], None] | None = None) -> str:
    """Push ``layers``, then the config blob, then ``manifest`` through ``pusher``, one
    progress line per blob (``label``: what is pushed); returns the manifest's digest."""
    say = say or pusher.store.say
    for i, blob in enumerate(layers):
        how = pusher.blob(blob)
        say(f"nsbox: {label} layer {i + 1}/{len(layers)} {blob.digest[:19]} "
            f"{blob.size / 1048576:.1f} MiB {how}")
    config_blob = Blob(digest="sha256:" + layerfs.sha256_hex(config), size=len(config),
                       data=config)
    say(f"nsbox: {label} config {config_blob.digest[:19]} {pusher.blob(config_blob)}")
    return pusher.manifest(manifest)
