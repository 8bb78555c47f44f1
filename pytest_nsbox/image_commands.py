"""What ``python -m pytest_nsbox images list|build|push|rm|prune`` does, as plain functions."""
from __future__ import annotations

import os
import time
from typing import Any

from .errors import ImageError
from .kernel import mountinfo
from .kernel.fs import remove_tree
from .images import builtin
from .model.image import Image
from .images.content import read_record
from .images import push as pushing
from .images.push import Pushed
from .images.store import ImageStore
from .model.image_records import BlobLink, StepCacheEntry

TMP_MAX_AGE = 3600.0


def list_images(store: ImageStore) -> list[dict[str, Any]]:
    """Every image in the store: id, tags, base, layer count, size in bytes, created."""
    tags: dict[str, list[str]] = {}
    for ref, image_id in sorted(store.tags().items()):
        tags.setdefault(image_id, []).append(ref)
    out = []
    for rec in store.records():
        infos = [store.layer_info(lid) for lid in rec.layers]
        size = sum(info.size for info in infos if info is not None)
        out.append({"id": rec.id, "tags": tags.get(rec.id, []), "base": rec.base or "",
                    "layers": len(rec.layers), "size": size, "created": rec.created})
    out.sort(key=lambda r: (r["created"], r["id"]), reverse=True)
    return out


def remove(store: ImageStore, ref: str) -> list[str]:
    """Remove a tag, or an image by id (with its tags); the image record goes with its last
    tag. Layers stay until ``prune``. Returns what was removed."""
    removed: list[str] = []
    tags = store.tags()
    if ref in tags or f"{ref}:latest" in tags:
        name = ref if ref in tags else f"{ref}:latest"
        image_id = tags[name]
        store.untag(name)
        removed.append(name)
        if image_id not in store.tags().values():
            store.remove_record(image_id)
            removed.append(image_id)
        return removed
    found = store.find(ref)
    if found is None:
        raise ImageError(f"image {ref!r}: no such tag or image id in {store.dirs.store}")
    for name, image_id in tags.items():
        if image_id == found.id:
            store.untag(name)
            removed.append(name)
    store.remove_record(found.id)
    removed.append(found.id)
    return removed


def mounted_layers() -> set[str]:
    """Layer directories (real paths) stacked by an overlay mounted in any mount namespace."""
    seen: set[int] = set()
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            mounts = mountinfo.of_pid(int(pid))
        except OSError:
            continue
        for m in mounts:
            lower = m.option("lowerdir") if m.fstype == "overlay" else None
            for path in (lower or "").split(":"):
                if path:
                    found.add(os.path.realpath(path))
    return found


def prune(store: ImageStore) -> list[str]:
    """Delete layers no image uses (nor a running or kept box, nor a built-in); returns
    their ids.

    Build cache entries, blob records and blobs that pointed at them go too, and what
    the store remembered of those blobs and steps in registries.
    """
    removed: list[str] = []
    with store.using(exclusive=True):
        records = store.records()
        keep: set[str] = {"scratch-v1"}
        for rec in records:
            keep.update(rec.layers)
        try:
            keep.add(builtin.busybox_key(builtin.find_busybox()))
        except ImageError:
            pass
        keep.add(builtin.host_mask_key("/")[0])
        # Kept boxes' layers stay, as `docker image prune` spares stopped containers' images.
        from . import kept

        keep.update(kept.layers_in_use(store.dirs))
        mounted = mounted_layers()
        for base in (store.dirs.store, store.dirs.run):
            layers_dir = os.path.join(base, "layers")
            try:
                names = sorted(os.listdir(layers_dir))
            except FileNotFoundError:
                continue
            for name in names:
                path = os.path.join(layers_dir, name)
                if name in keep or os.path.realpath(path) in mounted:
                    continue
                remove_tree(path)
                if base == store.dirs.store:
                    removed.append(name)
        _sweep_links(store)
        kept_layers = set(_listdir(store.path("layers")))
        for name in _listdir(store.path("layerinfo")):
            if name.endswith(".json") and name[:-5] not in kept_layers:
                os.unlink(store.path("layerinfo", name))
        for folder, kind in (("cache", StepCacheEntry), ("blobmap", BlobLink)):
            for name in _listdir(store.path(folder)):
                link = _layer_of(kind, store.path(folder, name))
                if link is None or link not in kept_layers:
                    os.unlink(store.path(folder, name))
        wanted = {(rec.config_digest or "").split(":")[-1] for rec in records}
        for lid in kept_layers:
            info = store.layer_info(lid)
            if info is not None and info.blob is not None:
                wanted.add(info.blob.digest.split(":", 1)[1])
        for name in _listdir(store.path("blobs", "sha256")):
            if name not in wanted:
                os.unlink(store.path("blobs", "sha256", name))
        # Where deleted blobs were seen in registries, and which deleted steps are known
        # to be in the shared build cache (build/cache.py: <scope>-<key>).
        for name in _listdir(store.path("bloblocations")):
            if name[:-len(".json")] not in wanted:
                os.unlink(store.path("bloblocations", name))
        for name in _listdir(store.path("remotecache")):
            if not os.path.exists(store.path("cache", name.rpartition("-")[2] + ".json")):
                os.unlink(store.path("remotecache", name))
        stale = time.time() - TMP_MAX_AGE
        for name in _listdir(store.path("tmp")):
            # Left by a crashed build or import (built-in layers are made without holding
            # the store, so only what is old enough to be dead goes).
            path = store.path("tmp", name)
            try:
                if os.lstat(path).st_mtime < stale:
                    remove_tree(path)
            except FileNotFoundError:
                continue
    return removed


