"""The image store's content on disk: layers, image records, tags, blobs, the step cache.

``ContentStore`` reads and writes what is under the store directory, shared by every pytest
process on the machine; ``store.ImageStore`` (above it, with ``oci`` and ``registry`` in
between) resolves references to images and is the store's front door. The records are
``model.image_records``' dataclasses.

Layout under the store directory (default ``/var/lib/nsbox``)::

    layers/<id>/         a layer in overlay form; <id> is the sha256 of its canonical tar
                         (its diff_id); the built-ins use their own keys
    l/<16 hex>           short symlinks to layers/<id>: overlay's mount options hold one
                         page, and short lower paths let ~100 layers fit instead of ~40
    layerinfo/<id>.json  when and by what a layer was made, its size
    images/<hex>.json    an image: its layers (bottom first), base, and OCI config
    tags/<ref>.json      a name (``app``, ``127.0.0.1:5000/busybox:1``) -> image id
    cache/<key>.json     Containerfile step cache: parent chain + instruction -> layer id
    blobs/sha256/<hex>   blobs as imported or pulled (compressed layers, configs)
    blobmap/<hex>.json   compressed blob digest -> layer id: a second pull downloads nothing
    tmp/, locks/         builds in progress; one file lock per layer, step and blob

A layer is built in a private temporary directory and renamed into place under a file
lock, so concurrent processes (xdist workers) build it once and a crash never leaves a
half-written layer where a box could use it. Builds and imports hold a shared lock on the
store; ``prune`` takes it exclusively, so it never deletes a layer a build is making.

Images based on ``host`` cannot use layers on the host root's filesystem (overlayfs refuses
a lower layer below another lower layer of the same filesystem: "overlapping lowerdir"),
so their layers are copied once per boot into the run directory (tmpfs), cached by id.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from filelock import FileLock

from ..errors import ImageError
from ..kernel.arch import oci_platform
from ..kernel.fs import remove_tree
from ..model.defaults import DEFAULT_PATH
from ..model.image import Image
from ..model.image_records import (BlobLink, Descriptor, ImageRecord, LayerInfo, Record,
                                   StepCacheEntry, TagRecord)
from ..model.jsondata import DataError
from ..state import StateDirs
from . import builtin, layers as layerfs, refs, storefs

LOCK_TIMEOUT = 600.0
BUILD_LOCK_TIMEOUT = 1800.0
# What overlayfs' mount data may hold (one page), less room for the box's own upper,
# work and init directories.
OVERLAY_DATA_MAX = 4096
#: The built-in images (``ContentStore.builtin``).
BUILTIN = ("host", "busybox", "scratch")
_HEX = re.compile(r"[0-9a-f]{12,64}\Z")
R = TypeVar("R", bound=Record)


#: The ``created`` of what has no time of its own (Docker writes the same for built-ins).
EPOCH = "1970-01-01T00:00:00Z"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_record(path: str, record: Record) -> None:
    """Write ``record`` to ``path`` atomically (a reader sees the old file or the new one)."""
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record.to_json(), f, indent=1, sort_keys=True)
    os.rename(tmp, path)


def read_record(kind: type[R], path: str) -> R | None:
    """The record of class ``kind`` in file ``path``; None when there is no such file.
    Raises ``ImageError`` naming the file when it is unreadable, not JSON, or not of
    ``kind``'s shape (``model.image_records``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable store record ({exc}); {_REMEDY}") from None
    try:
        return kind.from_json(data, f"{path} ({kind.__name__})")
    except DataError as exc:
        raise ImageError(f"{exc}; {_REMEDY}") from None


_REMEDY = "remove it, or run `python -m pytest_nsbox images prune`"


