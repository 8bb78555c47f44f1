"""What ``python -m pytest_nsbox images list|build|rm|prune`` does, as plain functions."""
from __future__ import annotations

import os
import time
from typing import Any

from .errors import ImageError
from .kernel import mountinfo
from .kernel.fs import remove_tree
from .images import builtin
from .model.image import Image
from .images.store import ImageStore, read_json

TMP_MAX_AGE = 3600.0


def list_images(store: ImageStore) -> list[dict[str, Any]]:
    """Every image in the store: id, tags, base, layer count, size in bytes, created."""
    tags: dict[str, list[str]] = {}
    for ref, image_id in sorted(store.tags().items()):
        tags.setdefault(image_id, []).append(ref)
    out = []
    for rec in store.records():
        layer_ids = rec.get("layers") or []
        size = sum(int(store.layer_info(lid).get("size") or 0) for lid in layer_ids)
        out.append({"id": rec["id"], "tags": tags.get(rec["id"], []),
                    "base": rec.get("base") or "", "layers": len(layer_ids), "size": size,
                    "created": (rec.get("config") or {}).get("created", "")})
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
            _drop_record(store, image_id)
            removed.append(image_id)
        return removed
    found = store.find(ref)
    if found is None:
        raise ImageError(f"image {ref!r}: no such tag or image id in {store.dirs.store}")
    for name, image_id in tags.items():
        if image_id == found.id:
            store.untag(name)
            removed.append(name)
    _drop_record(store, found.id)
    removed.append(found.id)
    return removed


def _drop_record(store: ImageStore, image_id: str) -> None:
    try:
        os.unlink(store.path("images", image_id.split(":", 1)[1] + ".json"))
    except FileNotFoundError:
        pass
    store._cache = {k: v for k, v in store._cache.items() if v.id != image_id}


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

    Build cache entries, blob records and blobs that pointed at them go too.
    """
    removed: list[str] = []
    with store.using(exclusive=True):
        records = store.records()
        keep: set[str] = {"scratch-v1"}
        for rec in records:
            keep.update(rec.get("layers") or [])
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
        for name in _listdir(store.path("cache")):
            data = read_json(store.path("cache", name))
            if not data or data.get("layer") not in kept_layers:
                os.unlink(store.path("cache", name))
        for name in _listdir(store.path("blobmap")):
            data = read_json(store.path("blobmap", name))
            if not data or data.get("layer") not in kept_layers:
                os.unlink(store.path("blobmap", name))
        wanted = {str(rec.get("config_digest") or "").split(":")[-1] for rec in records}
        for lid in kept_layers:
            blob = store.layer_info(lid).get("blob") or {}
            if blob.get("digest"):
                wanted.add(blob["digest"].split(":", 1)[1])
        for name in _listdir(store.path("blobs", "sha256")):
            if name not in wanted:
                os.unlink(store.path("blobs", "sha256", name))
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