def _layer_of(kind: type[StepCacheEntry] | type[BlobLink], path: str) -> str | None:
    """The layer a step cache entry or blob link at ``path`` names; None for a file that is
    no such record (it is pruned with the rest: nothing can use it)."""
    try:
        record = read_record(kind, path)
    except ImageError:
        return None
    return record.layer if record is not None else None


def _sweep_links(store: ImageStore) -> None:
    for base in (store.dirs.store, store.dirs.run):
        links = os.path.join(base, "l")
        for name in _listdir(links):
            path = os.path.join(links, name)
            if os.path.islink(path) and not os.path.exists(path):
                os.unlink(path)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def build(store: ImageStore, name_or_path: str, build_args: list[str] | None = None,
          target: str | None = None) -> Image:
    """Build a fixtures image by name, or the Containerfile at (or in) a path;
    ``build_args`` are ``KEY=VALUE`` texts (``--build-arg``), ``target`` a stage."""
    from .images.build import CLI_BUILD_ARG, collect_build_args

    return store.build(name_or_path,
                       build_args=collect_build_args([], build_args or [], CLI_BUILD_ARG),
                       target=target)


#: The environment variable naming plain-http registries for the command line.
INSECURE_ENV = "NSBOX_INSECURE_REGISTRIES"


def insecure_registries(options: list[str] | None = None) -> list[str]:
    """Plain-http registries for the command line: ``$NSBOX_INSECURE_REGISTRIES``
    (comma-separated) and ``--insecure-registry HOST:PORT`` (repeatable), each
    ``host[:port]`` with no scheme or path. Raises ``ImageError`` naming a bad one."""
    found: list[str] = []
    sources = [(INSECURE_ENV, os.environ.get(INSECURE_ENV, "").split(","))]
    sources.append(("--insecure-registry", list(options or [])))
    for source, items in sources:
        for item in items:
            name = item.strip()
            if not name and source == INSECURE_ENV:
                continue
            if not name or "/" in name or "://" in name or " " in name:
                raise ImageError(f"{source} {item!r}: not a registry; use HOST:PORT, e.g. "
                                 f"127.0.0.1:5000")
            if name not in found:
                found.append(name)
    return found


def push(store: ImageStore, ref: str, dest: str, chunk_size: int | None = None) -> Pushed:
    """Push image ``ref`` (any reference ``get`` takes) to ``dest``
    (``registry/repository[:tag]``), over plain http where ``store.insecure_registries``
    lists its registry; blobs of at most ``chunk_size`` bytes (default
    ``push.CHUNK_SIZE``) go in one request. Raises ``ImageError``."""
    image = store.get(ref)
    return pushing.push(store, image, dest, store.insecure_registries,
                        chunk_size or pushing.CHUNK_SIZE)
