"""The shared build cache: Containerfile steps kept in a registry repository, so machines
(CI jobs, xdist workers with stores of their own) share built layers by digest.

Ini ``nsbox_image_cache = REGISTRY/REPO`` (``--nsbox-image-cache``, ``images build
--image-cache``) names the repository. A step whose cache key (``builder``: parent layers,
instruction, what it reads) is not in the local store is looked up there as tag
``nsbox-step-<key>`` (``step_tag``) before it is built; if it is there its layer is pulled
and the step is not run. A step built here, or found in the local store but not yet in the
repository, is pushed there after. BuildKit's registry cache (``--cache-to
type=registry``) shares steps the same way, one manifest for a whole build; here each step
is its own small image, so a build pulls only the layers it lacks.

The image under a step's tag is an ordinary OCI image of one layer, which ``skopeo`` and
registries' garbage collection understand: its manifest's ``layers`` hold the step's
gzip'd layer, its config the layer's ``diff_id`` and a history entry with the instruction
and when the layer was made (kept on the machine that pulls it, so both build the same
image id), and the manifest's annotations the cache key (``STEP_KEY``), checked on lookup.

A cache that cannot be reached, refuses credentials (a read-only account cannot push) or
holds something else under a step's tag does not fail the build: one warning line says so,
and that build looks up (or pushes) nothing more there; the steps are built here. This is
BuildKit's ``ignore-error=true``; its default fails a build whose cache export fails, but
BuildKit has separate import and export settings, while one ini option serves both here.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

from ..errors import ImageError
from ..images import layers as layerfs
from ..images import push, registry
from ..images.content import canonical_json
from ..images.oci import (OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, import_layer,
                          parse_json, verified)
from ..images.refs import Reference, check_digest, looks_like_registry_ref
from ..images.store import ImageStore
from ..kernel.arch import oci_platform

TAG_PREFIX = "nsbox-step-"
#: The manifest annotation holding the step's cache key.
STEP_KEY = "pytest-nsbox.step.key"
#: The ini option, as errors name it.
INI = "ini nsbox_image_cache"


def step_tag(key: str) -> str:
    """The tag a step with cache key ``key`` (64 hex) is kept under: ``nsbox-step-<key>``,
    75 characters, inside the distribution spec's tag grammar
    (``[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}``)."""
    return TAG_PREFIX + key


def repository(text: str, source: str = INI) -> Reference:
    """The cache repository ``text`` (``REGISTRY/REPO``) parsed; ``ImageError`` naming
    ``source`` when it names no registry, or has a tag or digest (steps get their own
    tags)."""
    value = text.strip()
    given = f"{source}{'=' if source.startswith('-') else ' = '}{text!r}"
    if not value or not looks_like_registry_ref(value) or value.startswith("docker://"):
        raise ImageError(f"{given}: not REGISTRY/REPO (a registry host and a repository); "
                         f"use e.g. 127.0.0.1:5000/nsbox-cache")
    try:
        parsed = Reference.parse(value)
    except ImageError as exc:
        raise ImageError(f"{given}: {str(exc).partition(': ')[2]}") from None
    name = value.rpartition("/")[2]
    if parsed.digest or ":" in name:
        raise ImageError(f"{given}: a repository without tag or digest (each step gets its "
                         f"own tag there); use e.g. {parsed.registry}/{parsed.repository}")
    return Reference(parsed.registry, parsed.repository, None, None)


class RegistryCache:
    """The steps of one build in the cache repository ``text`` of ``store``'s
    ``image_cache``, over plain http where ``store.insecure_registries`` lists it."""

    def __init__(self, store: ImageStore, text: str) -> None:
        self.store = store
        self.repo = repository(text)
        self.name = f"{self.repo.registry}/{self.repo.repository}"
        self.failed: dict[str, str] = {}  # "lookup"/"export" -> why it stopped
        self._pusher: push.Pusher | None = None
        self._reader: registry.Client | None = None

    def _ref(self, key: str) -> Reference:
        return Reference(self.repo.registry, self.repo.repository, step_tag(key), None)

    def _marker(self, key: str) -> str:
        """The file that says this store knows the step is in the cache (so a step found
        locally is checked there once, not at every build)."""
        scope = hashlib.sha256(self.name.encode()).hexdigest()[:16]
        return self.store.path("remotecache", f"{scope}-{key}")

    def _mark(self, key: str) -> None:
        path = self._marker(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{self.name}:{step_tag(key)}\n")

    def _warn(self, what: str, exc: ImageError) -> None:
        self.failed[what] = str(exc)
        self.store.say(f"nsbox: image cache {self.name}: {what} failed, building without "
                       f"it: {exc}")

    # -- lookup --------------------------------------------------------------------------
    def lookup(self, key: str) -> str | None:
        """The layer of the step with cache key ``key``, pulled from the cache into the
        store (its blob only when the store lacks it); None when the cache does not have
        it, or lookups failed."""
        if "lookup" in self.failed:
            return None
        try:
            found = self._lookup(key)
        except ImageError as exc:
            self._warn("lookup", exc)
            return None
        if found is not None:
            self._mark(key)
        return found

    def _lookup(self, key: str) -> str | None:
        ref = self._ref(key)
        if self._reader is None:
            self._reader = registry.Client(self.store, ref, self.store.insecure_registries)
        client = self._reader
        got = client.find_manifest(step_tag(key))
        if got is None:
            return None
        data, ctype = got
        where = f"image cache {ref}"
        doc = parse_json(data, f"{where}: manifest")
        layers = doc.get("layers") or []
        kind = doc.get("mediaType") or ctype
        if kind != OCI_MANIFEST or len(layers) != 1 or \
                (doc.get("annotations") or {}).get(STEP_KEY) != key:
            raise ImageError(f"{where}: not a pytest-nsbox build step (an OCI manifest of "
                             f"one layer annotated {STEP_KEY}={key[:12]}...)")
        config_digest = check_digest((doc.get("config") or {}).get("digest"), where)
        config = parse_json(verified(client.read_blob(config_digest), config_digest,
                                     f"{where}: config"), f"{where}: config")
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        history = config.get("history") or [{}]
        if len(diff_ids) != 1:
            raise ImageError(f"{where}: its config lists {len(diff_ids)} diff_ids for 1 layer")
        layer = layers[0]
        digest = check_digest(layer.get("digest"), f"{where}: layer")
        diff_id = check_digest(diff_ids[0], f"{where}: diff_id")
        created = str(history[-1].get("created") or "") or None
        with self.store.using():
            lid = (self.store.blob_layer(digest) or import_layer(
                self.store, lambda: client.blob(digest), digest,  # type: ignore[arg-type,return-value]
                str(layer.get("mediaType") or OCI_LAYER_GZIP), diff_id, where,
                size=layer.get("size"), created=created,
                created_by=str(history[-1].get("created_by") or "") or None))
        registry.record_location(self.store, digest, self.name)
        return lid

    # -- export --------------------------------------------------------------------------
    def export(self, key: str, lid: str, created_by: str) -> None:
        """Make sure the cache holds the step with cache key ``key``, which made layer
        ``lid`` with instruction ``created_by``: pushed when this store does not know it
        is there (``HEAD`` of its tag, then a push of its layer, config and manifest)."""
        if "export" in self.failed or os.path.exists(self._marker(key)):
            return
        try:
            self._export(key, lid, created_by)
        except ImageError as exc:
            self._warn("export", exc)
            return
        self._mark(key)

    def _export(self, key: str, lid: str, created_by: str) -> None:
        ref = self._ref(key)
        if self._pusher is None:
            self._pusher = push.Pusher(self.store, ref, self.store.insecure_registries)
        pusher = self._pusher
        pusher.dest = ref
        tag = step_tag(key)
        head = pusher.client.request("HEAD", f"/v2/{ref.repository}/manifests/{tag}",
                                     accept=OCI_MANIFEST)
        head.read()
        if head.status == 200:
            return
        with self.store.using():
            blob = push.layer_blob(self.store, lid)
            info = self.store.layer_info(lid)
        assert info is not None
        config = canonical_json(step_config(info.diff_id, created_by,
                                            self.store.layer_created(lid)))
        manifest = step_manifest(key, blob.digest, blob.size, config)
        push.send(pusher, [push.Blob(digest=blob.digest, size=blob.size,
                                     path=self.store.blob_path(blob.digest))],
                  config, manifest, f"cache {ref.repository}:{tag[:24]}...")


def step_config(diff_id: str, created_by: str, created: str) -> dict[str, Any]:
    """The OCI image config of a cached step (config.md): its one layer's ``diff_id`` and
    a history entry with the instruction and the layer's creation time."""
    arch, variant = oci_platform()
    config: dict[str, Any] = {
        "created": created, "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": created_by}],
    }
    if variant and arch != "arm64":
        config["variant"] = variant
    return config


def step_manifest(key: str, digest: str, size: int, config: bytes) -> bytes:
    """The OCI image manifest (manifest.md) of a cached step: its config, its one gzip'd
    layer, and its cache key as annotation ``STEP_KEY``."""
    return canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + layerfs.sha256_hex(config),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": size}],
        "annotations": {STEP_KEY: key},
    })


def for_store(store: ImageStore) -> RegistryCache | None:
    """The cache of ``store.image_cache``, None when it names none. Raises ``ImageError``
    for a value that is not ``REGISTRY/REPO``."""
    text = store.image_cache
    return RegistryCache(store, text) if text else None