class ContentStore:
    """The files under ``dirs.store`` (and, for images based on ``host``, ``dirs.run``):
    layers made once under a file lock, image records, tags, blobs, the step cache; and the
    ``Image`` each image record or built-in stands for.

    ``progress`` is called with one line per build step and per pulled layer (``say``).
    Raises ``ImageError`` for a record that does not read (naming the file), a missing
    layer, and a store that stays locked.
    """

    def __init__(self, dirs: StateDirs, *,
                 progress: Callable[[str], None] | None = None) -> None:
        self.dirs = dirs
        self.progress = progress

    def _changed(self, *, ref: str | None = None, image_id: str | None = None) -> None:
        """Tag or image record ``ref``/``image_id`` changed on disk (a subclass that
        remembers what references resolved to forgets them)."""

    # -- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.dirs.store, *parts)

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def log(self, line: str) -> None:
        """One line in ``<store>/build.log``: what was built, when, by which process."""
        os.makedirs(self.dirs.store, exist_ok=True)
        data = f"{now_iso()} pid={os.getpid()} {line}\n".encode()
        fd = os.open(self.path("build.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    # -- the built-in images -------------------------------------------------------------
    def builtin(self, name: str) -> Image:
        """The built-in image ``name`` (one of ``BUILTIN``), its layer made on first use.
        Raises ``ImageError`` for busybox on a host that has no busybox binary."""
        if name == "host":
            key, masked = builtin.host_mask_key("/")
            # The mask must not live on the host root's filesystem: overlayfs refuses a
            # lower layer below another lower layer of the same filesystem
            # ("overlapping lowerdir").
            layer = self.layer(key, lambda d: builtin.build_host_mask(d, masked),
                               volatile=True)
            return Image(ref="host", id="sha256:" + key, layers=("host", key),
                         layer_dirs=("/", self.short_dir(layer)), from_host_os=True,
                         store=self, env={"PATH": DEFAULT_PATH})
        if name == "busybox":
            binary = builtin.find_busybox()
            key = builtin.busybox_key(binary)
            layer = self.layer(key, lambda d: builtin.build_busybox(d, binary))
            return Image(ref="busybox", id="sha256:" + key, layers=(key,),
                         layer_dirs=(self.short_dir(layer),), store=self,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if name == "scratch":
            layer = self.layer("scratch-v1", lambda d: None)
            return Image(ref="scratch", id="sha256:" + "0" * 64, layers=("scratch-v1",),
                         layer_dirs=(self.short_dir(layer),), store=self)
        raise ImageError(f"image {name!r}: not a built-in image ({', '.join(BUILTIN)})")

    def host_fingerprint(self) -> str:
        """What a build step on ``host`` depends on: the mask, and the host's packages
        (so an ``apt-get install`` on the host invalidates cached steps)."""
        key, _masked = builtin.host_mask_key("/")
        h = hashlib.sha256(f"host\0{key}".encode())
        for path in ("/var/lib/dpkg/status", "/var/lib/rpm/rpmdb.sqlite", "/lib/apk/db/installed"):
            try:
                st = os.stat(path)
            except OSError:
                continue
            h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()

    # -- layers --------------------------------------------------------------------------
    def layer(self, key: str, build: Callable[[str], None], *, volatile: bool = False) -> str:
        """The directory of layer ``key``, built once by ``build(tmpdir)`` if missing."""
        base = self.dirs.run if volatile else self.dirs.store
        final = os.path.join(base, "layers", key)
        if os.path.isdir(final):
            return final
        os.makedirs(os.path.join(base, "layers"), exist_ok=True)
        os.makedirs(os.path.join(base, "tmp"), exist_ok=True)
        os.makedirs(self.dirs.locks, exist_ok=True)
        with FileLock(os.path.join(self.dirs.locks, f"layer-{key}.lock"), timeout=LOCK_TIMEOUT):
            if os.path.isdir(final):
                return final
            if not volatile:
                storefs.check(os.path.join(base, "tmp"), self.dirs.store)
            tmp = os.path.join(base, "tmp", f"{key}.{secrets.token_hex(4)}")
            os.mkdir(tmp, 0o755)
            try:
                build(tmp)
                os.rename(tmp, final)
            except BaseException:
                remove_tree(tmp)
                raise
        return final

    def new_tmp(self, what: str) -> str:
        """A private empty directory on the store's filesystem, for a layer being made."""
        os.makedirs(self.path("tmp"), exist_ok=True)
        storefs.check(self.path("tmp"), self.dirs.store)
        tmp = self.path("tmp", f"{what}.{secrets.token_hex(6)}")
        os.mkdir(tmp, 0o755)
        return tmp

    def add_layer(self, tmp: str, created_by: str, diff_id: str | None = None,
                  created: str | None = None, blob: Descriptor | None = None) -> str:
        """Move the finished layer directory ``tmp`` into the store; returns its id.

        The id is its diff_id (the sha256 of its tar): given, for an imported tar, or
        computed from the canonical tar of the directory.
        """
        try:
            did = diff_id or layerfs.diff_id(tmp)
            lid = did.split(":", 1)[1]
            final = self.path("layers", lid)
            os.makedirs(self.path("layers"), exist_ok=True)
            os.makedirs(self.path("layerinfo"), exist_ok=True)
            os.makedirs(self.dirs.locks, exist_ok=True)
            with FileLock(os.path.join(self.dirs.locks, f"layer-{lid}.lock"),
                          timeout=LOCK_TIMEOUT):
                if os.path.isdir(final):
                    remove_tree(tmp)
                else:
                    write_record(self.path("layerinfo", f"{lid}.json"),
                                 LayerInfo(id=lid, diff_id=did, created=created or now_iso(),
                                           created_by=created_by,
                                           size=layerfs.tree_size(tmp), blob=blob))
                    os.rename(tmp, final)
        except BaseException:
            if os.path.isdir(tmp):
                remove_tree(tmp)
            raise
        return lid

    def layer_info(self, lid: str) -> LayerInfo | None:
        """What the store recorded of layer ``lid``; None for a layer it has no record of
        (a built-in whose diff_id was never asked for)."""
        return read_record(LayerInfo, self.path("layerinfo", f"{lid}.json"))

    def layer_created(self, lid: str) -> str:
        """When layer ``lid`` was made (RFC 3339), the epoch when that is not recorded."""
        info = self.layer_info(lid)
        return info.created if info is not None and info.created else EPOCH

    def layer_path(self, lid: str) -> str:
        path = self.path("layers", lid)
        if not os.path.isdir(path):
            raise ImageError(f"layer {lid[:12]} is missing from the store {self.dirs.store} "
                             f"(pruned or removed by hand); build or pull the image again")
        return path

    def diff_id_of(self, lid: str) -> str:
        """The diff_id of a layer (for the built-ins, computed once and remembered)."""
        info = self.layer_info(lid)
        if info is not None and info.diff_id:
            return info.diff_id
        path = self.path("layers", lid)
        did = layerfs.diff_id(path)
        os.makedirs(self.path("layerinfo"), exist_ok=True)
        write_record(self.path("layerinfo", f"{lid}.json"),
                     LayerInfo(id=lid, diff_id=did, created=EPOCH,
                               created_by=f"nsbox built-in layer {lid[:12]}",
                               size=layerfs.tree_size(path), builtin=True))
        return did

    def short_dir(self, final: str) -> str:
        """A short path (``<base>/l/<16 hex>``) to the layer directory ``final``."""
        base = os.path.dirname(os.path.dirname(final))
        key = os.path.basename(final)
        short = os.path.join(base, "l", hashlib.sha256(key.encode()).hexdigest()[:16])
        target = os.path.join("..", "layers", key)
        try:
            if os.readlink(short) == target:
                return short
            return final  # a prefix collision: use the long path
        except FileNotFoundError:
            pass
        except OSError:
            return final
        os.makedirs(os.path.dirname(short), exist_ok=True)
        tmp = f"{short}.{secrets.token_hex(4)}"
        os.symlink(target, tmp)
        os.rename(tmp, short)
        return short

    def run_copy(self, lid: str) -> str:
        """Layer ``lid`` copied into the run directory (for images based on ``host``)."""
        src = self.layer_path(lid)
        return self.layer(lid, lambda d: layerfs.copy_tree(src, d), volatile=True)

    def remove_layer(self, key: str) -> None:
        for base in (self.dirs.store, self.dirs.run):
            path = os.path.join(base, "layers", key)
            if os.path.isdir(path):
                remove_tree(path)

    # -- images --------------------------------------------------------------------------
    @contextlib.contextmanager
    def using(self, exclusive: bool = False) -> Iterator[None]:
        """Hold the store: shared for builds and imports, exclusive for ``prune``."""
        os.makedirs(self.dirs.locks, exist_ok=True)
        fd = os.open(os.path.join(self.dirs.locks, "store.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + BUILD_LOCK_TIMEOUT
            op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            while True:
                try:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ImageError(f"the image store {self.dirs.store} stayed locked for "
                                         f"{BUILD_LOCK_TIMEOUT:.0f} s (a build or prune "
                                         f"elsewhere)") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def make_config(self, *, parent: Image | None, layer_ids: list[str],
                    env: dict[str, str], workdir: str, labels: dict[str, str],
                    history: list[dict[str, Any]]) -> dict[str, Any]:
        """The OCI image configuration of an image made here."""
        arch, variant = oci_platform()
        inherited = dict((parent.config or {}).get("config") or {}) if parent else {}
        inherited["Env"] = [f"{k}={v}" for k, v in env.items()]
        inherited["WorkingDir"] = workdir
        if labels:
            inherited["Labels"] = dict(labels)
        else:
            inherited.pop("Labels", None)
        created = [str(h["created"]) for h in history if h.get("created")]
        config: dict[str, Any] = {
            "created": max(created) if created else EPOCH,
            "architecture": arch, "os": "linux", "config": inherited,
            "rootfs": {"type": "layers", "diff_ids": [self.diff_id_of(i) for i in layer_ids]},
            "history": history,
        }
        if variant and arch != "arm64":
            config["variant"] = variant
        return config

    def put_image(self, *, ref: str | None, base: str | None, layer_ids: list[str],
                  config: dict[str, Any], config_digest: str | None = None,
                  tags: list[str] | None = None) -> Image:
        """Record an image; ``config_digest`` when its config came as a blob (imports)."""
        raw = canonical_json(config)
        if base == "host":
            image_id = "sha256:" + hashlib.sha256(b"nsbox-host-based\0" + raw).hexdigest()
        elif config_digest:
            image_id = config_digest
        else:
            image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            self.put_blob(image_id, raw)
        record = ImageRecord(id=image_id, base=base, layers=tuple(layer_ids), config=config,
                             config_digest=config_digest or (None if base else image_id))
        hexid = image_id.split(":", 1)[1]
        path = self.path("images", f"{hexid}.json")
        os.makedirs(self.path("images"), exist_ok=True)
        if read_record(ImageRecord, path) != record:
            write_record(path, record)
        for tag in tags or []:
            self.tag(image_id, tag)
        if ref:
            self._changed(ref=ref)
        return self.image_from_record(record, ref or image_id)

    def image_from_record(self, record: ImageRecord, ref: str) -> Image:
        """The ``Image`` a record describes, resolved from ``ref``."""
        return self.assemble(ref=ref, image_id=record.id, base=record.base,
                             ids=list(record.layers), config=record.config)

    def assemble(self, *, ref: str, image_id: str, base: str | None, ids: list[str],
                 config: dict[str, Any]) -> Image:
        """An ``Image`` of layers ``ids`` over ``base`` (None, or ``"host"``)."""
        conf = config.get("config") or {}
        env = {}
        for item in conf.get("Env") or []:
            key, _, value = str(item).partition("=")
            env[key] = value
        if base == "host":
            host = self.builtin("host")
            layer_ids = [*host.layers, *ids]
            dirs = [*host.layer_dirs, *(self.short_dir(self.run_copy(i)) for i in ids)]
        elif base is None:
            layer_ids = ids
            dirs = [self.short_dir(self._stored_layer(i)) for i in ids]
        else:
            raise ImageError(f"image {ref!r}: unknown base {base!r} in its store record")
        # A layer listed twice (empty layers often are) would make overlayfs refuse the
        # mount; its lower copy changes nothing, so only the topmost one is stacked.
        dirs = [d for i, d in enumerate(dirs) if d not in dirs[i + 1:]]
        needed = sum(len(d) + 1 for d in dirs) + 3 * (len(self.dirs.boxes) + 32) + 64
        if needed > OVERLAY_DATA_MAX:
            raise ImageError(f"image {ref!r}: its {len(dirs)} layers do not fit in one overlay "
                             f"mount (the kernel takes {OVERLAY_DATA_MAX} bytes of mount options "
                             f"and these need {needed}); use fewer RUN/COPY steps (join RUN "
                             f"commands with &&) or a shorter store directory")
        return Image(ref=ref, id=image_id, layers=tuple(layer_ids), layer_dirs=tuple(dirs),
                     env=env, workdir=conf.get("WorkingDir") or "/",
                     labels=dict(conf.get("Labels") or {}), from_host_os=base == "host",
                     history=tuple(config.get("history") or ()), config=config, store=self)

    def _stored_layer(self, lid: str) -> str:
        if lid == "scratch-v1":
            return self.layer("scratch-v1", lambda d: None)
        path = self.path("layers", lid)
        if not os.path.isdir(path):
            return self.layer_path(lid)  # raises, naming the layer
        return path

    def record(self, image_id: str) -> ImageRecord | None:
        """The record of image ``image_id`` (``sha256:<hex>`` or the hex); None if none."""
        hexid = image_id.split(":", 1)[-1]
        return read_record(ImageRecord, self.path("images", f"{hexid}.json"))

    def records(self) -> list[ImageRecord]:
        """Every image record in the store, by file name."""
        return self._all(ImageRecord, "images")

    def _all(self, kind: type[R], folder: str) -> list[R]:
        out = []
        for name in _listdir(self.path(folder)):
            if name.endswith(".json"):
                rec = read_record(kind, self.path(folder, name))
                if rec is not None:
                    out.append(rec)
        return out

    def remove_record(self, image_id: str) -> None:
        """Delete the record of image ``image_id`` (its layers stay until ``prune``), and
        forget what this store object resolved to it."""
        try:
            os.unlink(self.path("images", image_id.split(":", 1)[-1] + ".json"))
        except FileNotFoundError:
            pass
        self._changed(image_id=image_id)

    def find(self, ref: str) -> Image | None:
        """An image by id: ``sha256:<hex>``, or a unique prefix of 12 hex digits or more."""
        hexid = ref[7:] if ref.startswith("sha256:") else ref
        if not _HEX.match(hexid):
            return None
        if len(hexid) == 64:
            rec = self.record(hexid)
            return self.image_from_record(rec, ref) if rec else None
        names = [n for n in _listdir(self.path("images")) if n.startswith(hexid)]
        if len(names) > 1:
            raise ImageError(f"image {ref!r}: the prefix matches {len(names)} images; give more "
                             f"digits")
        if names:
            rec = read_record(ImageRecord, self.path("images", names[0]))
            return self.image_from_record(rec, ref) if rec else None
        return None

    # -- tags ----------------------------------------------------------------------------
    def _tag_path(self, ref: str) -> str:
        return self.path("tags", urllib.parse.quote(ref, safe="") + ".json")

    def tag(self, image_id: str, ref: str) -> None:
        os.makedirs(self.path("tags"), exist_ok=True)
        path = self._tag_path(ref)
        record = TagRecord(ref=ref, id=image_id)
        if read_record(TagRecord, path) != record:
            write_record(path, record)
        self._changed(ref=ref)

    def untag(self, ref: str) -> bool:
        try:
            os.unlink(self._tag_path(ref))
        except FileNotFoundError:
            return False
        self._changed(ref=ref)
        return True

    def tags(self) -> dict[str, str]:
        """Every tag and the id it names."""
        return {tag.ref: tag.id for tag in self._all(TagRecord, "tags")}

    def find_tag(self, ref: str) -> Image | None:
        names = [ref, f"{ref}:latest"]
        try:
            names.append(str(refs.Reference.parse(ref)))  # docker.io/library/x:latest
        except ImageError:
            pass
        for name in names:
            tag = read_record(TagRecord, self._tag_path(name))
            if tag is not None:
                rec = self.record(tag.id)
                if rec:
                    return self.image_from_record(rec, ref)
        return None

    # -- blobs ---------------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
            raise ImageError(f"digest {digest!r}: not a sha256 digest (sha256:<64 hex>)")
        return self.path("blobs", "sha256", hexd)

    def put_blob(self, digest: str, data: bytes) -> None:
        path = self.blob_path(digest)
        if os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)

    def blob_layer(self, digest: str) -> str | None:
        """The layer a compressed blob unpacked to, if it is still in the store."""
        link = read_record(BlobLink, self.path("blobmap", digest.split(":", 1)[-1] + ".json"))
        if link is not None and os.path.isdir(self.path("layers", link.layer)):
            return link.layer
        return None

    def map_blob(self, digest: str, lid: str, media_type: str) -> None:
        """Record that blob ``digest`` (of ``media_type``) unpacked to layer ``lid``."""
        os.makedirs(self.path("blobmap"), exist_ok=True)
        write_record(self.path("blobmap", digest.split(":", 1)[-1] + ".json"),
                     BlobLink(digest=digest, layer=lid, media_type=media_type))

    # -- the Containerfile step cache ----------------------------------------------------
    def cached_step(self, key: str) -> str | None:
        """The layer the build step with cache key ``key`` made, if it is still here."""
        entry = read_record(StepCacheEntry, self.path("cache", f"{key}.json"))
        if entry is not None and os.path.isdir(self.path("layers", entry.layer)):
            return entry.layer
        return None

    def cache_step(self, key: str, entry: StepCacheEntry) -> None:
        """Record that the build step with cache key ``key`` made ``entry.layer``."""
        os.makedirs(self.path("cache"), exist_ok=True)
        write_record(self.path("cache", f"{key}.json"), entry)


def own_layers(image: Image) -> list[str]:
    """The layers an image records itself: all of them, or those above ``host``'s two."""
    return list(image.layers[2:] if image.from_host_os else image.layers)


def base_history(image: Image) -> list[dict[str, Any]]:
    """The history of ``image`` to start a new one from (one entry per layer it records)."""
    if image.config is not None:
        return [dict(h) for h in image.history]
    if image.from_host_os:
        return []
    return [{"created": EPOCH, "created_by": f"nsbox built-in {image.ref}"}
            for _ in image.layers]


def _listdir(path: str) -> list[str]:
    """The names in folder ``path``, sorted; none when it does not exist (yet)."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
